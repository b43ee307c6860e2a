"""The HTML report in a real browser (headless Chromium): every scenario is in the DOM,
every picture decodes, and the page is not blank."""

from __future__ import annotations

import re
from pathlib import Path

from lab.results import html, load
from tests.conftest import blank_share, browse

RUN = Path(__file__).parent.parent / "data" / "results" / "thp-trixie"


def check_rendered(index: Path, names: list[str], tmp: Path) -> str:
    """Asserts what a reader needs from the page; returns the DOM."""
    dom, shot = browse(index, tmp)
    sections = re.findall(r'<section class="scenario[^"]*" id="scenario-([^"]+)" data-scenario="([^"]+)"', dom)
    assert sorted(name for _, name in sections) == sorted(names)
    images = re.search(r'data-images="(\d+)" data-images-loaded="(\d+)"', dom)
    assert images, "the page's load script did not run"
    assert int(images.group(1)) > 0 and images.group(1) == images.group(2), "some pictures did not decode"
    assert blank_share(shot) < 0.98, f"the screenshot is (almost) one colour: {shot}"
    return dom


def test_recorded_run_renders_in_chromium(tmp_path):
    run = load.load(RUN)
    index = html.write(run, tmp_path / "report")
    dom = check_rendered(index, [s["name"] for s in run.scenarios], tmp_path)
    assert dom.count('class="badge fail"') >= 2  # table row and section of the failed scenario


def test_a_broken_picture_is_noticed(tmp_path):
    """The check can fail: a PNG that does not decode is counted as not loaded."""
    run = load.load(RUN)
    index = html.write(run, tmp_path / "report")
    (tmp_path / "report/figures/anon-thp-always-map.png").write_bytes(b"not a png")
    dom, _ = browse(index, tmp_path)
    images = re.search(r'data-images="(\d+)" data-images-loaded="(\d+)"', dom)
    assert int(images.group(2)) == int(images.group(1)) - 1


def test_a_blank_page_is_noticed(tmp_path):
    """The check can fail: an empty page's screenshot is one colour."""
    page = tmp_path / "blank.html"
    page.write_text("<!DOCTYPE html><html><body></body></html>")
    _, shot = browse(page, tmp_path)
    assert blank_share(shot) > 0.99
