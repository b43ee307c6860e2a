"""The L0 command line: what the field notes proved, and nothing that listens on a port."""

from pathlib import Path

from lab.config import load_config
from lab.machine.qemu import LabPaths, build_command, kernel_cmdline


def command(**overrides):
    config = load_config(None, overrides)
    paths = LabPaths(Path("/run/user/1000/kvmlab/labs/t"))
    return config, paths, build_command(config, paths, Path("/cache/Image"), Path("/cache/root"))


def value_after(cmd, flag):
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == flag]


def test_l1_gets_el2_gicv3_and_the_configured_cpu():
    _, _, cmd = command(**{"lab.cpus": 3, "lab.memory": "1G"})
    assert value_after(cmd, "-M") == ["virt,virtualization=on,gic-version=3"]
    assert value_after(cmd, "-cpu") == ["max,pauth-impdef=on,lpa2=off"]  # qemu.cpu, and CPU_DEFAULTS
    assert value_after(cmd, "-smp") == ["3"]
    assert value_after(cmd, "-m") == ["2048M"]  # 1 GiB for L1, and the default's 1 GiB page
    assert value_after(cmd, "-kernel") == ["/cache/Image"]
    assert "-no-reboot" in cmd and "-nodefaults" in cmd


def test_the_default_lab_reserves_a_1g_page_at_boot_in_memory_of_its_own():
    config, _, cmd = command()
    assert config.hugepages_1g == 1 and config.memory_mib == 2048
    assert value_after(cmd, "-m") == ["3072M"]
    assert "hugepagesz=1G hugepages=1" in kernel_cmdline(config)
    config, _, cmd = command(**{"lab.hugepages_1g": 0, "lab.memory": "2G"})
    assert value_after(cmd, "-m") == ["2048M"] and "hugepagesz" not in kernel_cmdline(config)
    assert config.memory_words == "2048 MiB"
    assert command(**{"lab.hugepages_1g": 2})[0].memory_words == "2048 MiB + 2 GiB pages reserved at boot"


def test_a_lab_on_max_gets_lpa2_off_unless_the_cpu_names_lpa2():
    # KVM walks its IPA space in 1 GiB steps; without LPA2 that is 48 bits, not 52
    for mode in ("vhe", "nvhe", "protected", "nested"):
        assert value_after(command(**{"lab.kvm_mode": mode})[2], "-cpu") == ["max,pauth-impdef=on,lpa2=off"]
    given = {"lab.kvm_mode": "nested", "qemu.cpu": "max,lpa2=on"}
    assert value_after(command(**given)[2], "-cpu") == ["max,lpa2=on"]
    other = {"lab.kvm_mode": "nested", "qemu.cpu": "neoverse-n2"}
    assert value_after(command(**other)[2], "-cpu") == ["neoverse-n2"]


def test_thp_mode_and_extra_append_reach_the_kernel_command_line():
    config, _, cmd = command(**{"lab.thp": "never"})
    config.append = "loglevel=4"
    assert kernel_cmdline(config) == ("console=ttyAMA0 panic=-1 transparent_hugepage=never hugepagesz=1G hugepages=1 "
                                      "loglevel=4")
    assert "transparent_hugepage=never" in value_after(cmd, "-append")[0]


def test_kvm_mode_is_kvm_arm_mode_on_the_command_line_except_the_default():
    assert "kvm-arm.mode" not in kernel_cmdline(command()[0])  # vhe: the kernel's own choice
    for mode in ("nvhe", "protected", "nested"):
        assert f" kvm-arm.mode={mode}" in kernel_cmdline(command(**{"lab.kvm_mode": mode})[0])


def test_every_socket_is_a_unix_socket_in_the_lab_directory():
    _, paths, cmd = command()
    chardevs = value_after(cmd, "-chardev")
    # the fourth: L1's ready report, appended to the share's ready file (the host's only)
    assert chardevs[3:] == [f"file,id=ready,path={paths.ready},append=on"]
    assert "virtserialport,chardev=ready,name=kvmlab.ready" in value_after(cmd, "-device")
    chardevs = chardevs[:3]
    for spec in chardevs:
        fields = dict(f.split("=", 1) for f in spec.split(",")[1:] if "=" in f)
        assert spec.startswith("socket,")
        assert Path(fields["path"]).parent == paths.dir
        assert "host" not in fields and "port" not in fields
    assert f"logfile={paths.console_log}" in chardevs[0]
    joined = " ".join(cmd)
    for network in ("tcp:", "-nic", "-netdev", "hostfwd", "-vnc", "-spice", "-gdb"):
        assert network not in joined


def test_root_is_a_read_only_disk_and_the_share_is_the_lab_share():
    _, paths, cmd = command()
    assert value_after(cmd, "-drive") == ["file=/cache/root,if=none,id=root,format=raw,readonly=on"]
    assert "virtio-blk-pci,drive=root" in value_after(cmd, "-device")
    # The only 9p export is the share: a mounted 9p root would block snapshots (migration).
    assert value_after(cmd, "-fsdev") == [f"local,id=share,path={paths.share},security_model=mapped-file"]


def test_a_comma_in_the_root_image_path_is_doubled_for_qemu():
    config, paths, _ = command()
    cmd = build_command(config, paths, Path("/cache/Image"), Path("/cache/a,b/root.sqfs"))
    assert value_after(cmd, "-drive")[0].startswith("file=/cache/a,,b/root.sqfs,if=none")


def test_extra_args_come_last():
    _, _, cmd = command(**{"qemu.extra_args": ["-d", "guest_errors"]})
    assert cmd[-2:] == ["-d", "guest_errors"]


def test_the_gdb_stub_is_asked_for_and_binds_loopback_only():
    _, _, cmd = command(**{"lab.gdb": 1234})
    assert value_after(cmd, "-gdb") == ["tcp:127.0.0.1:1234"]


def test_an_l0_older_than_9_0_is_named_with_what_it_lacks():
    from lab.machine.qemu import l0_lacks, l0_version

    debian12 = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"
    assert l0_version(debian12) == (7, 2)
    assert l0_lacks(debian12) == "QEMU 7.2: no FEAT_NV2, no EL2 virtual timer"
    assert l0_lacks("QEMU emulator version 8.2.2 (Debian 1:8.2.2+ds-0ubuntu1)").startswith("QEMU 8.2: no FEAT_NV2")
    assert l0_lacks("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)") == ""
    assert l0_lacks("QEMU emulator version 9.0.0") == ""
    assert l0_lacks("unknown") == ""


def test_device_memory_is_an_ivshmem_bar_and_none_when_zero():
    config, _, cmd = command()
    assert config.device_memory_mib == 64
    assert value_after(cmd, "-object") == ["memory-backend-ram,id=devmem,size=64M"]
    assert value_after(cmd, "-device")[-1] == "ivshmem-plain,memdev=devmem,master=on"
    _, _, cmd = command(**{"lab.device_memory": 0})
    assert "ivshmem-plain,memdev=devmem,master=on" not in cmd and "-object" not in cmd


def test_two_numa_nodes_split_memory_and_cpus():
    assert "-numa" not in command()[2]
    _, _, cmd = command(**{"lab.numa_nodes": 2, "lab.cpus": 3})
    assert value_after(cmd, "-numa") == ["node,nodeid=0,memdev=node0,cpus=0-1", "node,nodeid=1,memdev=node1,cpus=2-2"]
    assert "memory-backend-ram,id=node0,size=1536M" in value_after(cmd, "-object")
    _, _, cmd = command(**{"lab.numa_nodes": 2, "lab.cpus": 1})
    assert value_after(cmd, "-numa")[1] == "node,nodeid=1,memdev=node1"  # memory only



def test_tcg_threads_single_runs_every_vcpu_in_one_host_thread():
    assert "-accel" not in command()[2]  # QEMU's own default: a thread per vCPU
    assert "-accel" not in command(**{"qemu.tcg_threads": "multi"})[2]
    assert value_after(command(**{"qemu.tcg_threads": "single"})[2], "-accel") == ["tcg,thread=single"]


def test_a_snapshot_is_read_by_qemu_itself_from_8_2_and_through_cat_before(monkeypatch):
    from lab.machine import lab as labmod

    state = Path("/cache/snapshots/abc/vmstate")
    for line, uri in (("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)", f"file:{state}"),
                      ("QEMU emulator version 8.2.0", f"file:{state}"),
                      ("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u16)", f"exec:cat {state}"),
                      ("unknown", f"exec:cat {state}")):
        monkeypatch.setattr(labmod.qemu, "qemu_version", lambda binary, line=line: line)
        assert labmod.incoming_uri(state, "qemu-system-aarch64") == uri
    # file: takes options after a comma: such a path goes through cat
    odd = Path("/home/a,b/vmstate")
    assert labmod.incoming_uri(odd, "qemu-system-aarch64") == "exec:cat /home/a,b/vmstate"
