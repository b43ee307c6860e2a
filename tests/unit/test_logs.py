"""What kvmlab reads back from a lab's console log for its reports."""

from lab.machine.logs import tail, why_stopped


def test_why_stopped_is_the_last_failure_or_panic_line(tmp_path):
    log = tmp_path / "console.log"
    log.write_bytes(b"[    1.5] kvmlab: L1 ready\r\n"
                    b"[    1.6] kvmlab-agent: FAILED: cannot mount the share (9p, mount tag share) at /mnt/share\r\n"
                    b"[    1.7] reboot: Power down\r\n")
    assert why_stopped(log) == "kvmlab-agent: FAILED: cannot mount the share (9p, mount tag share) at /mnt/share"
    with open(log, "ab") as f:
        f.write(b"[    9.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000200\r\n")
    assert why_stopped(log) == "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000200"


def test_why_stopped_is_empty_for_a_clean_power_off_or_no_log(tmp_path):
    log = tmp_path / "console.log"
    log.write_text("[    1.5] kvmlab: L1 ready\n[    3.0] reboot: Power down\n")
    assert why_stopped(log) == ""
    assert why_stopped(tmp_path / "none.log") == ""


def test_tail_drops_terminal_queries(tmp_path):
    log = tmp_path / "console.log"
    log.write_bytes(b"one\r\nkvmlab-l1:~# \x1b[6ntwo\r\n")
    assert tail(log, 5) == "one\nkvmlab-l1:~# two"
