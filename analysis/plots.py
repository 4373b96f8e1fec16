"""Figures (matplotlib, Agg). Only drawing: every number drawn is computed elsewhere and also
written to the JSON."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

__all__ = ["attention_figure", "erf_figure", "injectivity_figure", "rank_figure", "upsample"]

_DPI = 80
_KIND_COLORS = {"inline": "tab:blue", "inline+local": "tab:cyan", "linear": "tab:orange",
                "softmax": "tab:green", "softmax+local": "tab:olive", "l2vit": "tab:red",
                "linear+local": "tab:brown"}


def upsample(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A token-grid map (h, w) to pixels (H, W): each token covers ceil(H/h) x ceil(W/w) pixels
    from the top-left (the models pad at the bottom/right), cropped to the image."""
    h, w = grid.shape
    sh, sw = -(-size[0] // h), -(-size[1] // w)
    return np.repeat(np.repeat(grid, sh, axis=0), sw, axis=1)[:size[0], :size[1]]


def _save(fig, path: str | Path) -> None:
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


def _overlay(ax, picture: np.ndarray, values: np.ndarray | None, signed: bool,
             point: tuple[float, float] | None, vmax: float | None = None) -> None:
    # Nearest neighbour: token maps are piecewise constant (and compress well as PNG).
    ax.imshow(picture, alpha=0.45 if values is not None else 1.0, interpolation="nearest")
    if values is not None:
        # Absolute scales (from 0, or symmetric about 0 for signed maps), so that a nearly
        # uniform map looks uniform rather than stretched to full contrast.
        if signed:
            lim = vmax or float(np.abs(values).max()) or 1.0
            ax.imshow(values, cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.7,
                      interpolation="nearest")
        else:
            ax.imshow(values, cmap="inferno", vmin=0.0,
                      vmax=vmax or float(values.max()) or 1.0, alpha=0.7,
                      interpolation="nearest")
    if point is not None:
        ax.plot(point[1], point[0], marker="*", color="lime", markersize=11,
                markeredgecolor="black")
    ax.set_xticks([])
    ax.set_yticks([])


def attention_figure(path: str | Path, picture: np.ndarray, rows: Sequence[Sequence[dict]],
                     row_titles: Sequence[str], title: str) -> None:
    """One row per query point, one panel per map: dicts with ``title``, ``map`` ((H, W) or
    None), ``signed`` and ``point`` (y, x) in pixels."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.3 * n_cols, 2.7 * n_rows + 0.5),
                             squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            if j >= len(row):
                ax.axis("off")
                continue
            p = row[j]
            _overlay(ax, picture, p["map"], p["signed"], p["point"])
            ax.set_title(p["title"], fontsize=7.5)
        axes[i, 0].set_ylabel(row_titles[i], fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def injectivity_figure(path: str | Path, picture: np.ndarray,
                       maps: dict[str, Sequence[np.ndarray]], totals: dict[str, dict],
                       point: tuple[float, float], alpha: float, title: str) -> None:
    """Rows = kinds: the distribution of a query q and of ``alpha`` q over the image and their
    difference; bottom: the counts over all heads."""
    kinds = list(maps)
    # One scale for the difference column: the largest difference of any kind, so that the
    # kinds compare and a rounding-level difference looks like none.
    diff_scale = max(float(np.abs(p2 - p1).max()) for p1, p2 in maps.values()) or 1.0
    fig = plt.figure(figsize=(7.2, 2.2 * len(kinds) + 2.4))
    grid = fig.add_gridspec(len(kinds) + 1, 3, height_ratios=[1] * len(kinds) + [1.1])
    for i, kind in enumerate(kinds):
        p1, p2 = maps[kind]
        diff = np.abs(p2 - p1)
        scale = float(max(np.abs(p1).max(), np.abs(p2).max()))
        for j, (values, name) in enumerate(((p1, "q"), (p2, f"{alpha:g} q"), (diff, None))):
            ax = fig.add_subplot(grid[i, j])
            signed = name is not None and bool((values < 0).any())
            _overlay(ax, picture, values, signed, point,
                     vmax=diff_scale if name is None else None)
            if name is None:
                ax.set_title(f"|difference| (shared scale)\nmax {diff.max():.2g}, weights up "
                             f"to {scale:.2g}", fontsize=8)
            else:
                ax.set_title(f"{kind}: weights of {name}", fontsize=8)
    ax = fig.add_subplot(grid[len(kinds), :])
    labels = [f"pairs (q, {alpha:g}q)\nidentical", "rays with one\ndistribution",
              "distinct queries\nsharing a distribution"]
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        tot = totals[kind]
        real, sc, col = tot["real"], tot["scaled"], tot["collinear"]
        vals = [100 * sc["identical"] / max(sc["queries"], 1),
                100 * col["rays_all_identical"] / max(col["rays"], 1),
                100 * real["colliding_queries"] / max(real["queries"] - real["degenerate"], 1)]
        xs = np.arange(3) + (i - (len(kinds) - 1) / 2) * width
        bars = ax.bar(xs, vals, width, label=kind, color=_KIND_COLORS.get(kind))
        for bar, v in zip(bars, vals, strict=True):
            ax.text(bar.get_x() + bar.get_width() / 2, v + 1, f"{v:.0f}", ha="center",
                    fontsize=7)
    ax.set_xticks(np.arange(3), labels, fontsize=8)
    ax.set_ylabel("% (all heads)", fontsize=8)
    ax.set_ylim(0, 112)
    ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def rank_figure(path: str | Path, sites: Sequence[str], means: Sequence[dict[str, dict]],
                spectra: dict[str, Sequence[float]], spectra_site: str, title: str) -> None:
    """Left: numerical rank (bars) and effective rank (dots) / matrix size per block and kind
    (mean over heads); right: the normalised singular values of one block's first head."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    kinds = list(means[0])
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        ranks = [m[kind]["rank"] / min(m[kind]["size"]) for m in means]
        eff = [m[kind]["effective_rank"] / min(m[kind]["size"]) for m in means]
        xs = np.arange(len(sites)) + (i - (len(kinds) - 1) / 2) * width
        color = _KIND_COLORS.get(kind)
        ax1.bar(xs, ranks, width, color=color, label=kind)
        ax1.scatter(xs, eff, marker="o", s=18, color="white", edgecolors="black", zorder=3,
                    label="effective rank" if i == 0 else None)
    ax1.set_xticks(np.arange(len(sites)), [f"block {s}\nN={min(m[kinds[0]]['size'])}"
                                           for s, m in zip(sites, means, strict=True)],
                   fontsize=7)
    ax1.set_ylabel("rank / N  (mean over heads)", fontsize=8)
    ax1.set_yscale("log")
    ax1.set_ylim(top=3)
    ax1.legend(fontsize=6.5, ncol=3, loc="upper center")
    ax1.set_title("numerical rank (bars), effective rank (dots)", fontsize=8)
    for kind, sv in spectra.items():
        ax2.semilogy(np.arange(1, len(sv) + 1), np.maximum(sv, 1e-17), label=kind,
                     color=_KIND_COLORS.get(kind))
    ax2.set_xlabel("index", fontsize=8)
    ax2.set_ylabel("singular value / largest", fontsize=8)
    ax2.set_ylim(1e-17, 2)
    ax2.legend(fontsize=7)
    ax2.set_title(f"spectrum, block {spectra_site}, head 0, first image", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def erf_figure(path: str | Path, rows: Sequence[tuple[str, Sequence[dict[str, Any]]]],
               title: str, decades: float = 5.0) -> None:
    """Rows = models, columns = stages. Each panel: the gradient map on a log scale (``decades``
    below its maximum), the centred squares holding 20 / 50 / 99 % of the mass, and their area
    fractions. Panel dicts: ``stage``, ``grad``, ``centre``, ``fractions``."""
    n_rows, n_cols = len(rows), max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.5 * n_cols, 2.9 * n_rows + 0.5),
                             squeeze=False)
    for i, (label, panels) in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            if j >= len(panels):
                ax.axis("off")
                continue
            p = panels[j]
            g = p["grad"]
            peak = g.max()
            shown = (np.log10(np.maximum(g / peak, 10 ** -decades)) + decades) / decades \
                if peak > 0 else g
            # Shown block-averaged to at most ~100 px a side (a panel has ~200 at this dpi):
            # per-pixel gradient speckle only makes the PNG large. Squares stay in pixels.
            f = max(1, min(-(-max(shown.shape) // 100), min(shown.shape)))
            big_h, big_w = shown.shape
            pooled = shown[:big_h - big_h % f or None, :big_w - big_w % f or None]
            pooled = pooled.reshape(pooled.shape[0] // f, f, pooled.shape[1] // f, f).mean((1, 3))
            ax.imshow(pooled, cmap="magma", vmin=0, vmax=1, interpolation="nearest",
                      extent=(-0.5, pooled.shape[1] * f - 0.5, pooled.shape[0] * f - 0.5, -0.5))
            cy, cx = p["centre"]
            parts = []
            for t, style in (("0.2", ":"), ("0.5", "--"), ("0.99", "-")):
                f = p["fractions"].get(t)
                if f is None or f["square"] is None:
                    continue
                side = f["square_side"]
                ax.add_patch(Rectangle((int(cx) - side // 2 - 0.5, int(cy) - side // 2 - 0.5),
                                       side, side, fill=False, ls=style, lw=0.9, color="cyan"))
                parts.append(f"{float(t) * 100:g}%: {100 * f['square']:.2g}%")
            ax.set_title(f"stage {p['stage']}\n" + ", ".join(parts), fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel("\n".join(textwrap.wrap(label, 34)), fontsize=7)
    fig.suptitle(title, fontsize=8.5)
    fig.tight_layout()
    _save(fig, path)
