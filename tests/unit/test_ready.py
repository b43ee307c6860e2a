"""What `up` reads back from L1: the ready file and KVM's init messages."""

from lab.machine.boot import kvm_messages, kvm_mode, parse_ready, thp_mode

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


def test_kvm_mode_from_each_kernel_generation():
    assert kvm_mode(["kvm [1]: VHE mode initialized successfully"]) == "VHE"
    assert kvm_mode(["kvm [1]: nVHE mode initialized successfully"]) == "nVHE"
    assert kvm_mode(["kvm [1]: Hyp mode initialized successfully"]) == "nVHE"  # 5.10 without VHE
    assert kvm_mode(["kvm [1]: Protected nVHE mode initialized successfully"]) == "protected"
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
