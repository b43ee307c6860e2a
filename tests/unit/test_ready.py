"""What `up` reads back from L1: the ready file and KVM's init messages."""

import pytest

from lab.machine.boot import (
    FATAL_BOOT,
    KVM_MODE_REPORTS,
    ipa_limit,
    kvm_messages,
    kvm_mode,
    kvm_mode_refusal,
    parse_ready,
    ready_complete,
    thp_mode,
)

READY = """release=6.12.117+deb13-arm64
kvm_device=yes
thp=[always] madvise never
uptime=1.93
end=1
"""


def test_parse_ready():
    values = parse_ready(READY)
    assert values["release"] == "6.12.117+deb13-arm64"
    assert values["kvm_device"] == "yes"
    assert values["thp"] == "[always] madvise never"
    assert values["end"] == "1"


def test_the_ready_report_is_whole_at_its_end_line_and_later_lines_keep_it_whole():
    # what the agent appends in two writes: ready, then the share once it is mounted
    assert not ready_complete("")
    assert not ready_complete(READY.replace("end=1\n", ""))
    assert not ready_complete(READY.replace("end=1\n", "end=1"[:4]))  # a line cut short
    assert not ready_complete("xend=1\n")
    assert ready_complete(READY)
    later = READY + "share_uptime=2.01\n"
    assert ready_complete(later)
    assert parse_ready(later)["share_uptime"] == "2.01"


def test_a_failure_of_the_initramfs_or_of_the_agent_ends_the_boot_wait():
    assert FATAL_BOOT.search("kvmlab-initramfs: FAILED: cannot mount the L1 root filesystem")
    assert FATAL_BOOT.search("[    1.9] kvmlab-agent: FAILED: cannot mount the share (9p, mount tag share)")
    assert not FATAL_BOOT.search("kvmlab-l2: done 0.4 s")


def test_kvm_mode_from_each_kernel_generation():
    assert kvm_mode(["kvm [1]: VHE mode initialized successfully"]) == "VHE"
    assert kvm_mode(["kvm [1]: nVHE mode initialized successfully"]) == "nVHE"
    assert kvm_mode(["kvm [1]: Hyp mode initialized successfully"]) == "nVHE"  # 5.10 without VHE
    assert kvm_mode(["kvm [1]: Protected nVHE mode initialized successfully"]) == "protected"
    # 6.x: "%s%sVHE%s mode" (Protected/Hyp, n/h, +NV2), arch/arm64/kvm/arm.c
    assert kvm_mode(["kvm [1]: Hyp nVHE mode initialized successfully"]) == "nVHE"
    assert kvm_mode(["kvm [1]: Hyp hVHE mode initialized successfully"]) == "hVHE"
    assert kvm_mode(["kvm [1]: Protected hVHE mode initialized successfully"]) == "protected (hVHE)"
    assert kvm_mode(["kvm [1]: VHE+NV2 mode initialized successfully"]) == "nested (NV2)"  # sid, FIELD-NOTES 6
    assert kvm_mode(["kvm [1]: HYP mode not available"]) == ""
    assert kvm_mode([]) == ""


def test_thp_mode():
    assert thp_mode("[always] madvise never") == "always"
    assert thp_mode("always madvise [never]") == "never"


def test_kvm_messages_from_a_console_log():
    log = ("[    0.912] kvm [1]: IPA Size Limit: 52 bits\r\n"
           "[    0.950] kvm [1]: VHE mode initialized successfully\r\n"
           "[    1.000] virtio-pci 0000:00:01.0: enabling device\r\n")
    assert kvm_messages(log) == ["kvm [1]: IPA Size Limit: 52 bits", "kvm [1]: VHE mode initialized successfully"]
    assert kvm_mode(kvm_messages(log)) == "VHE"


@pytest.mark.parametrize("mode, release, l0, refused", [
    ("nested", "7.2.13+deb14-arm64", "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)", ""),
    ("nested", "6.12.57+deb13-arm64", None, "L1's kernel is 6.12.57+deb13-arm64, older than 6.16"),
    ("nested", "5.10.0-32-arm64", None, "older than 6.16"),
    ("nested", None, "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)", "QEMU 7.2, older than 9.0"),
    ("nested", "?", None, ""),  # an Image whose release is not known: KVM's own report decides
    ("vhe", "5.10.0-32-arm64", "QEMU emulator version 7.2.22", ""),
])
def test_a_kvm_mode_the_kernel_or_l0_cannot_give_is_refused_before_boot(mode, release, l0, refused):
    got = kvm_mode_refusal(mode, release, l0)
    assert (refused in got) if refused else got == "", got
    if refused:
        assert got.startswith(f"lab.kvm_mode {mode}: ")


def test_every_kvm_mode_has_the_reports_that_satisfy_it():
    from lab.config import KVM_MODES

    assert set(KVM_MODE_REPORTS) == set(KVM_MODES)


def test_ipa_limit_from_kvm_messages():
    # sid 7.2.13 under QEMU 10.0.2: -cpu max (LPA2) gives 52 bits, lpa2=off 48 (measured)
    log = ["kvm [1]: nv: 710 fine grained trap handlers", "kvm [1]: IPA Size Limit: 48 bits",
           "kvm [1]: VHE+NV2 mode initialized successfully"]
    assert ipa_limit(log) == 48
    assert ipa_limit(["kvm [1]: IPA Size Limit: 52 bits"]) == 52
    assert ipa_limit(["kvm [1]: VHE mode initialized successfully"]) is None
