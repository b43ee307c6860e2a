"""The image cache: one directory per built artefact set, named by a key over its inputs.

An entry is built in a private temporary directory and renamed into place only once its
manifest is written, so an interrupted or failed build leaves no entry behind (and its
temporary directory is removed then, or by the next build). A lock per key makes a
second build of the same thing wait for the first and then find it cached.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from lab.core.errors import ImageError
from lab.core.paths import cache_dir
from lab.shared.files import write_atomic

#: Bump when the cache layout changes (the building code is keyed by its own digest).
FORMAT = 2
MANIFEST = "manifest.json"


def content_key(inputs: dict[str, Any]) -> str:
    blob = json.dumps({"format": FORMAT, **inputs}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def hash_files(root: Path) -> dict[str, str]:
    """sha256 of every file below `root` (a recipe folder), by relative path."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            rel = str(path.relative_to(root))
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() + ("+x" if os.access(path, os.X_OK) else "")
    return out


@dataclass
class Entry:
    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name


class Store:
    def __init__(self, root: Path | None = None):
        self.root = root or cache_dir()
        self.images = self.root / "images"
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"

    def entry_path(self, kind: str, label: str, key: str) -> Path:
        return self.images / f"{kind}-{label}-{key[:16]}"

    def get(self, kind: str, label: str, key: str) -> Entry | None:
        return self.get_path(self.entry_path(kind, label, key))

    def entries(self) -> list[Entry]:
        paths = sorted(self.images.iterdir()) if self.images.is_dir() else []
        return [entry for entry in map(self.get_path, paths) if entry is not None]

    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        self.locks.mkdir(parents=True, exist_ok=True)
        with open(self.locks / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _remove_stale_tmp(self) -> None:
        """Temporary build directories of builds whose process is gone."""
        if not self.tmp.is_dir():
            return
        for path in self.tmp.iterdir():
            try:
                pid = int(path.name.split(".")[1])
            except (IndexError, ValueError):
                continue
            if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(path, ignore_errors=True)

    def build(self, kind: str, label: str, key: str, inputs: dict[str, Any],
              builder: Callable[[Path], dict[str, Any]]) -> tuple[Entry, bool]:
        """The entry for `key`, built by `builder(tmpdir) -> manifest fields` if missing.

        Returns (entry, built_now).
        """
        entry = self.get(kind, label, key)
        if entry is not None:
            return entry, False
        what = f"{kind} {label}"
        # Made by this call: removed again if the build fails (a first build that fails
        # leaves the cache as it found it).
        fresh = [d for d in (self.root, self.images, self.tmp, self.locks) if not d.exists()]
        try:
            return self._build(kind, label, key, inputs, builder, what)
        except BaseException:
            self._undo(fresh, self.locks / f"{kind}-{label}-{key[:16]}.lock")
            raise

    def _undo(self, fresh: list[Path], lock: Path) -> None:
        if self.locks in fresh:
            lock.unlink(missing_ok=True)
        for directory in reversed(fresh):
            try:
                directory.rmdir()
            except OSError:
                pass

    def _build(self, kind: str, label: str, key: str, inputs: dict[str, Any],
               builder: Callable[[Path], dict[str, Any]], what: str) -> tuple[Entry, bool]:
        with ExitStack() as held:
            try:
                self.images.mkdir(parents=True, exist_ok=True)
                self.tmp.mkdir(parents=True, exist_ok=True)
                held.enter_context(self._lock(f"{kind}-{label}-{key[:16]}"))
                entry = self.get(kind, label, key)
                if entry is not None:
                    return entry, False
                self._remove_stale_tmp()
                work = Path(tempfile.mkdtemp(prefix=f"{kind}.{os.getpid()}.", dir=self.tmp))
            except OSError as exc:
                raise self._cache_error(exc, what) from None
            try:
                fields = builder(work)
                manifest = {"kind": kind, "label": label, "key": key, "inputs": inputs,
                            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}
                _write_json(work / MANIFEST, manifest)
                os.chmod(work, 0o755)
                os.rename(work, self.entry_path(kind, label, key))
            except OSError as exc:
                raise self._cache_error(exc, what) from None
            finally:
                shutil.rmtree(work, ignore_errors=True)
            return Entry(self.entry_path(kind, label, key), manifest), True

    def _cache_error(self, exc: OSError, what: str) -> ImageError:
        """One line for a cache that cannot take the entry: full, read-only, or another error."""
        where = getattr(exc, "filename", "") or self.root
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            why = f"the image cache {self.root} is full ({exc.strerror})"
            todo = "free space there (`kvmlab images clean --stale`) or set KVMLAB_CACHE_DIR to a larger directory"
        elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            why = f"the image cache {self.root} is not writable ({exc.strerror}: {where})"
            todo = "set KVMLAB_CACHE_DIR to a writable directory"
        else:
            why = f"{exc.strerror or exc} ({where})"
            todo = "free space or set KVMLAB_CACHE_DIR"
        return ImageError(f"building {what} failed: {why}; the cache holds no partial entry; {todo}")

    def clean(self, keep: set[str] | None = None) -> int:
        """Removes every entry whose key is not in `keep` (all if None), and leftovers of
        interrupted builds; returns the bytes freed."""
        freed = 0
        doomed = []
        if self.images.is_dir():
            for path in self.images.iterdir():
                entry = self.get_path(path)
                if keep is None or entry is None or entry.manifest.get("key") not in keep:
                    doomed.append(path)
        if self.tmp.is_dir() and keep is None:
            doomed += list(self.tmp.iterdir())
        for path in doomed:
            freed += tree_size(path)
            shutil.rmtree(path, ignore_errors=True)
        return freed

    def get_path(self, path: Path) -> Entry | None:
        try:
            return Entry(path, json.loads((path / MANIFEST).read_text()))
        except (OSError, ValueError):
            return None


def tree_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")  # sorted: manifests diff cleanly
