"""An optional remote op cache (`cache.remote=URL`, any fsspec URL): hits pulled, new entries pushed.

Layout under the URL, as in the local cache: `entries/ab/<fingerprint>.json` (the local entry file,
byte for byte), `objects/ab/<sha256>` for a file and `objects/ab/<sha256>.tar` for a folder (a tar of
its files, names sorted, no owners or times). A pull reads the entry, then each object it names into
the local cache's tmp/, and hashes it before it goes into objects/: bytes that do not hash to the
name their entry gives are refused (the op runs, and its push replaces them). An entry is pushed
after its objects, so a reader that finds one finds them too.

The remote never breaks a build: the first failure to reach it (no network, no bucket, no
permission) is one warning line and an entry in `manifest.cache_events`, and the rest of the build
is local. Credentials come from the environment or fsspec's own configuration; option values that
look like credentials (`cache.remote_options.secret=...`) are hidden from every file yolobuild writes.
"""
from __future__ import annotations

import json
import shutil
import tarfile
import threading
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

from .cache import Cache, Entry, sha256_file, sha256_tree


def shown(url: str) -> str:
    """The URL without any user:password in it (for messages and manifests)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))
    return url


def _tar_folder(folder: Path, dest: Path) -> None:
    with tarfile.open(dest, "w") as tar:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                info = tarfile.TarInfo(p.relative_to(folder).as_posix())
                info.size, info.mode = p.stat().st_size, 0o644
                with open(p, "rb") as f:
                    tar.addfile(info, f)


def _untar_folder(archive: Path, dest: Path) -> None:
    """Regular files only, each under dest (no links, no absolute names, no `..`)."""
    dest.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            target = (dest / member.name).resolve()
            if not member.isfile() or not target.is_relative_to(dest.resolve()):
                raise ValueError(f"unexpected member {member.name!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)


def _plain(tree: Any) -> Any:
    """Options as plain dicts and lists (the validated config is read-only; fsspec's backends edit theirs)."""
    if isinstance(tree, Mapping):
        return {str(k): _plain(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_plain(v) for v in tree]
    return tree


class RemoteCache:
    """One build's view of the remote: off for the rest of the build after the first failure to reach it."""

    def __init__(self, url: str, options: Mapping[str, Any] | None = None,
                 note: Callable[[dict[str, Any]], None] = lambda e: None, warn: Callable[[str], None] = print):
        self.url, self.options = url.rstrip("/"), _plain(options or {})
        self.note, self.warn = note, warn
        self.off = False
        self.bad: set[str] = set()      # objects found corrupt there: a push replaces them
        self._fs = None
        self._root = ""
        self._lock = threading.Lock()   # one transfer at a time: ops run in threads

    # -- reaching it ---------------------------------------------------------------------------
    def _connect(self):
        if self._fs is None:
            from fsspec.core import url_to_fs

            self._fs, self._root = url_to_fs(self.url, **self.options)
        return self._fs

    def _path(self, *parts: str) -> str:
        return "/".join([self._root.rstrip("/"), *parts])

    def _unreachable(self, doing: str, exc: BaseException) -> None:
        if self.off:
            return
        self.off = True
        why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}".strip(": ")
        self.warn(f"warning: cache.remote {shown(self.url)}: unreachable while {doing} ({why[:200]}); "
                  "this build uses the local cache only")
        self.note({"remote": shown(self.url), "action": "unreachable: built with the local cache only",
                   "while": doing, "error": why[:300]})

    # -- pulling -------------------------------------------------------------------------------
    def pull(self, cache: Cache, fp: str) -> Entry | None:
        """The remote's entry for `fp`, its objects verified and stored in the local cache; None on a miss."""
        if self.off:
            return None
        with self._lock:
            if self.off:   # another op's transfer found it unreachable while this one waited
                return None
            try:
                fs = self._connect()
                try:
                    raw = fs.cat_file(self._path("entries", fp[:2], f"{fp}.json"))
                except FileNotFoundError:
                    return None
                record = json.loads(raw)
                if record.get("fingerprint") != fp or not isinstance(record.get("outputs"), dict):
                    return None   # not an entry for this op (a hand-made or damaged file): a miss
                work = cache.new_tmp(fp)
                try:
                    for name, out in record["outputs"].items():
                        if not self._pull_object(cache, fs, fp, name, out, work):
                            return None
                finally:
                    shutil.rmtree(work, ignore_errors=True)
            except (ValueError, KeyError, TypeError):
                return None       # an entry that does not parse: a miss, the op runs and pushes a good one
            except Exception as exc:   # the network or the store: never the build's failure
                self._unreachable(f"pulling {fp[:16]}", exc)
                return None
        return cache.adopt(fp, raw)

    def _pull_object(self, cache: Cache, fs, fp: str, name: str, out: dict, work: Path) -> bool:
        sha, kind = out["sha256"], out.get("kind", "file")
        if cache.object_path(sha).exists() and cache.object_intact(sha):
            return True
        remote = self._path("objects", sha[:2], sha + (".tar" if kind == "dir" else ""))
        local = work / sha
        try:
            fs.get_file(remote, str(local) + ".part")
        except FileNotFoundError:
            return False   # the entry names an object the remote lost: a miss
        if kind == "dir":
            try:
                _untar_folder(Path(str(local) + ".part"), local)
                got = sha256_tree(local)
            except (ValueError, tarfile.TarError, OSError):
                got = "unreadable"
        else:
            Path(str(local) + ".part").rename(local)
            got = sha256_file(local)
        if got != sha:
            self.bad.add(sha)
            self.warn(f"warning: cache.remote {shown(self.url)}: object {sha[:16]} ({name} of entry {fp[:16]}) "
                      "failed its sha256 check: refused, the op runs here")
            self.note({"remote": shown(self.url), "entry": fp, "output": name, "object": sha,
                       "action": "remote object failed its sha256 check: refused; the op ran"})
            return False
        cache.put_verified(local, sha, kind)
        return True

    # -- pushing -------------------------------------------------------------------------------
    def push(self, cache: Cache, entry: Entry) -> None:
        """Objects first, then the entry (the local entry file, byte for byte)."""
        if self.off:
            return
        with self._lock:
            if self.off:
                return
            try:
                fs = self._connect()
                for out in entry.outputs.values():
                    sha, kind = out["sha256"], out.get("kind", "file")
                    remote = self._path("objects", sha[:2], sha + (".tar" if kind == "dir" else ""))
                    if sha not in self.bad and fs.exists(remote):
                        continue
                    src = cache.object_path(sha)
                    fs.makedirs(self._path("objects", sha[:2]), exist_ok=True)
                    if kind == "dir":
                        tmp = cache.new_tmp(sha)
                        try:
                            _tar_folder(src, tmp / "object.tar")
                            fs.put_file(str(tmp / "object.tar"), remote)
                        finally:
                            shutil.rmtree(tmp, ignore_errors=True)
                    else:
                        fs.put_file(str(src), remote)
                    self.bad.discard(sha)
                fs.makedirs(self._path("entries", entry.fingerprint[:2]), exist_ok=True)
                fs.pipe_file(self._path("entries", entry.fingerprint[:2], f"{entry.fingerprint}.json"),
                             cache.entry_path(entry.fingerprint).read_bytes())
            except Exception as exc:
                self._unreachable(f"pushing {entry.fingerprint[:16]}", exc)


def remote_for(settings: Mapping[str, Any], note, warn=print) -> RemoteCache | None:
    """The remote a config's `cache:` section names, or None (credentials hidden from files first)."""
    url = settings.get("remote")
    if not url:
        return None
    from ..redaction import hide_credentials

    hide_credentials(dict(settings))
    options = settings.get("remote_options") or {}
    return RemoteCache(str(url), options, note, warn)

