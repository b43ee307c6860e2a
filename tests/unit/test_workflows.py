"""The GitHub Actions workflow and the composite action, linted with actionlint (and
shellcheck for their scripts): a mistake in either shows up here, not on GitHub."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lab.config import SUITES

ROOT = Path(__file__).parent.parent.parent
WORKFLOW = ROOT / ".github/workflows/kvmlab.yml"
ACTION = ROOT / ".github/actions/kvmlab/action.yml"


def actionlint(*files: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("actionlint")
    assert exe.exists(), "actionlint is a test dependency: scripts/setup installs it into .venv"
    assert shutil.which("shellcheck"), "scripts/setup installs shellcheck (actionlint checks run: scripts with it)"
    return subprocess.run([str(exe), "-oneline", *map(str, files)], cwd=cwd, capture_output=True, text=True, timeout=120)


def action_as_workflow(action: dict) -> dict:
    """actionlint checks workflows, not composite actions: the action's steps become a job
    of a workflow whose dispatch inputs are the action's inputs, so every step (action
    inputs, expressions, shell) is checked the same way."""
    inputs = {name: {"description": spec.get("description", ""), "required": False, "type": "string",
                     "default": spec.get("default", "")} for name, spec in action["inputs"].items()}
    steps = [{k: v for k, v in step.items()} for step in action["runs"]["steps"]]
    return {"name": "composite action kvmlab", "on": {"workflow_dispatch": {"inputs": inputs}},
            "permissions": {"contents": "read"},
            "jobs": {"action": {"runs-on": "ubuntu-24.04",
                                "env": {"GITHUB_ACTION_PATH": "${{ github.workspace }}/.github/actions/kvmlab"},
                                "steps": steps}}}


@pytest.fixture
def lint_tree(tmp_path) -> Path:
    """A copy of the workflow and the action, with the action turned into a workflow."""
    shutil.copytree(ROOT / ".github", tmp_path / ".github")
    action = yaml.safe_load(ACTION.read_text())
    (tmp_path / ".github/workflows/action-as-workflow.yml").write_text(yaml.safe_dump(action_as_workflow(action)))
    # actionlint resolves `uses: ./...` from the repository's root: make the copy one
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    return tmp_path


def test_workflows_lint_clean(lint_tree):
    files = sorted((lint_tree / ".github/workflows").glob("*.yml"))
    assert len(files) == 2
    result = actionlint(*files, cwd=lint_tree)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path, old, new, message", [
    (".github/workflows/kvmlab.yml", "kernel: ${{ matrix.kernel }}", "kernal: ${{ matrix.kernel }}",
     'input "kernal" is not defined in action "kvmlab"'),
    (".github/workflows/action-as-workflow.yml", "path: ~/.cache/kvmlab/images", "paths: ~/.cache/kvmlab/images",
     'input "paths" is not defined in action "actions/cache'),
    (".github/workflows/action-as-workflow.yml", "steps.key.outputs.key", "steps.keys.outputs.key",
     'property "keys" is not defined'),
    (".github/workflows/kvmlab.yml", "image: debian:bookworm", "imag: debian:bookworm",
     'unexpected key "imag" for "container" section'),
    (".github/workflows/kvmlab.yml", "options: --privileged", "option: --privileged",
     'unexpected key "option" for "container" section'),
    (".github/workflows/kvmlab.yml", "container:", "containers:",
     'unexpected key "containers" for "job" section'),
])
def test_the_lint_can_fail(lint_tree, path, old, new, message):
    target = lint_tree / path
    text = target.read_text()
    assert old in text
    target.write_text(text.replace(old, new))
    result = actionlint(target, cwd=lint_tree)
    assert result.returncode == 1 and message in result.stdout, result.stdout


def test_the_workflow_runs_the_action_on_every_debian_kernel():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    job = workflow["jobs"]["thp"]
    assert job["runs-on"].startswith("ubuntu-") and job["strategy"]["fail-fast"] is False
    # in the environment scripts/fresh-check proves: a Debian 12 container
    assert job["container"]["image"] == "debian:bookworm"
    assert job["strategy"]["matrix"]["kernel"] == list(SUITES)
    assert any(step.get("uses") == "./.github/actions/kvmlab" for step in job["steps"])
    # kernels x shards, then one merged report of them all
    shards = job["strategy"]["matrix"]["shard"]
    [action] = [step for step in job["steps"] if step.get("uses") == "./.github/actions/kvmlab"]
    assert action["with"]["args"] == f"--shard ${{{{ matrix.shard }}}}/{len(shards)}" and shards == [1, 2]
    report = workflow["jobs"]["report"]
    assert report["needs"] == "thp" and any("kvmlab report shards/*/results/*" in step.get("run", "")
                                            for step in report["steps"])


def test_the_action_steps_are_the_ci_job_script():
    """The action's shell steps call scripts/ci-job, whose subcommands .ci/run also runs."""
    action = yaml.safe_load(ACTION.read_text())
    commands = [step["run"] for step in action["runs"]["steps"] if "run" in step]
    used = [re.fullmatch(r'"\$GITHUB_ACTION_PATH/../../../scripts/ci-job" (\w+)', c).group(1) for c in commands]
    assert used == ["setup", "key", "run"]
    uses = {step["uses"].split("@")[0] for step in action["runs"]["steps"] if "uses" in step}
    assert uses == {"actions/cache", "actions/upload-artifact"}


def test_scripts_pass_shellcheck():
    assert shutil.which("shellcheck"), "scripts/setup installs shellcheck"
    scripts = [ROOT / "scripts/setup", ROOT / "scripts/ci-job", ROOT / "scripts/fresh-check", ROOT / ".ci/run"]
    result = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_ci_job_key_names_the_images(tmp_path):
    env = {"KVMLAB_KERNEL": "bullseye", "GITHUB_OUTPUT": str(tmp_path / "out")}
    import os

    one = subprocess.run([str(ROOT / "scripts/ci-job"), "key"], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=60)
    assert one.returncode == 0, one.stderr
    assert re.fullmatch(r"[0-9a-f]{32}\n", one.stdout)
    assert (tmp_path / "out").read_text() == f"key={one.stdout}"
    other = subprocess.run([str(ROOT / "scripts/ci-job"), "key"], capture_output=True, text=True,
                           env={**os.environ, "KVMLAB_KERNEL": "sid"}, timeout=60)
    assert other.stdout != one.stdout  # one cache per kernel


def test_ci_proves_the_readme_commands_on_a_fresh_machine():
    """.ci/run is scripts/fresh-check, which runs the README's two commands as written
    (command 1 limited to two scenarios), so the README cannot drift from what CI proves."""
    assert "scripts/fresh-check" in (ROOT / ".ci/run").read_text()
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    command_1, command_2 = [line for line in block.splitlines() if line and not line.startswith("#")][:2]
    check = (ROOT / "scripts/fresh-check").read_text()
    assert f"step command-2 '{command_2} -rfE --durations=25'" in check
    main_job = "kvmlab test thp -k 'anon-thp-*'"
    assert f"step command-1 \"{command_1.split(' && kvmlab test thp')[0]} && {{ {main_job};" in check
