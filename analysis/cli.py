"""``tools/analyze.py``: attention maps, injectivity, rank and effective receptive field.

Each subcommand takes a model (timm name + ``--model-kwargs``, and/or ``--checkpoint``), images
(``--images`` files / folders / globs, else generated ones) and writes PNG figures and a JSON of
the numbers to ``--out``. See the README section *Analysis* for examples.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .erf import DEFAULT_THRESHOLDS, area_fractions, erf_map
from .images import Inputs, load_inputs
from .injectivity import injectivity_report, single_image
from .maps import (
    DEFAULT_MAX_TOKENS,
    SiteTensors,
    TokenLimitError,
    attention_weights,
    counterpart_kinds,
    head_local_weights,
    site_output,
)
from .models import LoadedModel, load_model, parse_model_kwargs, parse_model_spec
from .rank import rank_report
from .sites import build_site_tensors, capture, find_sites, select_sites

__all__ = ["build_parser", "check_site", "main"]

DEFAULT_POINTS = ("0.5,0.5", "0.3,0.3", "0.75,0.6")
# The rebuilt maps must give the module's output to this relative accuracy (float32 modules).
CHECK_RTOL = 1e-3


# ---- shared plumbing ---------------------------------------------------------------------------

def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help="timm name (optional with a Lightning checkpoint of this "
                                   "project, whose hyper-parameters name it)")
    g.add_argument("--model-kwargs", nargs="*", metavar="KW",
                   help="constructor overrides: one JSON object or key=value items, e.g. "
                        "attn_types=SSSS 'depths=[1,1,1,1]'")
    g.add_argument("--checkpoint", help="official / plain state dict (through the family's "
                                        "filter) or a Lightning checkpoint of this project")
    g.add_argument("--ema", action="store_true", help="take the EMA weights of a Lightning "
                                                      "classification checkpoint")


def _add_input_args(p: argparse.ArgumentParser, num_images: int) -> None:
    g = p.add_argument_group("inputs")
    g.add_argument("--images", nargs="*", help="image files, folders (searched recursively) or "
                                               "globs; default: generated shapes")
    g.add_argument("--num-images", type=int, default=num_images)
    g.add_argument("--size", type=int, nargs="+", metavar="PX",
                   help="input H [W] (default: the checkpoint's / model's img_size)")
    g.add_argument("--seed", type=int, default=0, help="seed of the generated images and of "
                                                       "random-init weights")
    g.add_argument("--out", default="work_dirs/analysis", help="output folder")
    g.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")


def _add_map_args(p: argparse.ArgumentParser, default_blocks: Sequence[str]) -> None:
    p.add_argument("--block", nargs="+", default=list(default_blocks), metavar="S.I",
                   help="blocks as stage.index (e.g. 0.0 2.1) or 'all'")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help="refuse explicit N x N maps over more tokens than this")


def _size(args: argparse.Namespace, lm: LoadedModel) -> tuple[int, int]:
    if not args.size:
        return lm.default_size()
    if len(args.size) > 2:
        raise ValueError(f"--size takes H or H W, got {args.size}")
    return (args.size[0], args.size[-1])


def _load(args: argparse.Namespace) -> LoadedModel:
    torch.manual_seed(args.seed)  # a random-init model is the same one run after run
    return load_model(args.model, parse_model_kwargs(args.model_kwargs), args.checkpoint,
                      ema=args.ema)


def _inputs(args: argparse.Namespace, lm: LoadedModel) -> Inputs:
    mean, std = lm.mean_std()
    return load_inputs(args.images, _size(args, lm), mean, std, args.num_images, args.seed)


def _model_info(lm: LoadedModel) -> dict[str, Any]:
    return {"name": lm.name, "kwargs": lm.kwargs, "label": lm.label,
            "checkpoint": lm.checkpoint or None}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, np.integer)):
        return _jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(_jsonable(data), indent=1) + "\n")


def check_site(t: SiteTensors, rows: torch.Tensor | None = None) -> dict[str, float]:
    """How well the explicit maps times V reproduce the module's own output (for ``rows``);
    raises if worse than ``CHECK_RTOL`` relative (the maps would not be the module's)."""
    rows = torch.arange(t.n_queries) if rows is None else rows
    got = site_output(t, rows)
    want = t.expected[:, rows]
    err = float((got - want).abs().max())
    scale = float(want.abs().max()) or 1.0
    if err > CHECK_RTOL * scale:
        raise RuntimeError(f"the rebuilt attention maps do not reproduce the module's output "
                           f"({t.description}): max error {err:.3g} for outputs up to "
                           f"{scale:.3g}")
    return {"max_abs_error": err, "max_abs_output": scale, "rows_checked": len(rows)}


def _sample_rows(n: int, k: int = 64) -> torch.Tensor:
    return torch.linspace(0, n - 1, min(n, k)).round().long().unique()


def _sites(lm: LoadedModel, blocks: Sequence[str], inputs: Inputs, max_tokens: int):
    sites = select_sites(find_sites(lm.model), blocks)
    captured = capture(lm.model, sites, inputs.tensor)
    for site in sites:
        yield site, build_site_tensors(site, captured, max_tokens)


def _point(text: str) -> tuple[float, float]:
    try:
        y, x = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"a point is 'y,x' as fractions of the image height and width, "
                         f"got {text!r}") from None
    if not (0 <= y <= 1 and 0 <= x <= 1):
        raise ValueError(f"point {text!r}: y and x must be fractions in [0, 1]")
    return y, x


def _query(t: SiteTensors, frac: tuple[float, float], size: tuple[int, int]
           ) -> tuple[int, tuple[int, int], tuple[float, float]]:
    """Query token of an image point: (token index, grid (y, x), the token's centre in pixels,
    where the figures mark it)."""
    big_h, big_w = size
    h, w = t.query_hw
    sh, sw = -(-big_h // h), -(-big_w // w)    # pixels per token (grids are ceil(H / stride))
    py, px = min(frac[0] * big_h, big_h - 1), min(frac[1] * big_w, big_w - 1)
    ty, tx = min(int(py // sh), h - 1), min(int(px // sw), w - 1)
    centre = (min((ty + 0.5) * sh, big_h - 0.5) - 0.5, min((tx + 0.5) * sw, big_w - 0.5) - 0.5)
    return t.grid_query(ty, tx), (ty, tx), centre


def _select_head(w: torch.Tensor, head: int | None) -> torch.Tensor:
    """(H, ...) -> (...): one head, or the mean over heads."""
    return w.mean(dim=0) if head is None else w[head]


def _neighbourhood_share(t: SiteTensors, w: torch.Tensor, yx: tuple[int, int]) -> float | None:
    """Share of |w| on the query's 3x3 neighbourhood of keys (same grid only)."""
    if t.key_hw != t.query_hw:
        return None
    g = t.key_grid(w).abs()
    y, x = yx
    total = float(w.abs().sum())
    near = float(g[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].sum())
    return near / total if total > 0 else None


def _map_stats(t: SiteTensors, w: torch.Tensor, yx: tuple[int, int]) -> dict[str, Any]:
    hk, wk = t.key_hw
    grid_end = t.key_prefix + hk * wk
    return {"sum": float(w.sum()), "min": float(w.min()), "max": float(w.max()),
            "neighbourhood_3x3_share": _neighbourhood_share(t, w, yx),
            "prefix_weight": float(w[:t.key_prefix].sum()) if t.key_prefix else None,
            "padding_weight": float(w[grid_end:].sum()) if w.numel() > grid_end else None}


# ---- attention ---------------------------------------------------------------------------------

def _panels(t: SiteTensors, maps: list[tuple[str, str, torch.Tensor]], yx: tuple[int, int],
            pix: tuple[float, float], size: tuple[int, int]
            ) -> tuple[list[dict], dict[str, dict]]:
    """Figure panels and JSON stats of one query's maps ((title, name, (Nk,) weights))."""
    from .plots import upsample

    panels, stats = [], {}
    for title, name, w in maps:
        st = stats[name] = _map_stats(t, w, yx)
        grid = t.key_grid(w).numpy()
        share = st["neighbourhood_3x3_share"]
        title += (f"\nsum {st['sum']:.2f}, range [{st['min']:.2g}, {st['max']:.2g}]"
                  + (f"\n3x3 share {share:.0%}" if share is not None else ""))
        panels.append({"title": title, "map": upsample(grid, size), "point": pix,
                       "signed": bool((grid < 0).any())})
    return panels, stats


def run_attention(args: argparse.Namespace) -> dict[str, Any]:
    from .plots import attention_figure

    lm = _load(args)
    inputs = _inputs(args, lm)
    img = args.image_index
    if not 0 <= img < len(inputs.sources):
        raise ValueError(f"--image-index {img}: only {len(inputs.sources)} image(s)")
    points = [_point(p) for p in args.points]
    size = inputs.pictures.shape[1:3]
    out_dir = Path(args.out)
    blocks = []
    for site, t in _sites(lm, args.block, inputs, args.max_tokens):
        if args.head is not None and not 0 <= args.head < t.num_heads:
            raise ValueError(f"--head {args.head}: block {site.label} has {t.num_heads} heads")
        queries = [_query(t, f, size) for f in points]
        rows = torch.tensor([q[0] for q in queries])
        check = check_site(t, rows)
        kinds = counterpart_kinds(t)
        weights = {k: attention_weights(t, k, rows)[img] for k in kinds}     # (H, P, Nk)
        local = head_local_weights(t, rows, args.head)
        head_name = "mean over heads" if args.head is None else f"head {args.head}"
        fig_rows, row_titles, records = [], [], []
        for i, (_, yx, pix) in enumerate(queries):
            maps = [(f"{t.own} (own)", t.own, _select_head(weights[t.own][:, i], args.head))]
            if local is not None:
                maps.append(("local: " + " + ".join(lt.name for lt in t.locals), "local",
                             local[img, i]))
                maps.append((f"{t.own} + local", f"{t.own}+local", maps[0][2] + local[img, i]))
            maps += [(f"{k} (same q, k)", k, _select_head(weights[k][:, i], args.head))
                     for k in kinds[1:]]
            panels, stats = _panels(t, maps, yx, pix, size)
            fig_rows.append(panels)
            row_titles.append(f"query {points[i][0]:g},{points[i][1]:g}\ntoken {yx}")
            records.append({"point": points[i], "token": yx, "maps": stats})
        fig = out_dir / f"attention_{site.label}.png"
        attention_figure(fig, inputs.pictures[img], fig_rows, row_titles,
                         f"{lm.label} - block {site.label}: {t.description} - {head_name}")
        print(f"block {site.label}: {t.description}; {t.n_queries} queries x {t.n_keys} keys, "
              f"{t.num_heads} heads; maps x V vs module output: max error "
              f"{check['max_abs_error']:.2e} -> {fig}")
        blocks.append({"block": site.label, "modules": [n for n, _ in site.modules],
                       "description": t.description, "queries": t.n_queries,
                       "keys": t.n_keys, "heads": t.num_heads, "head": args.head,
                       "local_terms": [lt.name for lt in t.locals], "check": check,
                       "points": records, "figure": str(fig)})
    return {"model": _model_info(lm), "inputs": inputs.sources,
            "image": inputs.sources[img], "size": list(size), "blocks": blocks}


# ---- injectivity -------------------------------------------------------------------------------

def run_injectivity(args: argparse.Namespace) -> dict[str, Any]:
    from .plots import injectivity_figure, upsample

    lm = _load(args)
    inputs = _inputs(args, lm)
    size = inputs.pictures.shape[1:3]
    point = _point(args.point)
    out_dir = Path(args.out)
    blocks = []
    for site, t in _sites(lm, args.block, inputs, args.max_tokens):
        check = check_site(t, _sample_rows(t.n_queries))
        head = min(args.head, t.num_heads - 1)
        rep = injectivity_report(t, image=0, alpha=args.alpha, n_rays=args.rays, tol=args.tol)
        row, yx, pix = _query(t, point, size)
        rows = torch.tensor([row])
        maps = {}
        one = single_image(t, 0)
        for kind in rep:
            p1 = attention_weights(one, kind, rows)[0, head, 0]
            p2 = attention_weights(one, kind, rows, q=args.alpha * one.q[:, :, rows])[0, head, 0]
            maps[kind] = [upsample(t.key_grid(p).numpy(), size) for p in (p1, p2)]
        fig = out_dir / f"injectivity_{site.label}.png"
        injectivity_figure(fig, inputs.pictures[0], maps, {k: v["total"] for k, v in rep.items()},
                           pix, args.alpha, f"{lm.label} - block {site.label}: "
                           f"{t.description}\nmaps: query token {yx}, head {head}")
        summary = ", ".join(
            f"{k}: (q,{args.alpha:g}q) identical {v['total']['scaled']['identical']}/"
            f"{v['total']['scaled']['queries']}, colliding queries "
            f"{v['total']['real']['colliding_queries']}" for k, v in rep.items())
        print(f"block {site.label}: {summary} -> {fig}")
        blocks.append({"block": site.label, "description": t.description,
                       "queries": t.n_queries, "keys": t.n_keys, "heads": t.num_heads,
                       "check": check, "figure": str(fig), "figure_query": {"point": point,
                       "token": yx, "head": head}, "kinds": rep})
    return {"model": _model_info(lm), "inputs": inputs.sources[:1], "size": list(size),
            "tol": args.tol, "alpha": args.alpha, "blocks": blocks}


# ---- rank --------------------------------------------------------------------------------------

def run_rank(args: argparse.Namespace) -> dict[str, Any]:
    from .plots import rank_figure

    lm = _load(args)
    inputs = _inputs(args, lm)
    blocks, means, labels = [], [], []
    spectra, spectra_site = {}, None
    for site, t in _sites(lm, args.block, inputs, args.max_tokens):
        check = check_site(t, _sample_rows(t.n_queries))
        rep = rank_report(t, images=range(len(inputs.sources)), rtol=args.rtol)
        labels.append(site.label)
        means.append({k: v["mean"] for k, v in rep.items()})
        if spectra_site is None:
            spectra_site = site.label
            spectra = {k: v["heads"][0]["singular_values"] for k, v in rep.items()}
        summary = ", ".join(f"{k}: rank {v['mean']['rank']:.1f}, effective "
                            f"{v['mean']['effective_rank']:.1f}" for k, v in rep.items())
        print(f"block {site.label} ({t.n_queries}x{t.n_keys}, head dim {t.head_dim}): {summary}")
        blocks.append({"block": site.label, "description": t.description,
                       "queries": t.n_queries, "keys": t.n_keys, "heads": t.num_heads,
                       "head_dim": t.head_dim, "check": check, "kinds": rep})
    fig = Path(args.out) / "rank.png"
    rank_figure(fig, labels, means, spectra, spectra_site,
                f"{lm.label}: attention matrix rank per block ({len(inputs.sources)} image(s))")
    print(f"-> {fig}")
    return {"model": _model_info(lm), "inputs": inputs.sources,
            "size": list(inputs.pictures.shape[1:3]), "figure": str(fig), "blocks": blocks}


# ---- erf ---------------------------------------------------------------------------------------

def run_erf(args: argparse.Namespace) -> dict[str, Any]:
    from .plots import erf_figure

    specs: list[tuple[str | None, dict, str | None]] = []
    if args.model or args.checkpoint:
        specs.append((args.model, parse_model_kwargs(args.model_kwargs), args.checkpoint))
    specs += [parse_model_spec(s) for s in args.compare or []]
    if not specs:
        raise ValueError("give --model / --checkpoint, or models to --compare")
    out_dir = Path(args.out)
    maps_dir = out_dir / "erf_maps"
    maps_dir.mkdir(parents=True, exist_ok=True)
    models, fig_rows = [], []
    inputs = None
    for m, (name, kwargs, ckpt) in enumerate(specs):
        torch.manual_seed(args.seed)  # random-init models: the same weights run after run
        lm = load_model(name, kwargs, ckpt, ema=args.ema)
        if inputs is None:  # one set of images for every model (the first model's size)
            inputs = _inputs(args, lm)
        n_levels = len(lm.model.feature_info)
        stages = args.stages if args.stages is not None else list(range(n_levels))
        bad = [s for s in stages if not 0 <= s < n_levels]
        if bad:
            raise ValueError(f"--stages {bad}: {lm.name} has feature levels 0..{n_levels - 1}")
        panels, records = [], []
        for s in stages:
            start = time.perf_counter()
            grad, centre, out_hw = erf_map(lm.model, inputs.tensor, s, args.batch)
            path = maps_dir / f"model{m}_stage{s}.npz"
            np.savez_compressed(path, grad=grad, centre=np.array(centre))
            fr = area_fractions(grad, centre, args.thresholds, log=args.log)
            secs = time.perf_counter() - start
            panels.append({"stage": s, "grad": grad, "centre": centre, "fractions": fr})
            records.append({"stage": s, "output_grid": out_hw, "centre_px": centre,
                            "map": str(path), "fractions": fr, "seconds": round(secs, 2)})
            half = fr.get("0.5", {}).get("square")
            print(f"{lm.label} stage {s}: output {out_hw[0]}x{out_hw[1]}, 50% of the mass in "
                  f"{'-' if half is None else f'{100 * half:.3g}%'} of the area "
                  f"({secs:.1f} s) -> {path}")
        fig_rows.append((lm.label, panels))
        models.append({"model": _model_info(lm), "stages": records})
    fig = out_dir / "erf.png"
    size = inputs.pictures.shape[1:3]
    erf_figure(fig, fig_rows, f"effective receptive field at {size[0]}x{size[1]}, "
                              f"{len(inputs.sources)} image(s); log scale, {args.decades:g} "
                              "decades; squares: 20/50/99% of the mass", decades=args.decades)
    print(f"-> {fig}")
    return {"inputs": inputs.sources, "size": list(size), "thresholds": list(args.thresholds),
            "log": args.log, "figure": str(fig), "models": models}


# ---- entry point -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="analyze.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("attention", help="attention maps of chosen queries (own, local terms, "
                                         "linear and softmax counterparts)")
    _add_model_args(p)
    _add_input_args(p, num_images=1)
    _add_map_args(p, ["0.0"])
    p.add_argument("--points", nargs="+", default=list(DEFAULT_POINTS), metavar="Y,X",
                   help="query points as fractions of the image height and width")
    p.add_argument("--head", type=int, help="one head (default: the mean over heads)")
    p.add_argument("--image-index", type=int, default=0, help="which input image to draw")
    p.set_defaults(run=run_attention)

    p = sub.add_parser("injectivity", help="distinct queries with identical distributions: "
                                           "real, scaled (q, 2q) and collinear queries")
    _add_model_args(p)
    _add_input_args(p, num_images=1)
    _add_map_args(p, ["all"])
    p.add_argument("--alpha", type=float, default=2.0, help="the scaled query is alpha * q")
    p.add_argument("--rays", type=int, default=32, help="collinear rays per head")
    p.add_argument("--tol", type=float, default=1e-6, help="relative tolerance of 'identical'")
    p.add_argument("--point", default="0.5,0.5", metavar="Y,X", help="query drawn in the figure")
    p.add_argument("--head", type=int, default=0, help="head drawn in the figure")
    p.set_defaults(run=run_injectivity)

    p = sub.add_parser("rank", help="rank, effective rank and entropy per block and head")
    _add_model_args(p)
    _add_input_args(p, num_images=1)
    _add_map_args(p, ["all"])
    p.add_argument("--rtol", type=float, help="singular values above rtol * largest count "
                                              "(default max(N, M) * float64 eps)")
    p.set_defaults(run=run_rank)

    p = sub.add_parser("erf", help="effective receptive field of stage outputs")
    _add_model_args(p)
    _add_input_args(p, num_images=8)
    p.add_argument("--compare", nargs="+", metavar="SPEC",
                   help="models to draw together: NAME[:key=value,...][@CHECKPOINT] or "
                        "@CHECKPOINT, e.g. inline_swin_tiny inline_swin_tiny:attn_types=SSSS")
    p.add_argument("--stages", type=int, nargs="+", help="feature levels (default: all)")
    p.add_argument("--batch", type=int, default=2, help="images per backward pass")
    p.add_argument("--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS))
    p.add_argument("--log", action="store_true", help="area fractions of log10(1 + map), as "
                                                      "RepLKNet computes them")
    p.add_argument("--decades", type=float, default=5.0,
                   help="the figure's colour range: this many decades below each map's peak")
    p.set_defaults(run=run_erf)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        result = args.run(args)
    except (TokenLimitError, ValueError, FileNotFoundError) as e:
        print(f"analyze.py {args.command}: error: {e}", file=sys.stderr)
        return 2
    result = {"command": ["analyze.py", *(sys.argv[1:] if argv is None else argv)], **result,
              "seconds": round(time.perf_counter() - start, 2)}
    path = out / f"{args.command}.json"
    _write_json(path, result)
    print(f"{args.command}: {result['seconds']:.1f} s -> {path}")
    return 0
