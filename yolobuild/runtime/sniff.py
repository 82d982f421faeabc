"""What a file plainly is, from its first bytes: cheap enough for `validate`, which imports no torch."""
from __future__ import annotations

from pathlib import Path

_MAGIC = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
          (b"BM", "a BMP image"), (b"\x1f\x8b", "a gzip archive"), (b"%PDF", "a PDF document"))


def not_a_checkpoint(path: Path) -> str | None:
    """What the file is when it plainly is not a checkpoint (torch zip, pickle, Darknet weights); None otherwise."""
    with open(path, "rb") as f:
        head = f.read(256)
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"a text file (starts with {first!r})"
    return None
