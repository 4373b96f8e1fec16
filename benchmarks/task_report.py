"""Tables and plots of the whole-model modes: each project model against its comparison model
(``task.PAIRS``), per phase and size, with the profile split and the crossover resolution."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .measure import OK
from .report import plot_records, plot_title
from .task import BACKBONES, PAIRS, TASK_MODELS, parse_shape

__all__ = ["crossovers", "pair_rows", "pair_table", "plot_pairs"]


def _time(r: dict[str, Any]) -> float:
    """Process CPU time where measured (CPU runs: less disturbed by other jobs), else wall."""
    return r.get("cpu_time_ms") or r["latency_ms"]


def _part(r: dict[str, Any], name: str) -> float | None:
    parts = r.get("parts_cpu_ms") if "cpu_time_ms" in r else r.get("parts_ms")
    return (parts or {}).get(name)


def pair_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (pair, phase, size) where both models have a record: both times (ms), the
    speed-up of the project model (comparison time / project time: > 1 means it is faster), both
    peak memories, both backbone parts and their ratio, and the ratio of the timm backbones alone
    measured in the same run (``--models``) where there is one at that size."""
    tasks = {(r["model"], r["phase"], r["size"]): r for r in records if r["kind"] == "task"}
    alone = {(r["model"], r["size"]): r for r in records
             if r["kind"] == "model" and r["status"] == OK and r["mode"] == "infer"}
    rows = []
    for pairs in PAIRS.values():
        for a, b in pairs:
            keys = sorted({(p, s) for (m, p, s) in tasks if m == a},
                          key=lambda k: (k[0], _pixels(k[1])))
            for phase, size in keys:
                ra, rb = tasks.get((a, phase, size)), tasks.get((b, phase, size))
                if rb is None:
                    continue
                row = dict(pair=(a, b), phase=phase, size=size, pixels=_pixels(size),
                           status=(ra["status"], rb["status"]))
                if ra["status"] == OK and rb["status"] == OK:
                    ta, tb = _time(ra), _time(rb)
                    row.update(a_ms=ta, b_ms=tb, speedup=tb / ta, a_mem=ra.get("peak_mem_mb"),
                               b_mem=rb.get("peak_mem_mb"))
                    ba, bb = _part(ra, "backbone"), _part(rb, "backbone")
                    if ba and bb:
                        row.update(a_backbone_ms=ba, b_backbone_ms=bb, backbone_speedup=bb / ba,
                                   a_backbone_share=ba / ta, b_backbone_share=bb / tb)
                    xa = alone.get((BACKBONES[a], size)) or alone.get((BACKBONES[a], _sq(size)))
                    xb = alone.get((BACKBONES[b], size)) or alone.get((BACKBONES[b], _sq(size)))
                    if xa and xb:
                        row["backbone_alone_speedup"] = _time(xb) / _time(xa)
                rows.append(row)
    return rows


def _pixels(size: str | int) -> int:
    h, w = parse_shape(size)
    return h * w


def _sq(size: str | int) -> int | None:
    """The int size of the backbone-only records, for a square task size."""
    h, w = parse_shape(size)
    return h if h == w else None


def crossovers(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str], str | None]:
    """Per (project model, comparison model, phase): the smallest measured size from which on
    the project model is faster at every larger measured size (None: at none)."""
    out: dict[tuple[str, str, str], str | None] = {}
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if "speedup" in r:
            groups.setdefault((*r["pair"], r["phase"]), []).append(r)
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["pixels"])
        found = None
        for r in reversed(rs):
            if r["speedup"] <= 1.0:
                break
            found = r["size"]
        out[key] = found
    return out


def _fmt(v: float | None, digits: str = ".3g") -> str:
    return "" if v is None else format(v, digits)


def pair_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown: per pair, phase and size, both times (s), the speed-up, both peak memories, the
    backbone parts and their share of the whole, and the crossover per pair and phase."""
    rows = pair_rows(records)
    lines = ["| project model vs comparison | phase | size | project s | comparison s | "
             "speed-up | project peak MB | comparison peak MB | backbone s (project / "
             "comparison) | backbone speed-up | timm backbones alone | backbone share |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b = (TASK_MODELS[m][2] for m in r["pair"])
        head = f"| {a} vs {b} | {r['phase']} | {r['size']} |"
        if "speedup" not in r:
            lines.append(f"{head} {r['status'][0]} | {r['status'][1]} | | | | | | | |")
            continue
        bb = (f"{r['a_backbone_ms'] / 1e3:.2f} / {r['b_backbone_ms'] / 1e3:.2f}"
              if "a_backbone_ms" in r else "")
        share = (f"{r['a_backbone_share']:.0%} / {r['b_backbone_share']:.0%}"
                 if "a_backbone_share" in r else "")
        lines.append(f"{head} {r['a_ms'] / 1e3:.2f} | {r['b_ms'] / 1e3:.2f} | "
                     f"**{r['speedup']:.2f}x** | {_fmt(r['a_mem'], '.0f')} | "
                     f"{_fmt(r['b_mem'], '.0f')} | {bb} | {_fmt(r.get('backbone_speedup'), '.2f')}"
                     f" | {_fmt(r.get('backbone_alone_speedup'), '.2f')} | {share} |")
    lines.append("")
    for (a, b, phase), size in crossovers(rows).items():
        lines.append(f"crossover {TASK_MODELS[a][2]} vs {TASK_MODELS[b][2]} ({phase}): "
                     + (f"faster from {size} on" if size else "not faster at any measured size"))
    return "\n".join(lines)


def plot_pairs(records: Sequence[dict[str, Any]], path: str | os.PathLike) -> list[str]:
    """Per pair present in the records: a log-log plot of time and peak memory against pixels
    (``path``'s stem + ``_<project>_vs_<comparison>``) and the profile split as stacked bars
    (the same + ``_parts``); returns the files written."""
    stem, ext = os.path.splitext(os.fspath(path))
    written = []
    for pairs in PAIRS.values():
        for a, b in pairs:
            rs = [r for r in records if r["kind"] == "task" and r["model"] in (a, b)]
            if not all(any(r["model"] == m and r["status"] == OK for r in rs) for m in (a, b)):
                continue  # a pair needs both sides
            out = f"{stem}_{a}_vs_{b}{ext or '.png'}"
            plot_records(rs, out, title=plot_title(rs))
            parts = f"{stem}_{a}_vs_{b}_parts{ext or '.png'}"
            plot_parts([r for r in rs if r["status"] == OK], parts, (a, b))
            written += [out, parts]
    return written


def plot_parts(records: Sequence[dict[str, Any]], path: str, pair: tuple[str, str]) -> None:
    """Stacked bars: the parts (backbone, neck, heads, backward, other) of each model's time at
    each (phase, size), as fractions of the comparison model's whole time there (its bar is 1),
    the pair's two bars side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["phase"], r["size"]) for r in records},
                  key=lambda k: (k[0], _pixels(k[1])))
    names = list(dict.fromkeys(p for r in records for p in (r.get("parts_cpu_ms") if
                                                            "cpu_time_ms" in r else
                                                            r.get("parts_ms")) or {}))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(keys) + 2), 4.8))
    colours = plt.get_cmap("tab10")
    def find(model: str, key: tuple[str, str]) -> dict[str, Any] | None:
        return next((r for r in records if r["model"] == model
                     and (r["phase"], r["size"]) == key), None)

    for side, model in enumerate(pair):
        for i, key in enumerate(keys):
            r, ref = find(model, key), find(pair[1], key)
            if r is None or ref is None:
                continue
            bottom = 0.0
            for j, n in enumerate(names):
                v = (_part(r, n) or 0.0) / _time(ref)
                ax.bar(i + (side - 0.5) * 0.4, v, 0.38, bottom=bottom, color=colours(j),
                       hatch="//" if side else None, edgecolor="white",
                       label=n if side == 0 and i == 0 else None)
                bottom += v
    ax.set_xticks(range(len(keys)), [f"{p}\n{s}" for p, s in keys])
    ax.set_ylabel(f"{'CPU ' if records and 'cpu_time_ms' in records[0] else ''}time / "
                  f"{TASK_MODELS[pair[1]][2]}'s")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_title(f"where the time goes: {TASK_MODELS[pair[0]][2]} (left, plain)\nvs "
                 f"{TASK_MODELS[pair[1]][2]} (right, hatched)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
