"""Each Debian suite's kernel boots as L1 with KVM (the package layouts differ)."""

from __future__ import annotations

import pytest

from tests.conftest import kvmlab, qemu_pids_in

pytestmark = pytest.mark.boot

RELEASES = {"bullseye": "5.10.", "bookworm": "6.1.", "trixie": "6.12.", "sid": "7."}


@pytest.mark.parametrize("suite", list(RELEASES))
def test_suite_kernel_runs_kvm(suite, private_runtime):
    up = kvmlab("up", "--kernel", suite, "--name", f"s-{suite}")
    assert up.returncode == 0, up.stderr.decode()[-3000:]
    try:
        out = up.stdout.decode()
        assert "/dev/kvm present" in out
        release = kvmlab("exec", "--name", f"s-{suite}", "--", "uname", "-r").stdout.decode().strip()
        assert release.startswith(RELEASES[suite]), release
        thp = kvmlab("exec", "--name", f"s-{suite}", "--", "cat", "/sys/kernel/mm/transparent_hugepage/enabled")
        assert thp.returncode == 0 and thp.stdout == b"[always] madvise never\n"
        tracing = kvmlab("exec", "--name", f"s-{suite}", "--",
                         "test", "-d", "/sys/kernel/tracing/events/kvm/kvm_guest_fault")
        assert tracing.returncode == 0, "kvm:kvm_guest_fault is what the THP suite records"
    finally:
        down = kvmlab("down", "--name", f"s-{suite}")
    assert down.returncode == 0
    assert qemu_pids_in(private_runtime / f"labs/s-{suite}") == []
