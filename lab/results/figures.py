"""PNG pictures of one scenario's stage-2 faults (matplotlib, no display needed).

- fault_map: the touched IPA space as a grid of block-sized regions (2 MiB with 4 KiB pages,
  32 MiB with 16 KiB, as the results' regions say), one cell each, coloured by
  how stage 2 mapped it (block, pages, split, ...), each cell with its fault count, rows
  labelled with their first IPA;
- kinds_histogram: how many faults of each kind (translation, access flag, permission) at
  each level, over the same regions.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from lab.shared.files import replacing
from lab.shared.units import human_size

#: Mapping -> (colour, legend text, for 4 KiB pages: see legend()). The order is the legend's.
COLOURS = {
    "block": ("#2e7d32", "2 MiB block"),
    "block-1g": ("#1b5e20", "inside a 1 GiB block"),
    "split": ("#ef6c00", "block split into pages"),
    "page": ("#1565c0", "4 KiB pages"),
    "block?": ("#c0ca33", "one fault below L3 (block?)"),
    "mmio": ("#6a1b9a", "MMIO (repeated faults)"),
    "untouched": ("#e0e0e0", "no faults"),
}
KIND_COLOURS = {"translation": "#1565c0", "access flag": "#2e7d32", "permission": "#c62828"}
COLUMNS = 32


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with replacing(path, ".png") as tmp:
        fig.savefig(tmp, dpi=100)
    return path


def legend(region_size: int) -> dict[str, str]:
    """COLOURS' legend texts for regions of `region_size` (a level-2 block: 2 MiB with
    4 KiB pages, 32 MiB with 16 KiB, 512 MiB with 64 KiB: a page holds page / 8 entries,
    so block = page * page / 8, and page = sqrt(8 * block))."""
    page = math.isqrt(region_size * 8)
    texts = {m: text for m, (_, text) in COLOURS.items()}
    texts["block"] = f"{human_size(region_size)} block"
    texts["page"] = f"{human_size(page)} pages"
    return texts


def fault_map(regions: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """One cell per region, `COLUMNS` to a row; colour = mapping, text = faults."""
    plt = _pyplot()
    from matplotlib.patches import Patch, Rectangle

    n = max(1, len(regions))
    cols = min(COLUMNS, n)
    rows = math.ceil(n / cols)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.34 * cols + 1.8), 0.9 + 0.34 * rows + 0.5))
    for i, r in enumerate(regions):
        row, col = divmod(i, cols)
        colour = COLOURS.get(r["mapping"], ("#9e9e9e", r["mapping"]))[0]
        ax.add_patch(Rectangle((col, row), 0.94, 0.9, color=colour))
        if r.get("faults") and cols * rows <= 16 * COLUMNS:
            text = str(r["faults"]) if r["faults"] < 1000 else f"{r['faults'] / 1000:.0f}k"
            dark = r["mapping"] not in ("untouched", "block?")
            ax.text(col + 0.47, row + 0.47, text, ha="center", va="center", fontsize=6 if len(text) > 2 else 7,
                    color="white" if dark else "black")
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)
    ax.set_aspect("equal")
    ax.set_yticks([i + 0.45 for i in range(rows)])
    ax.set_yticklabels([regions[i * cols]["start"] if i * cols < len(regions) else "" for i in range(rows)],
                       fontsize=7, family="monospace")
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.tick_params(left=False)
    counts = Counter(r["mapping"] for r in regions)
    size = (regions[0].get("size") if regions else None) or 2 << 20  # older results have no size
    texts = legend(size)
    handles = [Patch(color=c, label=f"{texts[m]} ({counts[m]})") for m, (c, _) in COLOURS.items() if counts[m]]
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=min(4, len(handles)),
                  fontsize=7, frameon=False)
    ax.set_title(title or f"{len(regions)} regions of {human_size(size)} (IPA), faults per region", fontsize=9,
                 loc="left")
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def kinds(regions: list[dict[str, Any]]) -> Counter:
    """("translation L2" -> n) summed over the regions."""
    total: Counter = Counter()
    for r in regions:
        total.update(r.get("kinds") or {})
    return total


def kinds_histogram(regions: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """Horizontal bars, one per (kind, level), coloured by kind; None if the regions carry no kinds."""
    total = kinds(regions)
    if not total:
        return None
    plt = _pyplot()
    labels = sorted(total, key=lambda k: (k.rsplit(" L", 1)[-1], k))
    values = [total[k] for k in labels]
    fig, ax = plt.subplots(figsize=(6.0, 0.8 + 0.3 * len(labels)))
    colours = [KIND_COLOURS.get(k.rsplit(" L", 1)[0], "#757575") for k in labels]
    bars = ax.barh(range(len(labels)), values, color=colours)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.bar_label(bars, labels=[str(v) for v in values], fontsize=7, padding=2)
    if max(values) > 50 * min(values):
        # 16 permission faults beside 8176 translation faults must still show
        ax.set_xscale("log")
        ax.set_xlim(0.7, max(values) * 4)
        ax.set_xlabel("faults (log scale)", fontsize=8)
    else:
        ax.set_xlim(0, max(values) * 1.15)
        ax.set_xlabel("faults", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(title or "fault kinds and levels (ESR)", fontsize=9, loc="left")
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
