"""`--kernel` values, parsed once into a KernelSpec.

    trixie                      Debian's current arm64 kernel of a suite
    trixie-16k, sid-16k         the suite's 16 KiB-page flavour (linux-image-arm64-16k)
    bookworm:6.1.176-1          a pinned version of the suite's linux-image-arm64
    6.1.0-50, 6.12.117+deb13    a pinned kernel ABI: linux-image-ABI-arm64 (suite from the version)
    bookworm:linux-image-6.1.0-50-arm64
    PATH/Image                  an arm64 Image (with `lab.modules` / --modules for its modules)
    DIR                         a kernel build (O=) directory or tree: DIR/arch/arm64/boot/Image

Debian's archive keeps only each suite's current packages: a pinned version that is no
longer there is reported as such (a mirror with older ones can be named in KVMLAB_MIRROR).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lab.kernels.arm64 import image_problem

SUITES = ("bullseye", "bookworm", "trixie", "sid")
#: The kernel series each suite released with: a pinned version's suite when none is named.
SUITE_SERIES = {(5, 10): "bullseye", (6, 1): "bookworm", (6, 12): "trixie"}
#: An ABI, as in linux-image-ABI-arm64: 6.1.0-50, 5.10.0-32, 6.12.117+deb13, 7.2.13+deb14.
_ABI = re.compile(r"^(?P<abi>\d+\.\d+\.0-\d+|\d+\.\d+\.\d+\+deb\d+)(?P<flavour>-arm64(-16k)?)?$")
#: A Debian package version of linux-image-arm64: 6.1.176-1, 6.12.117-1~bpo12+1.
_VERSION = re.compile(r"^\d+\.\d+(\.\d+)?-[0-9A-Za-z.+~]+$")
_PACKAGE = re.compile(r"^linux-image-(?P<abi>[0-9][0-9A-Za-z.+~-]*?)-arm64(-16k)?$")
#: Debian's arm64 kernel flavours besides the 4 KiB-page one, by the suffix a suite takes:
#: trixie-16k boots linux-image-arm64-16k (16 KiB pages, so 32 MiB PMD blocks).
FLAVOURS = {"16k": "arm64-16k"}
#: Where Debian ships each flavour (bookworm and bullseye have only 4 KiB pages).
FLAVOUR_SUITES = {"16k": ("trixie", "sid")}
EXPECTED = ("a Debian suite (" + ", ".join(SUITES) + "), SUITE-16k (trixie-16k, sid-16k), "
            "SUITE:VERSION (e.g. bookworm:6.1.176-1), "
            "a kernel ABI (e.g. 6.1.0-50), or the path of an arm64 Image or kernel build directory")


@dataclass(frozen=True)
class KernelSpec:
    #: "suite": Debian's current kernel; "debian": a pinned package; "image": a file.
    kind: str
    text: str
    suite: str = ""
    #: What apt installs for "debian": linux-image-ABI-arm64, or linux-image-arm64=VERSION.
    package: str = ""
    path: Path | None = None

    @property
    def label(self) -> str:
        """Short and file-name safe: column headings, lab and cache entry names."""
        if self.kind == "suite":
            return self.suite
        if self.kind == "debian":
            pinned = self.package.split("=", 1)[-1]
            if pinned.startswith("linux-image-arm64-"):  # a flavour's current kernel: trixie-16k
                return safe_label(f"{self.suite}-{pinned[len('linux-image-arm64-'):]}")
            match = _PACKAGE.match(pinned)
            if match:
                pinned = match.group("abi") + (match.group(2) or "")
            return safe_label(f"{self.suite}-{pinned}")
        assert self.path is not None
        parent = self.path.parent.name if self.path.name == "Image" else self.path.name
        if self.path.parts[-4:-1] == ("arch", "arm64", "boot"):
            parent = self.path.parents[3].name
        return safe_label(f"image-{parent}")


def safe_label(text: str) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-.")[:40] or "kernel"


def suite_of_version(version: str) -> str:
    match = re.match(r"^(\d+)\.(\d+)", version)
    if not match:
        return "sid"
    return SUITE_SERIES.get((int(match.group(1)), int(match.group(2))), "sid")


def parse(text: str, base: Path | None = None) -> KernelSpec:
    """The spec for `text`; a relative path is taken from `base` (a config file's folder)
    or the current directory. Raises ValueError saying what is wrong and what is accepted."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"an empty kernel; give {EXPECTED}")
    text = text.strip()
    if text in SUITES:
        return KernelSpec("suite", text, suite=text)
    flavoured = _flavoured(text)
    if flavoured:
        base_suite, flavour = flavoured
        if base_suite not in FLAVOUR_SUITES[flavour]:
            raise ValueError(f"{text}: Debian has no {flavour} arm64 kernel in {base_suite}; it has one in "
                             + " and ".join(FLAVOUR_SUITES[flavour]))
        return KernelSpec("debian", text, suite=base_suite, package=f"linux-image-{FLAVOURS[flavour]}")
    suite, sep, rest = text.partition(":")
    if sep and suite in SUITES:
        package = _pinned_package(rest)
        if package is None:
            raise ValueError(f"{text}: after '{suite}:' give a version of linux-image-arm64 (e.g. 6.1.176-1), "
                             "a kernel ABI (e.g. 6.1.0-50) or a package linux-image-ABI-arm64")
        return KernelSpec("debian", text, suite=suite, package=package)
    package = _pinned_package(text)
    if package is not None and not _looks_like_path(text, base):
        return KernelSpec("debian", text, suite=suite_of_version(_version_in(package)), package=package)
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    try:
        path = path.resolve()
    except (RuntimeError, OSError) as exc:  # RuntimeError: a symlink loop, as Python 3.11 says it
        raise ValueError(f"{text}: cannot follow this path ({exc}); give the kernel Image itself") from None
    if path.is_dir():
        found = [p for p in (path / "arch/arm64/boot/Image", path / "Image") if p.is_file()]
        if not found:
            raise ValueError(f"{text}: a directory with no arch/arm64/boot/Image or Image in it; "
                             "build the kernel first (kvmlab kernel build --src DIR) or give the Image")
        path = found[0]
    problem = image_problem(path)
    if problem == "no such file" and "/" not in text and not text.startswith("."):
        raise ValueError(f"{text}: not a Debian suite, version or an existing file; give {EXPECTED}")
    if problem:
        raise ValueError(f"{text}: {problem}")
    return KernelSpec("image", text, path=path)


def is_debian(text: str) -> bool:
    """True if `text` names a Debian kernel (a suite or a pinned one), not a path."""
    suite, sep, rest = text.partition(":")
    return text in SUITES or (bool(sep) and suite in SUITES) or _flavoured(text) is not None or (
        _pinned_package(text) is not None and "/" not in text)


def _flavoured(text: str) -> tuple[str, str] | None:
    """("trixie", "16k") for trixie-16k: a suite and one of its kernel FLAVOURS."""
    suite, dash, flavour = text.rpartition("-")
    return (suite, flavour.lower()) if dash and suite in SUITES and flavour.lower() in FLAVOURS else None


def _looks_like_path(text: str, base: Path | None) -> bool:
    return "/" in text or ((base or Path.cwd()) / text).exists()


def _pinned_package(text: str) -> str | None:
    if _PACKAGE.match(text):
        return text
    match = _ABI.match(text)
    if match:
        return f"linux-image-{match.group('abi')}{match.group('flavour') or '-arm64'}"
    if _VERSION.match(text):
        return f"linux-image-arm64={text}"
    return None


def _version_in(package: str) -> str:
    return package.split("=", 1)[1] if "=" in package else package[len("linux-image-"):]


def image_release(path: Path) -> str:
    """The release in an uncompressed arm64 Image's banner ("Linux version 6.1.0 (...)"), or ''."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    match = re.search(rb"Linux version (\S+) \(", data)
    return match.group(1).decode(errors="replace") if match else ""
