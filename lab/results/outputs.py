"""Every output a saved run can be rendered to, as `kvmlab test`, `kvmlab matrix` and
`kvmlab report` ask for them: one function, so the three commands cannot drift apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from lab.results import RESULTS_FORMAT, junit, markdown
from lab.results.load import Matrix, Run
from lab.shared.files import write_atomic


def document(results: Run | Matrix) -> dict[str, Any]:
    """The whole run as one JSON document: the summary with every scenario's regions (for a
    matrix: matrix.json with each kernel's run under "runs")."""
    def run_doc(run: Run) -> dict[str, Any]:
        return {**run.summary, "format": RESULTS_FORMAT, "kind": "run", "results_dir": str(run.path),
                "scenarios": run.scenarios}

    if isinstance(results, Matrix):
        return {**results.matrix, "format": RESULTS_FORMAT, "kind": "matrix", "results_dir": str(results.path),
                "runs": {label: run_doc(run) for label, run in results.runs.items()}}
    return run_doc(results)


def _atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)


def check(json_file: str | None = None, junit_file: str | None = None, html_dir: str | None = None,
          markdown_file: str | None = None) -> None:
    """Before a run: the outputs can be written (a wrong --html costs nothing afterwards)."""
    from lab.core.errors import UserError
    from lab.results import html

    for option, value in (("--json", json_file), ("--junit", junit_file), ("--markdown", markdown_file)):
        if value and Path(value).is_dir():
            raise UserError(f"{option} {value}: is a directory; give a file name")
    if html_dir:
        html.check_target(Path(html_dir).expanduser().absolute())


def write(results: Run | Matrix, json_file: str | None = None, junit_file: str | None = None,
          html_dir: str | None = None, markdown_file: str | None = None,
          echo: Callable[[str], None] = print) -> None:
    if json_file:
        echo(f"JSON {json_file}")
        _atomic_text(Path(json_file), json.dumps(document(results), indent=2, default=str) + "\n")
    if junit_file:
        echo(f"JUnit {junit_file}")
        junit.write(results, Path(junit_file))
    if markdown_file:
        # Appended, as $GITHUB_STEP_SUMMARY expects: several steps may add to it.
        echo(f"Markdown {markdown_file}")
        with open(markdown_file, "a") as f:
            f.write(markdown.render(results) + "\n")
    if html_dir:
        from lab.results import html

        echo(f"HTML {html_dir} (fault maps)")
        html.write(results, Path(html_dir))
