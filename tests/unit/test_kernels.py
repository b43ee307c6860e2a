"""--kernel values, the kernel config check and the matrix's comparison: pure logic."""

from __future__ import annotations

import pytest

from lab.kernels import spec as kspec
from lab.kernels.source import FRAGMENT, kconfig_symbols, read_config, unmet
from lab.orchestrate.matrix import KernelColumn, rows, signature


@pytest.mark.parametrize("text, kind, suite, package, label", [
    ("trixie", "suite", "trixie", "", "trixie"),
    ("bookworm:6.1.176-1", "debian", "bookworm", "linux-image-arm64=6.1.176-1", "bookworm-6.1.176-1"),
    ("6.1.176-1", "debian", "bookworm", "linux-image-arm64=6.1.176-1", "bookworm-6.1.176-1"),
    ("5.10.223-1", "debian", "bullseye", "linux-image-arm64=5.10.223-1", "bullseye-5.10.223-1"),
    ("6.1.0-50", "debian", "bookworm", "linux-image-6.1.0-50-arm64", "bookworm-6.1.0-50"),
    ("6.12.117+deb13", "debian", "trixie", "linux-image-6.12.117+deb13-arm64", "trixie-6.12.117-deb13"),
    ("7.2.13+deb14-arm64", "debian", "sid", "linux-image-7.2.13+deb14-arm64", "sid-7.2.13-deb14"),
    ("linux-image-5.10.0-32-arm64", "debian", "bullseye", "linux-image-5.10.0-32-arm64", "bullseye-5.10.0-32"),
    ("sid:7.2.13-1", "debian", "sid", "linux-image-arm64=7.2.13-1", "sid-7.2.13-1"),
    ("trixie-16k", "debian", "trixie", "linux-image-arm64-16k", "trixie-16k"),
    ("sid-16K", "debian", "sid", "linux-image-arm64-16k", "sid-16k"),
    ("6.12.117+deb13-arm64-16k", "debian", "trixie", "linux-image-6.12.117+deb13-arm64-16k",
     "trixie-6.12.117-deb13-16k"),
])
def test_debian_kernels(text, kind, suite, package, label):
    spec = kspec.parse(text)
    assert (spec.kind, spec.suite, spec.package, spec.label) == (kind, suite, package, label)
    assert kspec.is_debian(text)


def image(path, banner=b"Linux version 6.1.192 (kvmlab@host) #1 SMP\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 0x38 + b"ARM\x64" + b"\0" * 8 + banner)
    return path


def test_an_image_a_build_directory_and_its_release(tmp_path):
    built = image(tmp_path / "out/arch/arm64/boot/Image")
    for text in (str(built), str(tmp_path / "out")):
        spec = kspec.parse(text)
        assert (spec.kind, spec.path, spec.label) == ("image", built, "image-out")
    assert kspec.image_release(built) == "6.1.192"
    assert kspec.parse("Image", base=built.parent).path == built  # relative to a config's folder
    assert not kspec.is_debian(str(built))


@pytest.mark.parametrize("text, words", [
    ("", "an empty kernel"),
    ("jessie", "not a Debian suite, version or an existing file"),
    ("bookworm:latest", "after 'bookworm:' give a version"),
    ("bookworm-16k", "no 16k arm64 kernel in bookworm; it has one in trixie and sid"),
    ("./nope/Image", "no such file"),
])
def test_bad_kernels_say_what_is_accepted(text, words):
    with pytest.raises(ValueError, match=words):
        kspec.parse(text)


def test_files_that_are_not_images(tmp_path):
    (tmp_path / "vmlinuz").write_bytes(b"\x1f\x8b" + b"\0" * 100)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="gzip-compressed"):
        kspec.parse(str(tmp_path / "vmlinuz"))
    with pytest.raises(ValueError, match="no arch/arm64/boot/Image"):
        kspec.parse(str(tmp_path / "empty"))


def test_the_fragment_asks_for_what_the_lab_needs_built_in():
    wanted = read_config(FRAGMENT)
    for option in ("CONFIG_KVM", "CONFIG_TRANSPARENT_HUGEPAGE", "CONFIG_HUGETLBFS", "CONFIG_FTRACE",
                   "CONFIG_VIRTIO_PCI", "CONFIG_VIRTIO_CONSOLE", "CONFIG_NET_9P_VIRTIO", "CONFIG_9P_FS",
                   "CONFIG_BASE_FULL", "CONFIG_CMA"):
        assert wanted[option] == "y", option
    assert wanted["CONFIG_MODULES"] == "n"


def test_unmet_options_are_named(tmp_path):
    config = tmp_path / ".config"
    config.write_text("CONFIG_KVM=y\n# CONFIG_9P_FS is not set\nCONFIG_MODULES=y\nCONFIG_HZ=250\n")
    fragment = {"CONFIG_KVM": "y", "CONFIG_9P_FS": "y", "CONFIG_MODULES": "n", "CONFIG_HZ": "250",
                "CONFIG_GONE": "y"}
    assert unmet(fragment, read_config(config)) == ["CONFIG_9P_FS=y (got n)", "CONFIG_MODULES=n (got y)",
                                                    "CONFIG_GONE=y (got n)"]


def test_a_symbol_the_tree_does_not_define_is_skipped_and_an_int_zero_is_off(tmp_path):
    # BASE_FULL is gone since 6.9 and BASE_SMALL a bool; up to 6.8 BASE_SMALL is an int.
    (tmp_path / "init").mkdir()
    (tmp_path / "init/Kconfig").write_text("config BASE_SMALL\n\tbool\nmenuconfig KVM\n\tbool\n")
    (tmp_path / "Kconfig").write_text('source "init/Kconfig"\n')
    known = kconfig_symbols(tmp_path)
    assert known == {"CONFIG_BASE_SMALL", "CONFIG_KVM"}
    fragment = {"CONFIG_BASE_FULL": "y", "CONFIG_BASE_SMALL": "n", "CONFIG_KVM": "y"}
    assert unmet(fragment, {"CONFIG_KVM": "y"}, known) == []
    assert unmet(fragment, {"CONFIG_KVM": "y", "CONFIG_BASE_SMALL": "y"}, known) == ["CONFIG_BASE_SMALL=n (got y)"]
    assert unmet({"CONFIG_BASE_SMALL": "n"}, {"CONFIG_BASE_SMALL": "0"}) == []


def scenario(name, status, observed, checks=None, expected="block"):
    return {"name": name, "status": status, "observed": observed, "checks": checks or [], "expected": expected,
            "reasons": []}


def test_signature_drops_fault_counts_and_ratio_noise():
    assert signature(scenario("a", "pass", "32 block (1 fault each)")) == "32 block"
    assert signature(scenario("a", "fail", "phase 0: 8 block (1 fault each); phase 1: 8 split (512 faults each)")) \
        == "phase 0: 8 block; phase 1: 8 split"
    ratio = [{"check": "fault_ratio", "ok": True}]
    assert signature(scenario("r", "pass", "never/always = 444.9x (16907/38 faults)", ratio, "ratio >= 4")) \
        == signature(scenario("r", "pass", "never/always = 303.6x (5161/17 faults)", ratio, "ratio >= 4"))
    assert signature(scenario("s", "skip", "")) == "skip"


def column(label, scenarios):
    return KernelColumn(label, label, config=None, summary={"scenarios": scenarios})


def test_rows_mark_where_kernels_differ():
    old = column("bullseye", [scenario("same", "pass", "8 block (1 fault each)"),
                              scenario("moved", "pass", "8 page (512 faults each)"),
                              scenario("noisy", "pass", "32 page (591-1729 faults each)")])
    new = column("trixie", [scenario("same", "pass", "8 block (1-2 faults each)"),
                            scenario("moved", "pass", "8 block (1 fault each)"),
                            scenario("noisy", "pass", "32 page (599-1916 faults each)")])
    table = {r["name"]: r for r in rows([old, new])}
    assert [n for n, r in table.items() if r["differs"]] == ["moved"]
    assert table["moved"]["cells"]["bullseye"]["signature"] == "8 page"
    # A scenario missing from one kernel's run (that kernel's lab died), skipped or in
    # error there is not a difference: it is marked unmeasured, the others still compared.
    died = column("sid", [scenario("same", "pass", "8 block (1 fault each)"),
                          scenario("moved", "error", "")])
    table = {r["name"]: r for r in rows([old, new, died])}
    assert [n for n, r in table.items() if r["differs"]] == ["moved"]
    assert {n: r["unmeasured"] for n, r in table.items()} == {"same": [], "moved": ["sid"], "noisy": ["sid"]}
    # n/a is compared: the kernel lacks what the scenario needs.
    lacks = column("bullseye", [scenario("same", "n/a", "")])
    assert rows([lacks, new])[0]["differs"] and rows([lacks, new])[0]["unmeasured"] == []


def test_smaps_expectations_by_kernel_version():
    from lab.scenarios import model, suites

    scenario = model.load(suites.suites()["thp"] / "memfd-misaligned-first-touch.yaml")
    assert scenario.smaps_for("5.10.0-32-arm64") == {"ShmemPmdMapped": (16 << 20, 16 << 20)}
    assert scenario.smaps_for("6.1.0-50-arm64") == {"ShmemPmdMapped": (16 << 20, 16 << 20)}
    assert scenario.smaps_for("6.12.117+deb13-arm64") == {"ShmemPmdMapped": (0, 0)}
    assert scenario.smaps_for("7.2.13+deb14-arm64") == {"ShmemPmdMapped": (0, 0)}


def test_kvm_modes_make_a_column_per_kernel_and_mode_with_its_own_lab():
    from lab.config import load_config
    from lab.core.errors import UserError
    from lab.orchestrate.matrix import plan

    columns = plan(["trixie", "sid"], lambda k, name: load_config(None, {"lab.kernel": k, "lab.name": name}),
                   ["vhe", "nested"])
    assert [(c.label, c.config.name, c.config.kvm_mode) for c in columns] == [
        ("trixie-vhe", "matrix-trixie-vhe", "vhe"), ("trixie-nested", "matrix-trixie-nested", "nested"),
        ("sid-vhe", "matrix-sid-vhe", "vhe"), ("sid-nested", "matrix-sid-nested", "nested")]
    assert [c.label for c in plan(["trixie"], lambda k, n: load_config(None, {"lab.name": n}))] == ["trixie"]
    with pytest.raises(UserError, match="given twice"):
        plan(["trixie", "trixie"], lambda k, n: load_config(None, {"lab.name": n}), ["nvhe"])


@pytest.mark.parametrize("targets, labels", [
    (["nested"], ["trixie-nested", "sid-nested"]),  # only nested scenarios: nested labs
    (["thp"], ["trixie", "sid"]),
    (["--kvm-modes", "vhe", "nested"], ["trixie-vhe", "sid-vhe"]),  # the modes asked for
])
def test_a_matrix_of_nested_scenarios_brings_its_labs_up_nested(monkeypatch, targets, labels):
    from click.testing import CliRunner

    from lab.cli import main
    from lab.orchestrate import matrix as mx

    seen = []

    def run(columns, *args, **kwargs):
        seen.extend(c.label for c in columns)
        raise SystemExit(3)

    monkeypatch.setattr(mx, "run", run)
    result = CliRunner().invoke(main, ["-q", "matrix", "--kernels", "trixie,sid", *targets])
    assert result.exit_code == 3, result.output
    assert seen == labels


def test_a_matrix_takes_down_only_the_labs_it_brought_up(monkeypatch, tmp_path):
    # Another matrix, started at the same time, brings up a lab of the same name (matrix-sid)
    # after this one checked: this run's sid column fails, and leaves that lab alone.
    from types import SimpleNamespace

    from lab.config import load_config
    from lab.core.errors import LabBusy
    from lab.core.progress import Progress
    from lab.orchestrate import matrix as mx

    up, downs = {}, []

    class FakeLab:
        def __init__(self, name, progress=None):
            self.name = name

        def is_up(self):
            return self.name in up

        def pid(self):
            return up.get(self.name)

        def running(self):
            return self.name in up

        def up(self, config, builder=None):
            if self.name in up:
                raise LabBusy(f"lab {self.name!r} is already up")
            up[self.name] = 100 + len(up)
            up.setdefault("matrix-sid", 999)  # the other run's lab appears meanwhile
            return SimpleNamespace(release="6.12.0", seconds=1.0)

        def down(self, timeout=None):
            downs.append(self.name)
            up.pop(self.name)

    builder = SimpleNamespace(tools=lambda: None, rootfs=lambda c: None, kernel=lambda c: SimpleNamespace(release="x"))
    monkeypatch.setattr(mx, "Lab", FakeLab)
    monkeypatch.setattr(mx, "Builder", lambda **kw: builder)
    monkeypatch.setattr(mx, "Runner", lambda *a, **kw: SimpleNamespace(run=lambda s: {"passed": True, "scenarios": []}))
    columns = mx.plan(["trixie", "sid"], lambda k, name: load_config(None, {"lab.kernel": k, "lab.name": name}))
    mx.run(columns, [], ["thp"], tmp_path, 1, Progress(quiet=True), lambda text: None)
    assert downs == ["matrix-trixie"] and up == {"matrix-sid": 999}
    assert "already up" in columns[1].error
    # A matrix started while that lab runs takes labs of other names, and runs every column.
    said = []
    columns = mx.plan(["trixie", "sid"], lambda k, name: load_config(None, {"lab.kernel": k, "lab.name": name}))
    mx.run(columns, [], ["thp"], tmp_path / "second", 1, Progress(quiet=True), said.append)
    assert [c.config.name for c in columns] == ["matrix2-trixie", "matrix2-sid"]
    assert [c.error for c in columns] == ["", ""] and up == {"matrix-sid": 999}
    assert said[0].startswith("labs matrix-sid are in use")


def test_with_labs_at_once_the_longest_expected_column_starts_first():
    from lab.orchestrate.matrix import longest_first
    from lab.scenarios.model import Scenario

    def s(name, kernels=None):
        return Scenario(name=name, description="", path=None, kernels=kernels)

    scenarios = [s("everywhere"), s("new-only", ">=6.8"), s("old-only", "<6.0")]
    seconds = {"everywhere": 10.0, "new-only": 30.0, "old-only": 5.0}
    cols = [KernelColumn(k, k, config=None, release=r) for k, r in
            [("bullseye", "5.10.0-32-arm64"), ("trixie", "6.12.117+deb13-arm64"), ("bookworm", "6.1.0-50-arm64")]]
    assert [c.label for c in longest_first(cols, scenarios, seconds)] == ["trixie", "bullseye", "bookworm"]


@pytest.mark.parametrize("columns, cpus, jobs", [(4, 2, 2), (4, 1, 2), (1, 2, 1), (4, 8, 4), (4, 16, 4), (6, 12, 6)])
def test_a_matrix_runs_two_labs_at_once_by_default_and_one_per_2_cpus_on_big_hosts(columns, cpus, jobs):
    from lab.orchestrate.matrix import default_jobs

    assert default_jobs(columns, cpus) == jobs  # before the host's CPUs and memory cap it


def test_a_matrix_restores_debian_kernels_from_snapshots_unless_told(tmp_path):
    from lab.config import load_config
    from lab.orchestrate import matrix as mx

    image = tmp_path / "Image"
    image.write_bytes(b"\0" * 0x38 + b"ARM\x64" + b"\0" * 4)

    def columns(*kernels, modes=None):
        return mx.plan(list(kernels), lambda k, name: load_config(None, {"lab.kernel": k, "lab.name": name}), modes)

    plain = columns("bullseye", "6.1.0-50", str(image))
    mx.choose_snapshots(plain, None)
    assert [c.config.snapshot for c in plain] == [True, True, False]  # a user's Image boots
    moded = columns("trixie", modes=["vhe", "nested"])
    mx.choose_snapshots(moded, None)
    assert [c.config.snapshot for c in moded] == [True, False]
    told = columns("bullseye", str(image))
    mx.choose_snapshots(told, False)
    assert [c.config.snapshot for c in told] == [False, False]
    mx.choose_snapshots(told, True)
    assert [c.config.snapshot for c in told] == [True, True]
