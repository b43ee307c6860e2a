"""Which cache entries are current (`kvmlab images list`) and so kept by `kvmlab images
clean --stale`: what this code builds for a config, and what is built from those entries.

Kept out of build.py on purpose: build.py is part of every image's key (code_digest), so
bookkeeping written there would rebuild every image."""

from __future__ import annotations

from lab.builder import l2kernel, selftests, source
from lab.builder.build import Builder
from lab.builder.store import content_key
from lab.config import SUITES, LabConfig
from lab.core.errors import UserError
from lab.kernels.spec import KernelSpec


def current_keys(builder: Builder, config: LabConfig) -> set[str]:
    return builder.current_keys(config) | derived_keys(builder, config)


def derived_keys(builder: Builder, config: LabConfig) -> set[str]:
    """What is built from a current Debian kernel's source and is cached: that source, the
    KVM selftests built from it, and the L2 Linux kernel (from trixie's source). The keys
    come from the cached manifests: nothing is fetched or built here."""
    keys: set[str] = set()
    for suite in SUITES:
        spec = KernelSpec("suite", suite, suite=suite)
        kernel = builder.store.get("kernel", spec.label, content_key(builder.kernel_inputs(spec, config)))
        if kernel is None:
            continue
        inputs = source.inputs_for(kernel.manifest)
        src = builder.store.get("source", spec.label, content_key(inputs))
        if src is None:
            continue
        keys.add(content_key(inputs))
        identity = {k: src.manifest.get(k) for k in ("package", "version", "tarball_sha256")}
        try:
            keys.add(content_key(selftests.inputs_for(source.tree_of(src), identity)))
            if suite == l2kernel.SUITE:
                keys.add(content_key(l2kernel.inputs(src.manifest)))
        except UserError:  # no cross compiler here: nothing of those kinds can be current
            pass
    return keys
