"""The layers of the README's layout table import only downward, the guest side imports
only the standard library and lab.shared, and no private name is used outside its module.
Read from the source (every import, including those inside functions), not from a run."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
#: Bottom to top, as in the README's Layout section. A module may import its own layer
#: and those below it, never one above.
LAYERS = [
    ["lab.shared"],
    ["lab.core"],
    ["lab.analysis"],
    ["lab.kernels"],
    ["lab.config"],
    ["lab.builder"],
    ["lab.machine"],
    ["lab.scenarios", "lab.selftests"],
    ["lab.results"],
    ["lab.orchestrate"],
    ["lab.cli", "lab.pytest_plugin"],
]
#: Private names of the standard library that code may use.
STDLIB_PRIVATE = {"_exit", "_replace", "_asdict", "_fields"}


def layer_of(module: str) -> int | None:
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.append((node.lineno, target, [a.name for a in node.names]))
    return found


LAB_FILES = sorted((ROOT / "lab").rglob("*.py"))
GUEST_FILES = sorted((ROOT / "images").rglob("*.py"))


def test_every_lab_module_has_a_layer():
    assert not [module_name(p) for p in LAB_FILES if module_name(p) != "lab" and layer_of(module_name(p)) is None]


@pytest.mark.parametrize("path", LAB_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_only_go_down(path):
    mine = layer_of(module_name(path))
    upward = []
    for line, target, names in imports(path):
        if not target.startswith("lab"):
            continue
        # `from lab.x import y` may name a module y: judge the deepest that is a module
        theirs = max([layer_of(target) or 0] + [layer_of(f"{target}.{n}") or 0 for n in names
                                                 if (ROOT / (target + "." + n).replace(".", "/")).exists()
                                                 or (ROOT / ((target + "." + n).replace(".", "/") + ".py")).exists()])
        if mine is not None and theirs > mine:
            upward.append(f"line {line}: {target} ({LAYERS[theirs][0]} is above {LAYERS[mine][0]})")
    assert not upward, upward


@pytest.mark.parametrize("path", sorted((ROOT / "lab/shared").glob("*.py")) + GUEST_FILES,
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_what_runs_in_the_guest_imports_only_the_standard_library_and_lab_shared(path):
    """lab/shared ships into L1 alone; L1's Python has nothing else of the host."""
    bad = [f"line {line}: {target}" for line, target, _ in imports(path)
           if target.split(".")[0] in ("lab", "yaml", "click", "rich", "qemu", "pexpect", "matplotlib")
           and not target.startswith("lab.shared")]
    assert not bad, bad


@pytest.mark.parametrize("path", LAB_FILES + GUEST_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_name_is_used_outside_its_module(path):
    tree = ast.parse(path.read_text(), str(path))
    own = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))}
    targets = [t for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign))
               for target in (n.targets if isinstance(n, ast.Assign) else [n.target]) for t in ast.walk(target)]
    own |= {t.attr for t in targets if isinstance(t, ast.Attribute)} | {t.id for t in targets if isinstance(t, ast.Name)}
    bad = [f"line {line}: from {target} import {name}" for line, target, names in imports(path)
           if target.startswith(("lab", "l1")) for name in names if name.startswith("_") and not name.startswith("__")]
    bad += [f"line {n.lineno}: .{n.attr}" for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and n.attr.startswith("_") and not n.attr.startswith("__") and n.attr not in own
            and n.attr not in STDLIB_PRIVATE]
    assert not bad, bad


#: Integration modules that boot nothing: bad input is refused before any QEMU starts,
#: and the report test renders recorded results in a browser.
NO_BOOT = {"test_bad_input.py", "test_report_browser.py"}


def test_every_integration_module_that_boots_is_marked_boot():
    """`pytest -m "not boot"` is the fast loop: an integration module either marks all its
    tests `boot`, or uses only the kvm_lab fixture (the plugin marks those), or is one of
    NO_BOOT. Checked from collection, so a module that slips is named."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not boot",
                          str(ROOT / "tests/integration")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    unmarked = {line.split("::")[0].rsplit("/", 1)[-1] for line in out.stdout.splitlines() if "::" in line}
    assert unmarked <= NO_BOOT, sorted(unmarked - NO_BOOT)


def test_the_readme_layout_table_is_the_tree_and_these_layers():
    """The README's Layout section names these layers in this order, every path it names
    exists, and every package and module of lab/ is in it."""
    import re

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Layout"):]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    named = [p for row in rows for p in re.findall(r"`([^`]+)`", row)]
    missing = [p for p in named if not (ROOT / p.rstrip("/")).exists()]
    assert not missing, missing
    layer_rows = [re.findall(r"`(lab/[^`]+)`", row) for row in rows if row.strip().startswith("`lab/")]
    as_modules = [[p.rstrip("/").removesuffix(".py").replace("/", ".") for p in row] for row in layer_rows]
    assert as_modules == LAYERS
    top = {p.name.removesuffix(".py") for p in (ROOT / "lab").iterdir()
           if p.name != "__init__.py" and (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert top == {m.split(".")[1] for row in as_modules for m in row}


#: "One house": no module of lab/ over this many lines (a module that grows past it has
#: more than one job: split it along them).
MODULE_LINES = 400


def test_no_lab_module_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in LAB_FILES if (n := len(p.read_text().splitlines())) > MODULE_LINES}
    assert not long, long
