"""A Markdown summary of a run or a matrix, for $GITHUB_STEP_SUMMARY (GitHub renders it on
the workflow run's page) or a pull-request comment."""

from __future__ import annotations

from lab.core.status import BAD, ERROR, FAIL, FLAKY, NA, PASS, SKIP, XFAIL
from lab.results.load import Matrix, Run, flaky_words

ICON: dict[str, str] = {PASS: "✅ pass", FAIL: "❌ fail", FLAKY: "🎲 flaky", ERROR: "💥 error", SKIP: "⏭️ skip",
                       XFAIL: "🔶 known failure", NA: "➖ n/a"}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def run_summary(run: Run) -> str:
    s = run.summary
    c = run.counts
    lines = [f"### kvmlab {'+'.join(s.get('targets') or ['thp'])} on {_cell(run.title)}", "",
             f"{c['pass']} passed, {c['fail']} failed, {flaky_words(c)}{c['error']} errors, {c['skip']} skipped in "
             f"{s.get('seconds', 0):.0f} s; KVM {s.get('kvm_mode') or '?'}; {_cell(s.get('qemu_version') or '')}", "",
             "| scenario | expected | observed | faults | verdict |", "|---|---|---|---:|---|"]
    for sc in run.scenarios:
        lines.append(f"| {_cell(sc['name'])} | {_cell(sc.get('expected', ''))} | {_cell(sc.get('observed') or '-')} "
                     f"| {sc.get('faults', 0)} | {ICON.get(sc['status'], sc['status'])} |")
    bad = [sc for sc in run.scenarios if sc["status"] in BAD]
    if bad:
        lines += ["", "<details><summary>Evidence of what did not pass</summary>", ""]
        lines += [f"- **{_cell(sc['name'])}**: {_cell('; '.join(sc.get('reasons') or []))}" for sc in bad]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def matrix_summary(matrix: Matrix) -> str:
    m = matrix.matrix
    kernels = [k["label"] for k in m.get("kernels", [])]
    lines = [f"### kvmlab matrix: {'+'.join(m.get('targets') or ['thp'])} on {', '.join(kernels)}", "",
             "| scenario | " + " | ".join(kernels) + " |", "|---|" + "---|" * len(kernels)]
    for row in m.get("scenarios", []):
        cells = []
        for k in kernels:
            cell = row["cells"].get(k) or {}
            cells.append(f"{ICON.get(cell.get('status', ''), '-')} {_cell(cell.get('signature') or '')}".strip())
        mark = " ≠" if row.get("differs") else " ?" if row.get("unmeasured") else ""
        lines.append(f"| {_cell(row['name'])}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render(results: Run | Matrix) -> str:
    return matrix_summary(results) if isinstance(results, Matrix) else run_summary(results)
