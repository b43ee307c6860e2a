"""`kvmlab kernel build`: an arm64 Image from a kernel source tree, cross-compiled with
Debian's gcc-aarch64-linux-gnu, configured as base (defconfig) + configs/kernel/kvmlab.config
(+ the user's fragments), so that it boots as L1 with no modules.

The build goes to an output directory (make O=...), by default one per source tree under
the cache, so the next build of the same tree (a bisect step, an edit) is incremental.
The source tree itself is not written to. ccache is used when it is installed.

    OUT/arch/arm64/boot/Image     what `kvmlab up --kernel OUT` boots
    OUT/.config                   the merged configuration
    OUT/kvmlab-build.json         source, commit, release, fragments, seconds
    OUT/kvmlab-build.log          make's whole output
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from lab.core.errors import ImageError, UserError
from lab.core.paths import CONFIGS_DIR, cache_dir
from lab.core.progress import Progress
from lab.kernels.arm64 import image_problem
from lab.shared.files import write_json

FRAGMENT = CONFIGS_DIR / "kernel" / "kvmlab.config"
BASES = ("defconfig", "tinyconfig", "allnoconfig")
CROSS = "aarch64-linux-gnu-"
#: Host tools a kernel build needs, and the Debian packages that bring them.
TOOLS = {"make": "make", f"{CROSS}gcc": "gcc-aarch64-linux-gnu", "flex": "flex", "bison": "bison", "bc": "bc"}
_OPTION = re.compile(r"^(CONFIG_\w+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_\w+) is not set$")
_SYMBOL = re.compile(r"^\s*(?:menu)?config\s+(\w+)", re.M)


@dataclass
class BuildResult:
    image: Path
    out: Path
    release: str
    commit: str
    seconds: float
    config_changed: bool


def default_out(src: Path) -> Path:
    """One build directory per source tree, so rebuilds are incremental."""
    digest = hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:12]
    return cache_dir() / "builds" / f"{src.resolve().name}-{digest}"


def read_config(path: Path) -> dict[str, str]:
    """CONFIG_X -> value ('n' for "is not set") of a .config or a fragment."""
    values: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        match = _OPTION.match(line)
        if match:
            values[match.group(1)] = match.group(2)
            continue
        match = _UNSET.match(line)
        if match:
            values[match.group(1)] = "n"
    return values


def kconfig_symbols(src: Path) -> set[str]:
    """Every CONFIG_ symbol the tree's Kconfig files define."""
    symbols: set[str] = set()
    for path in src.rglob("Kconfig*"):
        if path.is_file():
            symbols.update("CONFIG_" + m.group(1) for m in _SYMBOL.finditer(path.read_text(errors="replace")))
    return symbols


def unmet(fragment: dict[str, str], config: dict[str, str], known: set[str] | None = None) -> list[str]:
    """The fragment's options that the final config does not have as asked (of those
    the tree defines, if `known` is given)."""
    missing = []
    for option, wanted in fragment.items():
        if known is not None and option not in known:
            continue
        got = config.get(option, "n")
        # "0": off, for a symbol that is an int in older trees (BASE_SMALL up to 6.8)
        if wanted == "n" and got in ("n", "", "0"):
            continue
        if got != wanted:
            missing.append(f"{option}={wanted} (got {got})")
    return missing


def check_tools(what: str = "building a kernel") -> None:
    missing = [package for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise UserError(f"{what} needs {', '.join(missing)}; run scripts/setup "
                        f"(or apt-get install {' '.join(missing)})")


def _check_tree(src: Path) -> None:
    if not (src / "Makefile").is_file() or not (src / "arch/arm64/Kconfig").is_file():
        raise UserError(f"--src {src}: not a Linux source tree (no Makefile and arch/arm64/Kconfig)")
    for leftover in (".config", "include/config/auto.conf"):
        if (src / leftover).exists():
            raise UserError(f"--src {src}: the tree has been configured in place ({leftover}); kvmlab builds out of "
                            f"tree (O=), which needs a clean tree: `make -C {src} mrproper` (or give another --src)")


def git_commit(src: Path) -> str:
    try:
        result = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def build(src: Path, out: Path | None = None, fragments: list[Path] | tuple[Path, ...] = (), base: str = "defconfig",
          jobs: int | None = None, progress: Progress | None = None, l1: bool = True) -> BuildResult:
    """Configures and builds `src` into `out`; `l1`: with configs/kernel/kvmlab.config
    first (a kernel L1 boots), else the fragments alone (the L2 guests' kernel)."""
    progress = progress or Progress(quiet=True)
    src = src.expanduser().resolve()
    if not src.is_dir():
        raise UserError(f"--src {src}: no such directory")
    _check_tree(src)
    check_tools()
    base_file = None
    if base not in BASES:
        base_file = Path(base).expanduser().resolve()
        if not base_file.is_file():
            raise UserError(f"--base {base}: neither one of {', '.join(BASES)} nor an existing config file")
    # absolute: merge_config.sh runs in the source tree, not where the user named them
    fragment_files = [FRAGMENT] * l1 + [Path(f).expanduser().resolve() for f in fragments]
    for fragment in fragment_files:
        if not fragment.is_file():
            raise UserError(f"--config-fragment {fragment}: no such file")
        if not read_config(fragment):
            raise UserError(f"--config-fragment {fragment}: no CONFIG_ lines in it")
    out = (out or default_out(src)).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    jobs = jobs or os.cpu_count() or 1
    make = ["make", "-C", str(src), f"O={out}", "ARCH=arm64", f"CROSS_COMPILE={CROSS}", f"-j{jobs}"]
    cache_env: dict[str, str] = {}
    if shutil.which("ccache"):
        make.append(f"CC=ccache {CROSS}gcc")
        # Paths under the tree and the output directory enter ccache's hash relative to
        # the compile's directory: a build of the same tree into another output directory
        # at the same depth hits the cache (absolute, they missed: a new --out compiled
        # everything again).
        common = os.path.commonpath([src, out])
        if common != "/":
            cache_env["CCACHE_BASEDIR"] = common
    log_path = out / "kvmlab-build.log"
    started = time.monotonic()
    with open(log_path, "w") as log:
        # Configuration: only when its inputs changed, so an unchanged tree rebuilds nothing.
        wanted = {}
        for fragment in fragment_files:
            wanted.update(read_config(fragment))
        config_inputs = hashlib.sha256(json.dumps(
            {"base": base, "base_file": base_file.read_text() if base_file else "",
             "fragments": [f.read_text() for f in fragment_files], "commit": git_commit(src)}).encode()).hexdigest()
        stamp = out / ".kvmlab-config-inputs"
        config_changed = not (out / ".config").exists() or not stamp.exists() or stamp.read_text() != config_inputs
        if config_changed:
            with progress.step(f"Configuring {src.name}: {base} + {', '.join(f.name for f in fragment_files)}") as step:
                if base_file is not None:
                    shutil.copyfile(base_file, out / ".config")
                    _run(make + ["olddefconfig"], log, step, "make olddefconfig")
                else:
                    _run(make + [base], log, step, f"make {base}")
                _run([str(src / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(out), str(out / ".config"),
                      *map(str, fragment_files)], log, step, "merge_config.sh", cwd=src,
                     env={"ARCH": "arm64", "CROSS_COMPILE": CROSS})
                _run(make + ["olddefconfig"], log, step, "make olddefconfig")
            known = kconfig_symbols(src)
            absent = sorted(option for option in wanted if option not in known)
            missing = unmet(wanted, read_config(out / ".config"), known)
            if missing:
                stamp.unlink(missing_ok=True)
                raise UserError(f"{src}: the merged config lacks {', '.join(missing)} (a dependency not met, or "
                                f"a symbol this kernel does not have); see {out / '.config'} and {log_path}")
            stamp.write_text(config_inputs)
            write_json(out / ".kvmlab-absent-symbols.json", absent)
        with progress.step(f"Building {src.name} (arm64 Image, -j{jobs})") as step:
            _run(make + ["Image"], log, step, "make Image", env=cache_env, count=True)
    image = out / "arch/arm64/boot/Image"
    problem = image_problem(image)
    if problem:
        raise ImageError(f"the build finished but {image}: {problem}")
    release = subprocess.run(make[:5] + ["-s", "kernelrelease"], capture_output=True, text=True).stdout.strip()
    result = BuildResult(image, out, release, git_commit(src), round(time.monotonic() - started, 1), config_changed)
    record = {"src": str(src), "commit": result.commit, "release": release, "base": base,
              "fragments": [str(f) for f in fragment_files], "image": str(image), "seconds": result.seconds,
              "not_in_this_tree": _absent(out),
              "ccache": bool(shutil.which("ccache")), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(out / "kvmlab-build.json", record)
    return result


def _absent(out: Path) -> list[str]:
    """The fragments' symbols this tree does not define (written when it was configured)."""
    try:
        return list(json.loads((out / ".kvmlab-absent-symbols.json").read_text()))
    except (OSError, ValueError):
        return []


def _run(cmd: list[str], log, step, what: str, cwd: Path | None = None, env: dict[str, str] | None = None,
         count: bool = False) -> None:
    """Runs a build command, its output to the log and the latest line to the progress."""
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    tail: list[str] = []
    compiled = 0
    with subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace", env={**os.environ, **(env or {})}) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            tail = (tail + [line.rstrip()])[-40:]
            if count and line.startswith("  CC "):
                compiled += 1
                step.update(f"{compiled} files compiled; {line.strip()}")
            elif not count:
                step.update(line)
    if proc.returncode != 0:
        errors = [t for t in tail if "error" in t.lower() or t.startswith("make")] or tail
        raise ImageError(f"{what} failed (exit status {proc.returncode}); whole log: {log.name}",
                         detail="\n".join(errors[-15:]))
