"""What L1 boots, built from Debian's arm64 packages and what images/l1/ holds.

Three kinds of cache entry:
- kernel-LABEL-KEY: the arm64 `Image`, its config, and `modules.cpio` (the modules the
  recipe asks for, decompressed, with an `order` file for the initramfs). LABEL is a
  Debian suite, a pinned Debian kernel (bookworm-6.1.176-1) or image-NAME for a user's
  Image (copied in, so rebuilding it does not change a running lab's kernel);
- rootfs-SUITE-KEY: `root/` (L1's root filesystem, with images/l1/rootfs laid over it),
  `root.sqfs` (that tree as the read-only squashfs L1 boots from, on a virtio disk) and
  `initramfs.cpio` (busybox and images/l1/initramfs/init: mounts that root, switches to it);
- tools-KEY: what kvmlab runs in L1 (images/l1/python/l1, with lab/shared, the host-guest
  contract both sides import) and the L2 guest payloads, assembled from images/l2 with
  binutils-aarch64-linux-gnu. It reaches L1 through the lab's share.

At boot the initrd is initramfs.cpio followed by modules.cpio: the kernel unpacks both.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lab.builder import debian, payload
from lab.builder import rootfs as rootfs_image
from lab.builder.cpio import CpioWriter
from lab.builder.kmod import ModuleTree, decompress
from lab.builder.store import Entry, Store, content_key, hash_files
from lab.config import SUITES, LabConfig, load_config
from lab.core.errors import ImageError, UserError
from lab.core.paths import L1_IMAGE_DIR, L2_IMAGE_DIR, PROJECT_ROOT
from lab.core.progress import Progress
from lab.kernels.arm64 import image_problem
from lab.kernels.spec import KernelSpec, image_release

RECIPE = L1_IMAGE_DIR / "recipe.yaml"
#: L1's Python package (`python3 -m l1.scenario`), copied into the tools entry.
L1_PYTHON = L1_IMAGE_DIR / "python" / "l1"
#: lab/shared: the host-guest contract, shipped into L1 as it is.
SHARED = PROJECT_ROOT / "lab" / "shared"


@functools.lru_cache(maxsize=None)
def code_digest() -> str:
    """The image-building code itself is an input: a change to it rebuilds."""
    digest = hashlib.sha256()
    for name in ("build.py", "rootfs.py", "cpio.py", "kmod.py", "debian.py"):
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()


def load_recipe() -> dict[str, Any]:
    return yaml.safe_load(RECIPE.read_text())


def check_arm64_image(path: Path) -> None:
    problem = image_problem(path)
    if problem:
        raise UserError(f"kernel {path}: {problem}")


@dataclass
class KernelImage:
    image: Path
    modules_cpio: Path | None
    release: str
    label: str
    manifest: dict[str, Any]
    #: Modules L1 loads once ready (power button, entropy), with their `order`.
    late_modules: Path | None = None


class Tools(Entry):
    """The tools cache entry: L1's Python (l1/ and lab/shared/) and the assembled payloads."""

    @property
    def key(self) -> str:
        return self.manifest["key"]

    def payload(self, name: str) -> tuple[bytes, int]:
        """(the payload's bytes, where its parameter block is)."""
        return (self.path / name).read_bytes(), self.manifest["params_offset"][name]


@dataclass
class Rootfs:
    root: Path
    initramfs: Path
    manifest: dict[str, Any]
    #: L1's root: `root` as a read-only squashfs image on a virtio disk (migratable, so a
    #: ready L1 can be snapshotted; a 9p root would block QEMU's migration).
    image: Path


class Builder:
    def __init__(self, store: Store | None = None, progress: Progress | None = None):
        self.store = store or Store()
        self.progress = progress or Progress(quiet=True)
        self.recipe = load_recipe()

    def current_keys(self, config: LabConfig) -> set[str]:
        """Keys of what this code and recipe build, for every suite: the entries to keep."""
        keys = {content_key(self.rootfs_inputs(config)), content_key(self.tools_inputs())}
        keys.update(content_key(self.kernel_inputs(KernelSpec("suite", suite, suite=suite), config))
                    for suite in SUITES)
        return keys

    def cache_key(self, config: LabConfig) -> str:
        """One key over everything `up` with this config needs from the cache (L1 tools,
        userspace, and a Debian kernel's inputs): CI caches the images under it. A user's
        Image is not part of it: it is copied into the cache on every run."""
        spec = config.kernel_spec
        keys = [content_key(self.tools_inputs()), content_key(self.rootfs_inputs(config))]
        if spec.kind != "image":
            keys.append(content_key(self.kernel_inputs(spec, config)))
        return content_key({"cache_key": keys})[:32]

    # -- kernel -------------------------------------------------------------------------
    def kernel_inputs(self, spec: KernelSpec, config: LabConfig) -> dict[str, Any]:
        # A pinned version may live in SUITE-updates or -security: those are searched too.
        return {"kind": "kernel", "suite": spec.suite, "code": code_digest(),
                "package": spec.package or self.recipe["kernel_package"],
                "modules": self.recipe["modules"], "mirror": config.mirror,
                "updates": config.updates or spec.kind == "debian"}

    def kernel(self, config: LabConfig) -> KernelImage:
        spec = config.kernel_spec
        if spec.kind == "image":
            return self._image_kernel(spec, config)
        inputs = self.kernel_inputs(spec, config)
        what = f"the {spec.suite} kernel image" if spec.kind == "suite" else f"the Debian kernel {spec.text}"
        entry = self._entry("kernel", spec.label, inputs, what,
                            lambda work, step: self._build_kernel(work, spec, inputs, step))
        return _kernel_from_entry(entry)

    def kernel_source(self, config: LabConfig) -> Path:
        """The unpacked Debian source of the kernel `config` boots (lab/builder/source.py),
        fetched once and cached; not keyed by kvmlab's code, so an upgrade keeps it."""
        from lab.builder import source

        if config.kernel_spec.kind == "image":
            raise UserError(f"--kernel {config.kernel_spec.text}: a kernel of your own has no Debian source "
                            "package; give its tree with --src")
        return source.tree_of(self._source_entry(config))

    def _source_entry(self, config: LabConfig) -> Entry:
        from lab.builder import source

        kernel = self.kernel(config)
        inputs = source.inputs_for(kernel.manifest)
        what = f"{inputs['package']} {inputs['version']} (the source of {kernel.release})"
        return self._entry("source", config.kernel_spec.label, inputs, what,
                           lambda work, step: source.build(work, inputs, step))

    def l2_kernel(self, mirror: str = "", updates: bool = False) -> Path:
        """The L2 Linux guests' kernel Image (lab/builder/l2kernel.py): built once from the
        Debian source of trixie's kernel, the same for every L1."""
        from lab.builder import l2kernel, source

        config = dataclasses.replace(load_config(), kernel=l2kernel.SUITE, mirror=mirror, updates=updates)
        src = self._source_entry(config)
        tree, inputs = source.tree_of(src), l2kernel.inputs(src.manifest)
        entry = self._entry("l2kernel", l2kernel.SUITE, inputs, "the L2 Linux guests' kernel (tinyconfig)",
                            lambda work, step: l2kernel.build(work, tree, self.progress, step))
        return entry.path / "Image"

    def selftests(self, config: LabConfig, src: Path | None, jobs: int) -> Entry:
        """The KVM selftests built from `src`, or else from the Debian source of the kernel
        `config` boots (lab/builder/selftests.py); cached by tree and toolchain."""
        from lab.builder import selftests, source

        if src is None:
            entry = self._source_entry(config)
            tree = source.tree_of(entry)
            label = config.kernel_spec.label
            identity: dict[str, Any] = {"package": entry.manifest["package"], "version": entry.manifest["version"],
                                        "tarball_sha256": entry.manifest["tarball_sha256"]}
        else:
            tree = src.expanduser().resolve()
            selftests.check_tree(tree)
            label = "src-" + "".join(c if c.isalnum() or c in "._-" else "-" for c in tree.name)[:40]
            identity = {"files": selftests.tree_digest(tree)}
        inputs = selftests.inputs_for(tree, identity)
        return self._entry("selftests", label, inputs, f"the KVM selftests of {tree}",
                           lambda work, step: selftests.build(work, tree, jobs, step))

    def _image_kernel(self, spec: KernelSpec, config: LabConfig) -> KernelImage:
        """A user's Image (and modules): copied into the cache, keyed by their content."""
        assert spec.path is not None
        check_arm64_image(spec.path)
        release = image_release(spec.path)
        modules_root = find_modules_root(Path(config.modules), release) if config.modules else None
        inputs = {"kind": "kernel", "code": code_digest(), "image": debian.sha256_file(spec.path),
                  "modules_dir": str(modules_root or ""), "modules": self.recipe["modules"],
                  "modules_listing": _listing(modules_root) if modules_root else ""}

        image = spec.path

        def build(work: Path, step) -> dict[str, Any]:
            shutil.copyfile(image, work / "Image")
            artefacts = ["Image"]
            manifest: dict[str, Any] = {"suite": spec.label, "release": release, "image": str(spec.path),
                                        "packages": [], "modules": [], "modules_late": []}
            if modules_root is not None:
                step.update(f"packing modules from {modules_root}")
                manifest.update(self._pack_modules(modules_root, work))
                artefacts.append("modules.cpio")
            config_file = image.parents[3] / ".config" if len(image.parents) > 3 else None
            if config_file is not None and image.parts[-4:-1] == ("arch", "arm64", "boot") \
                    and config_file.is_file():
                shutil.copyfile(config_file, work / "config")
                artefacts.append("config")
            manifest["artefacts"] = {name: debian.sha256_file(work / name) for name in artefacts}
            return manifest

        entry = self._entry("kernel", spec.label, inputs, f"the kernel {spec.path}", build)
        return _kernel_from_entry(entry)

    def _entry(self, kind: str, label: str, inputs: dict[str, Any], what: str, build) -> Entry:
        """The cached entry for `inputs`, built (with progress) only when missing."""
        key = content_key(inputs)
        cached = self.store.get(kind, label, key)
        if cached is not None:
            return cached
        with self.progress.step(f"Building {what}") as step:
            entry, _ = self.store.build(kind, label, key, inputs, lambda work: build(work, step))
        return entry

    def _build_kernel(self, work: Path, spec: KernelSpec, inputs: dict[str, Any], step) -> dict[str, Any]:
        suite = spec.suite
        debs = debian.fetch(suite, [inputs["package"]], work / "debs", mirror=inputs["mirror"],
                            updates=inputs["updates"], step=step, log=work / "fetch.log")
        # Only the kernel's own packages: linux-image-V (Image and modules up to trixie),
        # and from sid on linux-binary-V, linux-modules-V, linux-base-V (config).
        kernel_debs = [d for d in debs if d.name.startswith(("linux-image-", "linux-binary-", "linux-modules-"))
                       or (d.name.startswith("linux-base-") and d.name[len("linux-base-"):][:1].isdigit())]
        unpacked = work / "unpacked"
        debian.unpack(kernel_debs, unpacked, step)
        modules_root = _only(list(unpacked.glob("lib/modules/*")) + list(unpacked.glob("usr/lib/modules/*")),
                             f"a lib/modules/VERSION directory in the {spec.text} kernel packages")
        release = modules_root.name
        image = _only([p for p in [unpacked / f"boot/vmlinuz-{release}", modules_root / "vmlinuz"] if p.exists()],
                      f"the kernel Image (boot/vmlinuz-{release} or {modules_root.name}/vmlinuz)")
        check_arm64_image(image)
        config_file = next((p for p in [unpacked / f"boot/config-{release}", modules_root / "config"]
                            if p.exists()), None)

        step.update("packing modules")
        packed = self._pack_modules(modules_root, work)
        shutil.copyfile(image, work / "Image")
        artefacts = ["Image", "modules.cpio"]
        if config_file is not None:
            shutil.copyfile(config_file, work / "config")
            artefacts.append("config")
        shutil.rmtree(work / "unpacked")
        shutil.rmtree(work / "debs")
        return {
            "suite": suite,
            "spec": spec.text,
            "release": release,
            "packages": [d.as_dict() for d in kernel_debs],
            **packed,
            "artefacts": {name: debian.sha256_file(work / name) for name in artefacts},
        }

    def _pack_modules(self, modules_root: Path, work: Path) -> dict[str, Any]:
        """work/modules.cpio (what the initramfs loads) and work/late/ (the optional modules)."""
        tree = ModuleTree(modules_root)
        wanted = self.recipe["modules"]
        root = tree.load_order(wanted["root"])
        share = [m for m in tree.load_order(wanted["share"]) if m not in root]
        if any(d in {m.name for m in root} for m in share for d in m.depends):
            root, share = root + share, []  # the share's modules need the root's: one chain
        modules = tree.load_order(wanted["root"] + wanted["share"], wanted["optional"])
        # The initramfs loads two chains at once: `root` (what mounts L1's root) and
        # `share` (9p), each file one line per dependency depth whose modules load in
        # parallel. The optional modules go to late/, copied into the lab's share at `up`
        # and loaded by L1 once it is ready.
        writer = CpioWriter()
        late = work / "late"
        late.mkdir()
        chains: dict[str, dict[int, list[str]]] = {"root": {}, "share": {}}
        late_names: list[str] = []
        depth: dict[str, int] = {}
        for i, module in enumerate(modules):  # dependencies come first in `modules`
            depth[module.name] = 1 + max((depth.get(d, 0) for d in module.depends), default=0)
            name = f"{i:02d}-{module.name}.ko"
            chain = "root" if module in root else "share" if module in share else None
            if chain:
                writer.add_bytes(f"lib/modules/kvmlab/{name}", decompress(module.path))
                chains[chain].setdefault(depth[module.name], []).append(name)
            else:
                (late / name).write_bytes(decompress(module.path))
                late_names.append(name)
        for chain, levels in chains.items():
            writer.add_bytes(f"lib/modules/kvmlab/{chain}",
                             "".join(" ".join(levels[d]) + "\n" for d in sorted(levels)).encode())
        (late / "order").write_text("".join(n + "\n" for n in late_names))
        (work / "modules.cpio").write_bytes(writer.getvalue())
        early = root + share
        return {"modules": [m.name for m in modules], "modules_late": [m.name for m in modules if m not in early]}

    # -- tools (what runs in L1, and the L2 payloads) ------------------------------------
    def tools_inputs(self) -> dict[str, Any]:
        return {"kind": "tools", "code": code_digest(), "l1": hash_files(L1_PYTHON), "shared": hash_files(SHARED),
                "l2": hash_files(L2_IMAGE_DIR),
                "payload": hashlib.sha256(Path(payload.__file__).read_bytes()).hexdigest()}

    def tools(self) -> Tools:
        entry = self._entry("tools", "l1", self.tools_inputs(), "the L1 tools and guest payloads", _build_tools)
        return Tools(entry.path, entry.manifest)  # the same entry, with the payload helpers

    # -- rootfs -------------------------------------------------------------------------
    def rootfs_inputs(self, config: LabConfig) -> dict[str, Any]:
        return {"kind": "rootfs", "suite": config.userspace_suite, "code": code_digest(),
                "packages": self.recipe["packages"] + config.extra_packages,
                "applets": self.recipe["initramfs_applets"],
                "initramfs": hash_files(L1_IMAGE_DIR / "initramfs"), "overlay": hash_files(L1_IMAGE_DIR / "rootfs"),
                "helpers": hash_files(L1_IMAGE_DIR / "src"),
                "mirror": config.mirror, "updates": config.updates}

    def rootfs(self, config: LabConfig) -> Rootfs:
        inputs = self.rootfs_inputs(config)
        entry = self._entry("rootfs", config.userspace_suite, inputs, f"the {config.userspace_suite} L1 userspace",
                            lambda work, step: rootfs_image.build(work, config.userspace_suite, inputs["packages"],
                                                                  config.mirror, config.updates,
                                                                  self.recipe["initramfs_applets"], step))
        return _rootfs_from_entry(entry)


def _build_tools(work: Path, step) -> dict[str, Any]:
    step.update("assembling the guest payloads")
    offsets = payload.build(work)
    no_cache = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(L1_PYTHON, work / "l1", ignore=no_cache)
    # The contract and its helpers, the same files the host imports, under the same names
    # (lab.shared.contract); lab/__init__.py is empty, so nothing else of the host comes along.
    (work / "lab").mkdir()
    (work / "lab" / "__init__.py").write_text("")
    shutil.copytree(SHARED, work / "lab" / "shared", ignore=no_cache)
    return {"params_offset": offsets, "artefacts": hash_files(work)}


def _only(paths: list[Path], what: str) -> Path:
    if len(paths) != 1:
        found = ", ".join(str(p) for p in paths) or "none"
        raise ImageError(f"expected exactly one {what}, found {found}")
    return paths[0]


def find_modules_root(path: Path, release: str) -> Path:
    """lib/modules/RELEASE for `path`: that directory itself, or an INSTALL_MOD_PATH (or
    lib/modules) holding it. The release must be the Image's, or no module would load."""
    for candidate in (path, path / release, path / "lib/modules" / release):
        if (candidate / "modules.order").exists() or (candidate / "modules.dep").exists():
            if release and candidate.name != release and (candidate.parent.name == "modules"):
                raise UserError(f"modules {candidate}: built for {candidate.name}, but the Image is {release}; "
                                "give the modules of this kernel (make modules_install INSTALL_MOD_PATH=DIR)")
            return candidate
    found = sorted(p.name for p in (path / "lib/modules").glob("*")) if (path / "lib/modules").is_dir() else []
    hint = f" (it has {', '.join(found)}; the Image is {release})" if found else ""
    raise UserError(f"modules {path}: no lib/modules/{release or 'RELEASE'} with a modules.order in it{hint}; "
                    "give the directory `make modules_install INSTALL_MOD_PATH=DIR` wrote")


def _listing(root: Path) -> str:
    """A digest of a modules tree's file names, sizes and times (not contents: it can be large)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            st = path.stat()
            digest.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _kernel_from_entry(entry: Entry) -> KernelImage:
    modules = entry.file("modules.cpio")
    late = entry.file("late")
    return KernelImage(entry.file("Image"), modules if modules.exists() else None, entry.manifest["release"],
                       entry.manifest["suite"], entry.manifest, late if late.is_dir() else None)


def _rootfs_from_entry(entry: Entry) -> Rootfs:
    return Rootfs(entry.file("root"), entry.file("initramfs.cpio"), entry.manifest, entry.file("root.sqfs"))
