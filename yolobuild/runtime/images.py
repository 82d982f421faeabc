"""Finding images: a folder (recursive) or a list file. No numpy, so validation stays fast."""
from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def list_images(source: str | Path) -> list[Path]:
    """Images of a folder (sorted, recursive) or of a list file (one path per line)."""
    source = Path(source)
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    lines = [line.strip() for line in source.read_text().splitlines() if line.strip()]
    return [(source.parent / line) if not Path(line).is_absolute() else Path(line) for line in lines]
