"""Any kernel, for real: Debian's 5.10 next to 6.12 in a matrix, 6.12 with 4 KiB pages next
to its 16 KiB flavour, a bisection over a
synthetic history whose commits name a Debian kernel to boot, and an Image built by
`kvmlab kernel build` from the source of sid's kernel (`kvmlab kernel source`) booted as a
nested L1 with no modules, whose debugfs dump of the shadow stage-2 the verdict reads."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from lab.core.paths import CONFIGS_DIR, SUITES_DIR
from tests.conftest import kvmlab, qemu_pids_in

pytestmark = pytest.mark.boot


def test_matrix_marks_the_rows_where_kernels_map_differently(tmp_path, private_runtime):
    # fork-child-munmap: pages on 5.10, blocks since the 5.15 series (the scenario says why);
    # anon-thp-always: blocks on both.
    thp = SUITES_DIR / "thp"
    run = kvmlab("matrix", str(thp / "fork-child-munmap.yaml"), str(thp / "anon-thp-always.yaml"),
                 "--kernels", "bullseye,trixie", "--results", str(tmp_path), "--json", str(tmp_path / "m.json"),
                 timeout=900)
    assert run.returncode == 0, run.stdout.decode()[-3000:] + run.stderr.decode()[-2000:]
    document = json.loads((tmp_path / "m.json").read_text())
    matrix = json.loads(next(tmp_path.glob("*/matrix.json")).read_text())
    # --json: matrix.json, plus each kernel's whole run
    assert {k: document[k] for k in matrix} == {**matrix, "results_dir": document["results_dir"]}
    assert document["kind"] == "matrix" and sorted(document["runs"]) == ["bullseye", "trixie"]
    assert len(document["runs"]["trixie"]["scenarios"]) == 2
    assert [k["release"][:5] for k in matrix["kernels"]] == ["5.10.", "6.12."]
    rows = {r["name"]: r for r in matrix["scenarios"]}
    assert rows["fork-child-munmap"]["differs"] and not rows["anon-thp-always"]["differs"]
    assert rows["fork-child-munmap"]["cells"]["bullseye"]["signature"] == "8 page"
    assert rows["fork-child-munmap"]["cells"]["trixie"]["signature"] == "8 block"
    assert {c["signature"] for c in rows["anon-thp-always"]["cells"].values()} == {"32 block"}
    assert matrix["differing"] == ["fork-child-munmap"] and matrix["passed"]
    for kernel in matrix["kernels"]:
        assert (Path(kernel["results_dir"]) / "summary.json").exists()
    out = run.stdout.decode()
    assert "≠" in out and "1 of 2 scenarios differ between kernels (fork-child-munmap)" in out
    assert qemu_pids_in(private_runtime / "labs") == []


def test_a_16k_page_kernel_maps_in_32m_regions_and_says_na_to_4k_scenarios(tmp_path, private_runtime):
    # Debian's arm64-16k flavour next to the 4 KiB one: THP blocks are 32 MiB, 2 MiB hugetlb
    # pages are contiguous PTEs that KVM maps as 16 KiB pages, and a scenario written for the
    # other granule is n/a with the reason (docs/stage2-sizing.md, D9).
    thp, g16 = SUITES_DIR / "thp", SUITES_DIR / "granule-16k"
    run = kvmlab("matrix", str(thp / "anon-thp-always.yaml"), str(thp / "hugetlb-2m.yaml"),
                 str(g16 / "hugetlb-2m-contpte-16k.yaml"), "--kernels", "trixie,trixie-16k",
                 "--results", str(tmp_path), timeout=900)
    assert run.returncode == 0, run.stdout.decode()[-3000:] + run.stderr.decode()[-2000:]
    matrix = json.loads(next(tmp_path.glob("*/matrix.json")).read_text())
    assert [k["release"].endswith("-arm64-16k") for k in matrix["kernels"]] == [False, True]
    cells = {r["name"]: {k: (c["status"], c["signature"]) for k, c in r["cells"].items()} for r in matrix["scenarios"]}
    assert cells["anon-thp-always"] == {"trixie": ("pass", "32 block"), "trixie-16k": ("pass", "2 block")}
    assert cells["hugetlb-2m"]["trixie"] == ("pass", "16 block") and cells["hugetlb-2m"]["trixie-16k"][0] == "n/a"
    assert cells["hugetlb-2m-contpte-16k"]["trixie-16k"] == ("pass", "2 page")
    assert cells["hugetlb-2m-contpte-16k"]["trixie"][0] == "n/a"
    verdict = json.loads(next(tmp_path.glob("*/trixie-16k/hugetlb-2m-contpte-16k/verdict.json")).read_text())
    assert any("2/2 regions mapped as 16 KiB pages (2048 faults each)" in r for r in verdict["reasons"]), verdict


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(repo)}).stdout.strip()


def test_bisect_finds_the_commit_that_switches_kernels(tmp_path, private_runtime):
    # A history whose "build" prints the Debian kernel a commit names; one commit does not
    # build. The scenario says what 5.10 did (pages), as a bug report would.
    repo = tmp_path / "linux"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commits = {}
    for i, kernel in enumerate(["bullseye", "bullseye", "bullseye", "broken", "bullseye", "trixie", "trixie"]):
        (repo / "KERNEL").write_text(kernel + "\n")
        (repo / "n").write_text(f"{i}\n")
        git(repo, "add", "KERNEL", "n")
        git(repo, "commit", "-q", "-m", f"step {i}: {kernel}")
        commits[i] = git(repo, "rev-parse", "HEAD")
    scenario = yaml.safe_load((SUITES_DIR / "thp/fork-child-munmap.yaml").read_text())
    scenario["expect"]["regions"] = [{"mapping": "page", "faults": [512, 514]}]
    (tmp_path / "fork-child-pages.yaml").write_text(yaml.safe_dump(scenario))
    build = 'k=$(cat KERNEL); echo "building $k" >&2; [ "$k" != broken ] && echo "$k"'
    results = tmp_path / "results"
    run = kvmlab("bisect", "--src", str(repo), "--good", commits[0], "--bad", "main",
                 "--scenario", str(tmp_path / "fork-child-pages.yaml"), "--build-cmd", build,
                 "--name", "t-bisect", "--results", str(results), timeout=1200)
    out = run.stdout.decode()
    assert run.returncode == 0, out[-4000:] + run.stderr.decode()[-2000:]
    report = json.loads(next(results.glob("*/bisect.json")).read_text())
    assert report["result"] == "found" and report["first_bad"] == commits[5], out
    assert f"First bad commit: {commits[5]} step 5: trixie" in out
    assert report["evidence_good"]["release"].startswith("5.10.") and report["evidence_good"]["status"] == "pass"
    assert report["evidence_bad"]["release"].startswith("6.12.") and report["evidence_bad"]["status"] == "fail"
    assert "8 block" in report["evidence_bad"]["observed"]
    tested = {s["commit"]: s for s in report["steps"]}
    assert tested[commits[3]]["exit"] == 125 and tested[commits[3]]["status"] == "build failed"
    # The tree is as it was: on main, no bisection left behind.
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert not (repo / ".git/BISECT_START").exists()
    assert qemu_pids_in(private_runtime / "labs") == []


def test_bisect_refuses_ends_that_are_not_good_and_bad(tmp_path):
    repo = tmp_path / "linux"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for i in range(2):
        (repo / "KERNEL").write_text("trixie\n")
        (repo / "n").write_text(str(i))
        git(repo, "add", "KERNEL", "n")
        git(repo, "commit", "-q", "-m", f"c{i}")
    run = kvmlab("bisect", "--src", str(repo), "--good", "HEAD~1", "--bad", "HEAD", "--scenario", "fork-child-munmap",
                 "--build-cmd", "cat KERNEL", "--judge", "observed", "--name", "t-bisect2",
                 "--results", str(tmp_path / "r"), timeout=600)
    assert run.returncode == 1
    assert "--bad HEAD is good" in run.stderr.decode()
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"


def test_bisect_bad_input_is_one_line(tmp_path):
    run = kvmlab("bisect", "--src", str(tmp_path), "--good", "a", "--bad", "b", "--scenario", "no-such-scenario")
    assert run.returncode == 2
    err = run.stderr.decode().strip()
    assert err.startswith("kvmlab: error: --scenario no-such-scenario: no scenario of that name") and "\n" not in err


PTDUMP = CONFIGS_DIR / "kernel" / "ptdump-stage2.config"


@pytest.fixture(scope="module")
def built_kernel(tmp_path_factory):
    """Debian's source of sid's kernel (`kvmlab kernel source`: linux-source-7.2 at the
    version sid's kernel has), built by `kvmlab kernel build` on tinyconfig + kvmlab's
    fragment + ptdump-stage2.config (KVM's stage-2 tables in debugfs)."""
    fetched = kvmlab("-q", "kernel", "source", "--kernel", "sid", timeout=1800)
    assert fetched.returncode == 0, fetched.stderr.decode()[-3000:]
    src = Path(fetched.stdout.decode().strip())
    again = kvmlab("-q", "kernel", "source", "--kernel", "sid")  # cached: found, not fetched again
    assert (again.returncode, again.stdout.decode().strip()) == (0, str(src))
    out = tmp_path_factory.mktemp("build")
    run = kvmlab("-q", "kernel", "build", "--src", str(src), "--out", str(out), "--base", "tinyconfig",
                 "--config-fragment", str(PTDUMP), timeout=3000)
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    return src, out, run.stdout.decode()


def test_kernel_build_makes_an_image_with_the_fragments(built_kernel):
    src, out, stdout = built_kernel
    image = out / "arch/arm64/boot/Image"
    assert f"Boot it: kvmlab up --kernel {out}" in stdout
    assert image.read_bytes()[0x38:0x3C] == b"ARM\x64"
    config = (out / ".config").read_text()
    for option in ("CONFIG_KVM=y", "CONFIG_9P_FS=y", "CONFIG_VIRTIO_CONSOLE=y", "CONFIG_PTDUMP_STAGE2_DEBUGFS=y",
                   "# CONFIG_BASE_SMALL is not set", "# CONFIG_MODULES is not set"):
        assert option in config
    record = json.loads((out / "kvmlab-build.json").read_text())
    assert record["not_in_this_tree"] == ["CONFIG_BASE_FULL"]  # gone since 6.9; BASE_SMALL is off instead
    assert record["base"] == "tinyconfig" and record["release"].startswith("7.")
    assert not (src / ".config").exists()  # built out of tree
    # The source is Debian's linux-source-X.Y at the version of sid's kernel package.
    source = json.loads((src.parent / "manifest.json").read_text())
    upstream = record["release"].split("-")[0].split("+")[0]
    assert source["package"] == "linux-source-" + ".".join(upstream.split(".")[:2])
    assert source["version"].split("-")[0] == upstream and (src / "arch/arm64/kvm/nested.c").is_file()


@pytest.fixture(scope="module")
def built_lab(built_kernel, private_runtime):
    """The built kernel as a nested L1 (7.2 runs guest hypervisors)."""
    _, out, _ = built_kernel
    up = kvmlab("up", "--name", "built", "--nested", "--kernel", str(out))
    try:
        assert up.returncode == 0, up.stderr.decode()[-3000:]
        yield out
    finally:
        assert kvmlab("down", "--name", "built").returncode == 0
        assert qemu_pids_in(private_runtime / "labs/built") == []


def test_a_built_kernel_runs_the_lab_without_modules(built_lab, tmp_path, private_runtime):
    state = json.loads((private_runtime / "labs/built/lab.json").read_text())
    assert state["kernel"]["label"] == "image-" + built_lab.name
    # No module support at all (no /proc/modules), KVM built in.
    ran = kvmlab("exec", "--name", "built", "sh", "-c", "test -e /proc/modules && echo modules || echo none; "
                 "zcat /proc/config.gz | grep -c '^CONFIG_KVM=y'")
    assert ran.stdout.decode().split() == ["none", "1"]
    # The scenarios that need shmem THP and gigantic hugetlb pages, which the fragment enables.
    test = kvmlab("test", "thp", "--name", "built", "-k", "*memfd-s*", "--results", str(tmp_path), timeout=600)
    assert test.returncode == 0, test.stdout.decode()[-3000:]
    test = kvmlab("test", "thp", "--name", "built", "-k", "hugetlb-32m", "--results", str(tmp_path), timeout=600)
    assert test.returncode == 0, test.stdout.decode()[-3000:]


def test_kvms_own_dump_of_the_shadow_stage2_agrees_with_the_faults(built_lab, tmp_path):
    """On a kernel with CONFIG_PTDUMP_STAGE2_DEBUGFS the verdict reads KVM's dump of each
    shadow MMU (debugfs) and checks its leaf sizes against what the faults said: here L2's
    2M and 4K leaves in one memslot, so shadow blocks and shadow pages side by side."""
    run = kvmlab("test", "--name", "built", str(SUITES_DIR / "nested/shadow-mixed-leaves.yaml"),
                 "--results", str(tmp_path / "r"), "--json", str(tmp_path / "r.json"))
    (only,) = json.loads((tmp_path / "r.json").read_text())["scenarios"]
    assert only["status"] == "pass", run.stdout.decode()[-3000:]
    verdict = json.loads((Path(only["artefacts"]) / "verdict.json").read_text())
    check = next(c for c in verdict["checks"] if c["check"] == "debugfs")
    assert check["ok"] and check["counts"]["differ"] == 0
    assert check["counts"]["agree"] == 8, check  # 4 regions of shadow blocks, 4 of shadow pages
