"""`kvmlab images clean --stale` keeps what is built from a current kernel's source (the
L2 Linux kernel, the KVM selftests, the source itself), found from cached manifests only."""

from __future__ import annotations

import shutil

import pytest

from lab.builder import keep, l2kernel, selftests, source
from lab.builder.build import Builder
from lab.builder.store import Store, content_key
from lab.config import load_config
from lab.kernels.spec import KernelSpec

pytestmark = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="no arm64 cross compiler")


def entry(store: Store, kind: str, label: str, inputs: dict, manifest: dict):
    made, _ = store.build(kind, label, content_key(inputs), inputs, lambda work: manifest)
    return made


def test_derived_entries_of_a_current_kernel_are_kept_and_others_are_not(tmp_path):
    store, config = Store(tmp_path), load_config()
    builder = Builder(store)
    spec = KernelSpec("suite", "trixie", suite="trixie")
    kernel = entry(store, "kernel", spec.label, builder.kernel_inputs(spec, config),
                   {"suite": "trixie", "release": "6.12.9-arm64",
                    "packages": [{"name": "linux-image-6.12.9-arm64", "version": "6.12.9-1"}]})
    src_inputs = source.inputs_for(kernel.manifest)
    src = entry(store, "source", spec.label, src_inputs,
                {"package": "linux-source-6.12", "version": "6.12.9-1", "tarball_sha256": "ab" * 32,
                 "suite": "trixie", "tree": "linux-source-6.12"})
    identity = {"package": "linux-source-6.12", "version": "6.12.9-1", "tarball_sha256": "ab" * 32}
    tests = entry(store, "selftests", spec.label, selftests.inputs_for(source.tree_of(src), identity), {})
    l2 = entry(store, "l2kernel", "trixie", l2kernel.inputs(src.manifest), {"release": "6.12.9"})
    # built from another source (say, an older trixie point release): stale
    old_l2 = entry(store, "l2kernel", "trixie", l2kernel.inputs({**src.manifest, "version": "6.12.8-1"}), {})

    kept = keep.current_keys(builder, config)
    assert {e.manifest["key"] for e in (kernel, src, tests, l2)} <= kept
    assert old_l2.manifest["key"] not in kept
    store.clean(kept)
    assert src.path.exists() and l2.path.exists() and tests.path.exists()
    assert not old_l2.path.exists()


def test_without_the_kernel_nothing_derived_is_current(tmp_path):
    store, config = Store(tmp_path), load_config()
    builder = Builder(store)
    manifest = {"suite": "trixie", "release": "6.12.9-arm64",
                "packages": [{"name": "linux-image-6.12.9-arm64", "version": "6.12.9-1"}]}
    src = entry(store, "source", "trixie", source.inputs_for(manifest), {"package": "linux-source-6.12"})
    assert src.manifest["key"] not in keep.current_keys(builder, config)
