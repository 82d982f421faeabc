"""Keeping a cache sound and small: `yolobuild cache verify` and `yolobuild cache gc`.

verify reads every object an entry names and checks it against its sha256 (with --repair, a bad
or missing one is quarantined and its entries dropped, so the ops that made them run again).
gc removes what no build will read again: op folders of killed builds, objects no entry names,
quarantined objects, and, over the size budget (`cache.max_size`), the least recently used
entries. Both work on a cache shared by several builds: they take each entry's lock before
dropping it, and leave alone what a running build may still be writing.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .cache import Cache, pid_alive

# an object is moved into objects/ just before its entry is written: younger unnamed objects may
# belong to an op finishing right now
GRACE_SECONDS = 600
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "G": 1 << 30, "GB": 1 << 30,
          "T": 1 << 40, "TB": 1 << 40, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}


def parse_size(text: str | int | None, key: str = "cache.max_size") -> int | None:
    """'20GB', '512M', 1000000 -> bytes; None -> no budget."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise UserError(f"{key}: {text!r} is not a size; allowed: a number of bytes or e.g. 500MB, 20GB")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


@dataclass
class VerifyReport:
    entries: int = 0
    objects: int = 0
    bad: list[str] = field(default_factory=list)        # objects whose bytes no longer hash to their name
    missing: list[str] = field(default_factory=list)    # objects an entry names that are gone
    unreadable: list[str] = field(default_factory=list)  # entry files that do not parse
    dropped: list[str] = field(default_factory=list)    # entries removed by --repair

    @property
    def clean(self) -> bool:
        return not (self.bad or self.missing or self.unreadable)


def _named_objects(cache: Cache) -> dict[str, list[str]]:
    """object sha -> fingerprints of the entries naming it."""
    named: dict[str, list[str]] = {}
    for fp in cache.entry_fingerprints():
        record = cache.entry_record(fp) or {}
        for out in (record.get("outputs") or {}).values():
            named.setdefault(out.get("sha256", ""), []).append(fp)
    return named


def verify(cache: Cache, repair: bool = False) -> VerifyReport:
    report = VerifyReport()
    named: dict[str, list[str]] = {}
    for fp in cache.entry_fingerprints():
        report.entries += 1
        record = cache.entry_record(fp)
        if record is None or not isinstance(record.get("outputs"), dict):
            report.unreadable.append(fp)
            continue
        for out in record["outputs"].values():
            named.setdefault(out["sha256"], []).append(fp)
    for sha, fps in sorted(named.items()):
        report.objects += 1
        if not cache.object_path(sha).exists():
            report.missing.append(sha)
        elif not cache.object_intact(sha):
            report.bad.append(sha)
    if repair:
        for sha in report.bad:
            cache.quarantine(sha, "cache verify: failed its sha256 check")
        for sha in report.bad + report.missing:
            for fp in named[sha]:
                with cache.lock(fp):
                    cache.drop_entry(fp)
                report.dropped.append(fp)
        for fp in report.unreadable:
            with cache.lock(fp):
                cache.drop_entry(fp)
            report.dropped.append(fp)
    return report


@dataclass
class GcReport:
    tmp_removed: int = 0
    objects_removed: int = 0
    entries_evicted: int = 0
    quarantine_removed: int = 0
    bytes_freed: int = 0
    size_after: int = 0


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _remove(path: Path) -> int:
    size = _size(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return size


def _abandoned_tmp(cache: Cache, now: float) -> list[Path]:
    """Op folders whose build is gone: a dead pid on this host, or untouched for a day (another host)."""
    from .cache import _HOST

    found = []
    for path in (cache.root / "tmp").glob("*"):
        parts = path.name.split(".")
        if len(parts) >= 4 and parts[-3] == _HOST and parts[-2].isdigit():
            if not pid_alive(int(parts[-2])):
                found.append(path)
        elif now - path.stat().st_mtime > 86400:
            found.append(path)
    return found


def gc(cache: Cache, max_size: int | None = None, now: float | None = None) -> GcReport:
    now = time.time() if now is None else now
    report = GcReport()
    if not cache.root.is_dir():
        return report
    for path in _abandoned_tmp(cache, now):
        report.bytes_freed += _remove(path)
        report.tmp_removed += 1
    for path in (cache.root / "quarantine").glob("*"):
        if path.name != "events.jsonl":
            report.bytes_freed += _remove(path)
            report.quarantine_removed += 1
    if max_size is not None:
        _evict(cache, max_size, report)
    named = set(_named_objects(cache))
    for path in (cache.root / "objects").glob("*/*"):
        if path.name not in named and now - path.stat().st_mtime > GRACE_SECONDS:
            report.bytes_freed += _remove(path)
            report.objects_removed += 1
    report.size_after = sum(_size(p) for p in (cache.root / "objects").glob("*/*"))
    return report


def _evict(cache: Cache, max_size: int, report: GcReport) -> None:
    """Drop least recently used entries (entry file mtime: touched on every cache hit) until the objects the
    remaining entries name fit the budget; the objects themselves go in gc's unnamed-object sweep."""
    entries = []
    for fp in cache.entry_fingerprints():
        record = cache.entry_record(fp) or {}
        try:
            used = cache.entry_path(fp).stat().st_mtime
        except OSError:
            continue
        entries.append((used, fp, {o["sha256"]: o.get("size", 0) for o in (record.get("outputs") or {}).values()}))
    entries.sort()
    owners: dict[str, int] = {}
    for _, _, objs in entries:
        for sha in objs:
            owners[sha] = owners.get(sha, 0) + 1
    total = sum(_size(cache.object_path(sha)) for sha in owners)
    for _, fp, objs in entries:
        if total <= max_size:
            break
        with cache.lock(fp):
            cache.drop_entry(fp)
        report.entries_evicted += 1
        for sha, size in objs.items():
            owners[sha] -= 1
            if owners[sha] == 0 and cache.object_path(sha).exists():
                total -= _size(cache.object_path(sha))
                os.utime(cache.object_path(sha), (0, 0))   # past the grace period: the sweep removes it
