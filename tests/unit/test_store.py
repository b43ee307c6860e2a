"""The image cache: content keys, no-op rebuilds, no partial entries."""

import json
import os
import threading
import time

import pytest

from lab.builder.store import Store, content_key
from lab.core.errors import ImageError


def builder_writing(calls, payload=b"kernel"):
    def build(work):
        calls.append(work)
        (work / "Image").write_bytes(payload)
        return {"release": "6.12.0-test"}
    return build


def test_key_depends_on_every_input():
    base = {"suite": "trixie", "packages": ["a", "b"]}
    assert content_key(base) == content_key(dict(reversed(list(base.items()))))
    assert content_key(base) != content_key({**base, "packages": ["a"]})
    assert content_key(base) != content_key({**base, "suite": "sid"})


def test_second_build_is_a_no_op(tmp_path):
    store, calls = Store(tmp_path), []
    entry, built = store.build("kernel", "trixie", "k" * 64, {"x": 1}, builder_writing(calls))
    again, built_again = store.build("kernel", "trixie", "k" * 64, {"x": 1}, builder_writing(calls))
    assert (built, built_again) == (True, False)
    assert len(calls) == 1
    assert again.path == entry.path
    manifest = json.loads((entry.path / "manifest.json").read_text())
    assert manifest["release"] == "6.12.0-test" and manifest["inputs"] == {"x": 1}
    assert (entry.path / "Image").read_bytes() == b"kernel"


def test_failed_build_leaves_no_entry_and_no_temporary(tmp_path):
    store = Store(tmp_path)

    def broken(work):
        (work / "Image").write_bytes(b"half")
        raise ImageError("download failed")

    with pytest.raises(ImageError):
        store.build("kernel", "trixie", "k" * 64, {}, broken)
    assert store.get("kernel", "trixie", "k" * 64) is None
    # The first build made the cache's folders; failing, it leaves the cache as it found it.
    assert list(tmp_path.iterdir()) == []
    # With an entry already there: that stays, and neither a partial entry nor a temporary.
    store.build("kernel", "sid", "s" * 64, {}, builder_writing([]))
    with pytest.raises(ImageError):
        store.build("kernel", "trixie", "k" * 64, {}, broken)
    assert [e.name for e in store.entries()] == [store.entry_path("kernel", "sid", "s" * 64).name]
    assert list(store.images.iterdir()) == [store.entry_path("kernel", "sid", "s" * 64)]
    assert list(store.tmp.iterdir()) == []


def test_disk_errors_become_one_clear_error(tmp_path):
    store = Store(tmp_path)

    def full(work):
        raise OSError(28, "No space left on device", str(work / "Image"))

    with pytest.raises(ImageError, match="No space left on device.*no partial entry"):
        store.build("rootfs", "trixie", "r" * 64, {}, full)
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_a_killed_build_are_removed_by_the_next(tmp_path):
    store = Store(tmp_path)
    store.tmp.mkdir(parents=True)
    dead = store.tmp / "kernel.999999999.abc"  # a pid that cannot exist
    dead.mkdir()
    store.build("kernel", "sid", "s" * 64, {}, builder_writing([]))
    assert not dead.exists()


def test_concurrent_builds_of_one_key_build_once(tmp_path):
    calls, results = [], []

    def slow(work):
        time.sleep(0.3)
        return builder_writing(calls)(work)

    threads = [threading.Thread(target=lambda: results.append(Store(tmp_path).build("kernel", "x", "c" * 64, {}, slow)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(built for _, built in results) == [False, True]


def test_entries_lists_only_complete_ones(tmp_path):
    store = Store(tmp_path)
    store.build("kernel", "trixie", "k" * 64, {}, builder_writing([]))
    (store.images / "kernel-half-0000").mkdir()  # no manifest: not an entry
    assert [e.manifest["label"] for e in store.entries()] == ["trixie"]
    assert store.clean() > 0
    assert store.entries() == []
    assert os.listdir(store.images) == []


def test_clean_keeps_the_given_keys(tmp_path):
    store = Store(tmp_path)
    store.build("kernel", "trixie", "a" * 64, {}, builder_writing([]))
    store.build("kernel", "trixie", "b" * 64, {}, builder_writing([]))
    assert store.clean(keep={"a" * 64}) > 0
    assert [e.manifest["key"] for e in store.entries()] == ["a" * 64]


def test_an_atomic_write_leaves_the_old_file_or_the_new_never_a_part(tmp_path):
    """lab/shared/files.py, the one helper every writer uses: a failure while writing
    leaves the old content and no temporary file beside it."""
    from lab.shared.files import replacing, write_atomic

    target = tmp_path / "summary.json"
    write_atomic(target, "old\n")
    with pytest.raises(RuntimeError):
        with replacing(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("the writer failed")
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    write_atomic(target, b"new\n", mode=0o600)
    assert target.read_text() == "new\n" and (target.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
