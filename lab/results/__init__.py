"""Results people read and tools consume, all rendered from a saved results directory:

    console.py   what `kvmlab test` prints while it runs, and its table
    load.py      a results directory (of `kvmlab test` or `kvmlab matrix`) read back
    junit.py     JUnit XML for CI test reporters
    markdown.py  a summary table for $GITHUB_STEP_SUMMARY
    figures.py   PNG pictures: the fault map of the touched IPA space, the fault kinds
    html.py      the HTML report: per scenario its map, histogram, verdict and evidence

`kvmlab report RESULTS_DIR` renders any of them again without re-running anything.
"""

from lab.scenarios import RESULTS_FORMAT

__all__ = ["RESULTS_FORMAT"]
