"""Writing a file so that a reader sees the old content or the new, never half of it:
into a temporary file beside it, flushed, then renamed over it."""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from pathlib import Path


def write_atomic(path: str | os.PathLike[str], data: bytes | str, mode: int | None = None) -> None:
    """`data` into `path` by way of a temporary sibling (same directory, so the rename is
    atomic); on any error the temporary file is removed and `path` is untouched."""
    # os.path, not pathlib: L1 imports this for every scenario, and pathlib costs there
    head, name = os.path.split(os.fspath(path))
    tmp = os.path.join(head, f".{name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """For a writer that writes a file itself (matplotlib, ElementTree): a temporary sibling
    to write, renamed over `path` when the block ends without error, removed otherwise.
    `suffix` keeps an extension a writer goes by (".png")."""
    from pathlib import Path

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def write_json(path: str | os.PathLike[str], data: Any, indent: int = 2, atomic: bool = True) -> None:
    """`data` as JSON (anything else as its str()), atomically; or, with atomic=False,
    written in place: for L1's reports in the share, which the host reads only once their
    writer has ended (and checks as untrusted: one cut short is an error), where the
    rename cost 7-9 ms more under TCG."""
    text = json.dumps(data, indent=indent, default=str) + "\n"
    if atomic:
        write_atomic(path, text)
    else:
        with open(path, "w") as f:
            f.write(text)
