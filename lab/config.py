"""Lab configuration: configs/lab.yaml, overlaid by a user's file, overlaid by CLI options.

Every value is checked here, once; an error names the file, the key path and the value,
and says what is accepted (exit status 2 on the command line).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lab.core import validate as v
from lab.core.errors import ConfigError
from lab.core.paths import CONFIGS_DIR
from lab.core.validate import Bad, read_yaml
from lab.kernels import spec as kernel_spec
from lab.kernels.spec import SUITES, KernelSpec

DEFAULT_CONFIG = CONFIGS_DIR / "lab.yaml"
THP_MODES = ("always", "madvise", "never")
#: How L1's KVM runs (kvm-arm.mode): vhe is the kernel's own choice on a VHE CPU (nothing
#: on the command line); nested lets guests run hypervisors (Linux 6.16+, FEAT_NV2 from an
#: L0 QEMU 9.0+).
KVM_MODES = ("vhe", "nvhe", "protected", "nested")
#: nothing added to L1's command line: the kernel's own default (VHE where the CPU has it)
DEFAULT_KVM_MODE = "vhe"
#: qemu.tcg_threads: how TCG runs L1's vCPUs (configs/lab.yaml)
TCG_THREADS = ("multi", "single")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")


def meminfo_mib(field: str) -> int | None:
    """A /proc/meminfo field (MemTotal, MemAvailable...) in MiB; None if unreadable."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _host_memory_mib() -> int:
    return meminfo_mib("MemTotal") or 1 << 20


#: QEMU options that open a listener: the host part of their address must be loopback.
_LISTEN = re.compile(r"(?:^|[,=])(?:tcp|telnet|websocket|udp):(\[[^\]]*\]|[^:,]*):(\d+)")
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


def _extra_args(value: Any) -> list[str]:
    """Extra QEMU arguments; a network listener in them must bind the loopback address.

    kvmlab's own sockets are unix sockets in the lab's private directory; the lab gdb
    option binds 127.0.0.1. An argument that would listen on every interface is refused."""
    args = v.text_list(value)
    for i, arg in enumerate(args):
        if arg == "-s":
            raise v.Invalid("-s: gdb on port 1234 of every interface; use lab.gdb (kvmlab up --gdb PORT), "
                          "which binds 127.0.0.1")
        option = args[i - 1] if i else ""
        hosts = [m.group(1) for m in _LISTEN.finditer(arg)]
        if option == "-vnc" and not arg.startswith(("unix:", "none")):
            hosts.append(arg.rsplit(":", 1)[0] if ":" in arg else "")
        for m in re.finditer(r"(?:^|,)host=([^,]*)", arg):
            hosts.append(m.group(1))
        for host in hosts:
            if host not in _LOOPBACK:
                raise v.Invalid(f"{arg!r} would listen on {host or 'every interface'}; bind 127.0.0.1 "
                              "(nothing of a lab listens on the network unless asked, and then on loopback)")
    return args


def _memory(value: Any) -> int:
    mib = v.size_mib(value)
    top = _host_memory_mib()
    if not 256 <= mib <= top:
        raise Bad(f"a size from 256M to this machine's {top}M")
    return mib


def _device_memory(value: Any) -> int:
    mib = 0 if value in (0, "0") else v.size_mib(value)
    if mib and not (2 <= mib <= 1024 and mib & (mib - 1) == 0):
        raise Bad("0, or a power of two from 2M to 1G (a PCI BAR's size)")
    return mib


def _kernel(value: Any) -> str:
    try:
        spec = kernel_spec.parse(value)
    except ValueError as exc:
        raise v.Invalid(f"{exc}") from None
    return str(spec.path) if spec.path is not None else spec.text


def _modules(value: Any) -> str:
    """'' or a directory holding a kernel's modules (lib/modules/RELEASE, or a folder with it)."""
    if value in ("", None):
        return ""
    if not isinstance(value, str):
        raise Bad("the path of a modules directory, or empty")
    if not Path(value).is_dir():
        raise v.Invalid(f"{value}: no such directory; give lib/modules/RELEASE of the kernel, "
                      "or the INSTALL_MOD_PATH it was installed to")
    return value


SCHEMA: dict[str, dict[str, Callable[[Any], Any]]] = {
    "lab": {
        "name": v.text(NAME_RE, "a name of lowercase letters, digits, '.', '_' or '-' (at most 32)"),
        "kernel": _kernel,
        "modules": _modules,
        "cpus": v.integer(1, 16),
        "memory": _memory,
        "hugepages_1g": v.integer(0, 16),
        "device_memory": _device_memory,
        "numa_nodes": v.integer(1, 2),
        "thp": v.choice(THP_MODES),
        "kvm_mode": v.choice(KVM_MODES),
        "boot_timeout": v.seconds(5, 3600),
        "gdb": v.integer(0, 65535),
        "snapshot": v.boolean,
    },
    "qemu": {
        "binary": v.text(expected="the name or path of qemu-system-aarch64"),
        "cpu": v.text(re.compile(r"^[A-Za-z0-9_.,=-]+$"), "a -cpu value such as max,pauth-impdef=on"),
        "append": v.text(expected="a string"),
        "extra_args": _extra_args,
        "tcg_threads": v.choice(TCG_THREADS),
    },
    "images": {
        "userspace_suite": v.choice(SUITES),
        "extra_packages": v.text_list,
        "mirror": v.text(expected="a mirror URI, or empty for mmdebstrap's default"),
        "updates": v.boolean,
    },
}


@dataclass
class LabConfig:
    name: str
    kernel: str
    modules: str
    cpus: int
    memory_mib: int
    thp: str
    boot_timeout: float
    gdb: int
    qemu_binary: str
    qemu_cpu: str
    append: str
    qemu_extra_args: list[str]
    userspace_suite: str
    extra_packages: list[str]
    mirror: str
    updates: bool
    #: Restore L1 from a saved ready state (made by the first such `up`) instead of booting.
    snapshot: bool = False
    kvm_mode: str = DEFAULT_KVM_MODE
    #: 1 GiB huge pages L1 reserves at boot, in memory QEMU adds to `memory_mib`
    hugepages_1g: int = 0
    #: MiB of device memory in L1: an ivshmem-plain PCI device's BAR (0: none)
    device_memory_mib: int = 0
    #: NUMA nodes L1 has (1 or 2): its memory, and its CPUs, split between them
    numa_nodes: int = 1
    #: TCG's threads: "multi" (a host thread per vCPU) or "single" (one for all of them,
    #: in turn): configs/lab.yaml says what each costs and changes
    tcg_threads: str = "multi"

    @property
    def machine_mib(self) -> int:
        """The memory QEMU gives L1: `memory` for L1's own use, plus the 1 GiB pages."""
        return self.memory_mib + 1024 * self.hugepages_1g

    @property
    def memory_words(self) -> str:
        """"2048 MiB" or "2048 MiB + 1 GiB page reserved at boot"."""
        pages = self.hugepages_1g
        return f"{self.memory_mib} MiB" + (f" + {pages} GiB page{'s' if pages != 1 else ''} reserved at boot"
                                           if pages else "")
    #: Files the values came from, for messages.
    sources: list[str] = field(default_factory=list)

    @property
    def kernel_spec(self) -> KernelSpec:
        return kernel_spec.parse(self.kernel)

    @property
    def kernel_is_suite(self) -> bool:
        return self.kernel in SUITES

    def as_dict(self) -> dict[str, Any]:
        return {
            "lab": {"name": self.name, "kernel": self.kernel, "modules": self.modules, "cpus": self.cpus,
                    "memory": f"{self.memory_mib}M", "hugepages_1g": self.hugepages_1g,
                    "device_memory": f"{self.device_memory_mib}M", "numa_nodes": self.numa_nodes,
                    "thp": self.thp,
                    "kvm_mode": self.kvm_mode,
                    "boot_timeout": self.boot_timeout, "gdb": self.gdb, "snapshot": self.snapshot},
            "qemu": {"binary": self.qemu_binary, "cpu": self.qemu_cpu, "append": self.append,
                     "extra_args": self.qemu_extra_args, "tcg_threads": self.tcg_threads},
            "images": {"userspace_suite": self.userspace_suite, "extra_packages": self.extra_packages,
                       "mirror": self.mirror, "updates": self.updates},
        }


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml(path, "no such config file; give an existing file to --config")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections ({', '.join(SCHEMA)})")
    return data


def _merge(into: dict[str, dict[str, tuple[Any, str]]], data: dict[str, Any], where: str,
           base: Path | None) -> None:
    """Checks names (not values) and records each value with where it came from."""
    for section, values in data.items():
        if section not in SCHEMA:
            raise ConfigError(f"{where}: {section}: unknown section; known sections: {', '.join(SCHEMA)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: {section}: expected a mapping of keys, got {values!r}")
        for key, value in values.items():
            if key not in SCHEMA[section]:
                raise ConfigError(f"{where}: {section}.{key}: unknown key; known keys in {section}: "
                                  + ", ".join(SCHEMA[section]))
            if any(isinstance(v, str) and "\0" in v for v in (value if isinstance(value, list) else [value])):
                raise ConfigError(f"{where}: {section}.{key}: a NUL character in {value!r}; remove it")
            if (section, key) in (("lab", "kernel"), ("lab", "modules")) and isinstance(value, str) and value \
                    and base is not None and not kernel_spec.is_debian(value) \
                    and not os.path.isabs(os.path.expanduser(value)):
                # A kernel or modules path in a config file is relative to that file.
                value = str((base / os.path.expanduser(value)).resolve())
            if (section, key) == ("qemu", "binary") and isinstance(value, str) and "/" in value \
                    and base is not None and not os.path.isabs(os.path.expanduser(value)):
                value = str((base / os.path.expanduser(value)).resolve())  # a path, not a name on PATH
            into[section][key] = (value, where)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> LabConfig:
    """Default config, then `path`, then CLI `overrides` ({"lab.cpus": 4}, None = not given)."""
    merged: dict[str, dict[str, tuple[Any, str]]] = {section: {} for section in SCHEMA}
    sources = [str(DEFAULT_CONFIG)]
    _merge(merged, _read_yaml(DEFAULT_CONFIG), str(DEFAULT_CONFIG), DEFAULT_CONFIG.parent)
    if path is not None:
        path = Path(path).expanduser()
        _merge(merged, _read_yaml(path), str(path), path.resolve().parent)
        sources.append(str(path))
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".")
        option = "--" + key.replace("_", "-")
        _merge(merged, {section: {key: value}}, f"option {option}", Path.cwd())

    clean: dict[str, Any] = {}
    for section, checks in SCHEMA.items():
        for key, check in checks.items():
            if key not in merged[section]:
                raise ConfigError(f"{DEFAULT_CONFIG}: {section}.{key}: missing; restore the default config")
            value, where = merged[section][key]
            try:
                clean[f"{section}.{key}"] = check(value)
            except v.Invalid as exc:
                raise ConfigError(f"{where}: {section}.{key}: {exc}") from None
            except ValueError as exc:
                raise ConfigError(f"{where}: {section}.{key}: expected {exc}, got {value!r}") from None

    if clean["lab.modules"] and not Path(clean["lab.kernel"]).is_absolute():
        where = merged["lab"]["modules"][1]
        raise ConfigError(f"{where}: lab.modules: {clean['lab.modules']} goes with a kernel Image, not with "
                          f"Debian's {clean['lab.kernel']} (which brings its own); drop it or give an Image")
    if os.environ.get("KVMLAB_MIRROR"):
        clean["images.mirror"] = os.environ["KVMLAB_MIRROR"]
    return LabConfig(
        name=clean["lab.name"], kernel=clean["lab.kernel"], modules=clean["lab.modules"], cpus=clean["lab.cpus"],
        memory_mib=clean["lab.memory"], thp=clean["lab.thp"], boot_timeout=clean["lab.boot_timeout"],
        gdb=clean["lab.gdb"],
        qemu_binary=clean["qemu.binary"], qemu_cpu=clean["qemu.cpu"], append=clean["qemu.append"],
        qemu_extra_args=clean["qemu.extra_args"], tcg_threads=clean["qemu.tcg_threads"],
        userspace_suite=clean["images.userspace_suite"],
        extra_packages=clean["images.extra_packages"], mirror=clean["images.mirror"],
        updates=clean["images.updates"], snapshot=clean["lab.snapshot"], kvm_mode=clean["lab.kvm_mode"],
        hugepages_1g=clean["lab.hugepages_1g"], device_memory_mib=clean["lab.device_memory"],
        numa_nodes=clean["lab.numa_nodes"],
        sources=sources,
    )
