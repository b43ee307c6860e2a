"""The HTML report: one static page per suite run, and a kernel x scenario page for a
matrix, with a page per kernel below it. No server and no network needed: open
DIR/index.html in any browser, or attach DIR to a CI run.

Per scenario (a <section id="scenario-NAME">): the verdict, what was expected and
observed, the evidence, each check, the fault map of the touched IPA space and the
histogram of fault kinds (PNGs in DIR/figures), and links to the artefacts in the
results directory: logs, verdict, raw per-CPU traces.

The page is written to a temporary directory beside DIR and renamed into place, so DIR
is either the previous report or the new one, never half of one.
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from lab.core.errors import UserError
from lab.core.status import ERROR, FAIL, FLAKY, NA, PASS, SKIP, XFAIL
from lab.results import figures
from lab.results.load import Matrix, Run, flaky_words
from lab.shared.units import human_size

MARKER = ".kvmlab-report"
STATUS: dict[str, str] = {PASS: "PASS", FAIL: "FAIL", FLAKY: "FLAKY", ERROR: "ERROR", SKIP: "SKIP",
                          XFAIL: "XFAIL", NA: "N/A"}

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1180px; padding: 0 1em; color: #212121; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.15em; margin: 0; }
.meta { color: #555; margin: .2em 0 1em; } code, .mono { font-family: ui-monospace, monospace; font-size: .92em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; } th, td { padding: .25em .6em; text-align: left;
  border-bottom: 1px solid #e0e0e0; vertical-align: top; } th { background: #f5f5f5; }
.badge { display: inline-block; padding: .05em .5em; border-radius: .3em; font-weight: 600; font-size: .85em;
  color: #fff; }
.pass { background: #2e7d32; } .fail, .error { background: #c62828; } .skip { background: #f9a825; color: #212121; }
.na { background: #9e9e9e; }
.differs { color: #8e24aa; font-weight: 700; }
.unmeasured { color: #b26a00; font-weight: 700; }
section.scenario { border: 1px solid #e0e0e0; border-left: 6px solid #9e9e9e; border-radius: .4em; padding: .8em 1em;
  margin: 1em 0; } section.scenario.s-pass { border-left-color: #2e7d32; }
section.scenario.s-fail, section.scenario.s-error { border-left-color: #c62828; }
section.scenario.s-skip { border-left-color: #f9a825; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; } .figures img { max-width: 100%; }
ul.checks { list-style: none; padding-left: 0; }
ul.checks li::before { content: attr(data-mark) " "; font-weight: 700; }
ul.checks li.ok::before { color: #2e7d32; } ul.checks li.bad::before { color: #c62828; }
.links a { margin-right: 1em; } td.cell-pass { background: #e8f5e9; }
td.cell-fail, td.cell-error { background: #ffebee; }
td.cell-skip { background: #fff8e1; } td.cell-na { color: #757575; }
"""

# Counts the pictures the browser could decode; the browser test reads the attributes.
SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img"), ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute("data-images", String(imgs.length));
  document.body.setAttribute("data-images-loaded", String(ok));
});
"""

e = html.escape


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{e(title)}</title>\n"
            f"<meta name=\"generator\" content=\"kvmlab\">\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n"
            f"<script>{SCRIPT}</script>\n</body>\n</html>\n")


def _badge(status: str) -> str:
    return f"<span class=\"badge {_css(status)}\">{STATUS.get(status, e(status))}</span>"


def _css(status: str) -> str:
    """A status as a CSS class name ("n/a" -> "na")."""
    return e(status.replace("/", ""))


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _link(target: Path, page_dir: Path, text: str) -> str:
    rel = os.path.relpath(target.resolve(), page_dir.resolve())
    return f"<a href=\"{e(Path(rel).as_posix())}\">{e(text)}</a>"


class _Writer:
    """Renders into `tmp` (the page's directory while it is written); links point at
    where the page will be (`final`)."""

    def __init__(self, tmp: Path, final: Path):
        self.tmp = tmp
        self.final = final
        (tmp / "figures").mkdir(parents=True, exist_ok=True)

    def figure(self, name: str, draw) -> str | None:
        path = draw(self.tmp / "figures" / name)
        return f"figures/{name}" if path else None

    def scenario(self, run: Run, s: dict[str, Any]) -> str:
        name = s["name"]
        slug = _slug(name)
        parts = [f"<section class=\"scenario s-{_css(s['status'])}\" id=\"scenario-{e(slug)}\" "
                 f"data-scenario=\"{e(name)}\" data-status=\"{e(s['status'])}\">",
                 f"<h2>{_badge(s['status'])} {e(name)}</h2>",
                 f"<p>{e(s.get('description', ''))}</p>",
                 "<table>",
                 f"<tr><th>expected</th><td>{e(s.get('expected') or '-')}</td></tr>",
                 f"<tr><th>observed</th><td>{e(s.get('observed') or '-')}</td></tr>",
                 f"<tr><th>faults</th><td>{s.get('faults', 0)} in the touched range; "
                 f"{s.get('seconds', 0):.1f} s</td></tr>",
                 "</table>"]
        if s.get("reasons"):
            parts.append("<h3>Evidence</h3><ul>" + "".join(f"<li>{e(r)}</li>" for r in s["reasons"]) + "</ul>")
        if s.get("checks"):
            parts.append("<ul class=\"checks\">" + "".join(
                f"<li class=\"{'ok' if c.get('ok') else 'bad'}\" data-mark=\"{'✓' if c.get('ok') else '✗'}\">"
                f"<code>{e(c.get('check', ''))}</code> {e(c.get('text', ''))}</li>" for c in s["checks"]) + "</ul>")
        # Per-phase (or per-THP-mode) maps say more than the whole run's; else the whole run's.
        maps = list(s.get("maps") or []) or ([{"label": "", "regions": s["regions"]}] if s.get("regions") else [])
        figs = []
        for i, m in enumerate(maps):
            regions = m.get("regions") or []
            if not regions:
                continue
            label = m.get("label") or ""
            suffix = f"-{i}" if len(maps) > 1 else ""
            counted = ", faults per region" if any(r.get("faults") for r in regions) else ""
            size = human_size(regions[0].get("size") or 2 << 20)  # older results have no size: 2 MiB
            title = f"{label + ': ' if label else ''}{len(regions)} regions of {size}{counted}"
            fmap = self.figure(f"{slug}{suffix}-map.png", lambda p: figures.fault_map(regions, p, title))
            title = f"{label + ': ' if label else ''}fault kinds and levels"
            hist = self.figure(f"{slug}{suffix}-kinds.png", lambda p: figures.kinds_histogram(regions, p, title))
            for src, alt in ((fmap, "fault map"), (hist, "fault kinds and levels")):
                if src:
                    which = f" ({e(label)})" if label else ""
                    figs.append(f"<img src=\"{e(src)}\" alt=\"{e(name)}: {alt}{which}\">")
        if figs:
            parts.append("<div class=\"figures\">" + "".join(figs) + "</div>")
        elif s["status"] not in (SKIP, NA):
            parts.append("<p class=\"meta\">No fault map: this scenario recorded no per-region mapping.</p>")
        links = [_link(p, self.final, str(p.relative_to(run.home(name)))) for p in run.artefacts(name)]
        if links:
            parts.append("<p class=\"links\">Artefacts: " + " ".join(links) + "</p>")
        parts.append("</section>")
        return "\n".join(parts)

    def run_page(self, run: Run, back: str = "") -> str:
        s = run.summary
        c = run.counts
        targets = "+".join(s.get("targets") or ["thp"])
        head = [f"<p><a href=\"{e(back)}\">&larr; matrix</a></p>" if back else "",
                f"<h1>kvmlab {e(targets)} on {e(run.title)}</h1>",
                f"<p class=\"meta\">{c['pass']} passed, {c['fail']} failed, {flaky_words(c)}{c['error']} errors, "
                f"{c['skip']} skipped "
                f"in {s.get('seconds', 0):.1f} s &middot; KVM {e(str(s.get('kvm_mode') or '?'))} &middot; "
                f"L1 {e(str(s.get('l1_cpus', '?')))} vCPUs, {e(str(s.get('l1_memory', '?')))} &middot; "
                f"{e(str(s.get('qemu_version') or ''))} &middot; started {e(str(s.get('started', '')))} &middot; "
                f"lab {e(str(s.get('lab', '')))}</p>"]
        console = run.path / "l1-console.log"
        if console.exists():
            head.append(f"<p class=\"links\">{_link(console, self.final, 'L1 console log')} "
                        f"{_link(run.path / 'summary.json', self.final, 'summary.json')}</p>")
        rows = ["<table id=\"summary\"><tr><th>scenario</th><th>expected</th><th>observed</th><th>faults</th>"
                "<th>verdict</th><th>s</th></tr>"]
        for sc in run.scenarios:
            rows.append(f"<tr><td><a href=\"#scenario-{e(_slug(sc['name']))}\">{e(sc['name'])}</a></td>"
                        f"<td>{e(sc.get('expected') or '')}</td><td>{e(sc.get('observed') or '-')}</td>"
                        f"<td>{sc.get('faults', 0)}</td><td>{_badge(sc['status'])}</td>"
                        f"<td>{sc.get('seconds', 0):.1f}</td></tr>")
        rows.append("</table>")
        legend = ("<p class=\"meta\">Fault maps: one cell per region (2 MiB; 32 MiB with 16 KiB pages) of guest "
                  "physical memory the guest touched, coloured by how stage 2 mapped it, with its fault count.</p>")
        body = "\n".join(head + rows + [legend] + [self.scenario(run, sc) for sc in run.scenarios])
        return _page(f"kvmlab {targets} on {run.title}", body)

    def matrix_page(self, matrix: Matrix) -> str:
        m = matrix.matrix
        kernels = m.get("kernels", [])
        head = [f"<h1>kvmlab matrix: {e('+'.join(m.get('targets') or ['thp']))} on {len(kernels)} kernels</h1>",
                f"<p class=\"meta\">{len(m.get('differing', []))} of {len(m.get('scenarios', []))} scenarios map "
                f"differently between kernels (<span class=\"differs\">&ne;</span>), "
                f"{len(m.get('unmeasured', []))} were not measured on every kernel (?); {m.get('seconds', 0):.0f} s "
                f"with -j{m.get('jobs', 1)}. A cell is the observed mapping without fault counts; its colour is the "
                f"scenario's verdict on that kernel.</p>"]
        rows = ["<table id=\"matrix\"><tr><th></th><th>scenario</th>" + "".join(
            f"<th><a href=\"{e(_slug(k['label']))}/index.html\">{e(k['label'])}</a><br>"
            f"<span class=\"mono\">{e(k.get('release') or '-')}</span></th>" for k in kernels) + "</tr>"]
        for row in m.get("scenarios", []):
            cells = []
            for k in kernels:
                cell = row["cells"].get(k["label"])
                if not cell:
                    cells.append("<td>-</td>")
                    continue
                href = f"{_slug(k['label'])}/index.html#scenario-{_slug(row['name'])}"
                cells.append(f"<td class=\"cell-{_css(cell['status'])}\" data-kernel=\"{e(k['label'])}\" "
                             f"title=\"{e('; '.join(cell.get('reasons') or []))}\"><a href=\"{e(href)}\">"
                             f"{e(cell.get('signature') or STATUS.get(cell['status'], ''))}</a></td>")
            mark = ("<span class=\"differs\">&ne;</span>" if row.get("differs") else
                    "<span class=\"unmeasured\" title=\"not measured on every kernel\">?</span>"
                    if row.get("unmeasured") else "")
            rows.append(f"<tr id=\"scenario-{e(_slug(row['name']))}\" data-scenario=\"{e(row['name'])}\">"
                        f"<td>{mark}</td>"
                        f"<td>{e(row['name'])}</td>{''.join(cells)}</tr>")
        rows.append("</table>")
        errors = [f"<p><span class=\"badge error\">ERROR</span> {e(k['label'])}: {e(k['error'])}</p>"
                  for k in kernels if k.get("error")]
        return _page("kvmlab matrix", "\n".join(head + rows + errors))


def check_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise UserError(f"--html {out}: exists and is not a kvmlab report; give a new or empty directory")


def write(results: Run | Matrix, out: Path) -> Path:
    """Renders the report into `out` (replacing an earlier kvmlab report there); returns index.html."""
    out = Path(out).expanduser().absolute()
    check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        writer = _Writer(tmp, out)
        if isinstance(results, Matrix):
            (tmp / "index.html").write_text(writer.matrix_page(results))
            for label, run in results.runs.items():
                sub = _Writer(tmp / _slug(label), out / _slug(label))
                (tmp / _slug(label) / "index.html").write_text(sub.run_page(run, back="../index.html"))
        else:
            (tmp / "index.html").write_text(writer.run_page(results))
        (tmp / MARKER).write_text(f"written {time.strftime('%Y-%m-%dT%H:%M:%S')} from {results.path}\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the report from a web server
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "index.html"
