"""Padded pixels per epoch with and without aspect-ratio grouping, on image sizes alone.

``python -m benchmarks.aspect_padding [--coco-json FILE] [--scale 1333 800]``: each epoch's batches
are built as training builds them (a ``DistributedSampler`` shard per process, then plain
``BatchSampler`` or :class:`~lightning_modules.aspect_ratio.AspectRatioBatches`), images take
the size ``Resize(scale, keep_ratio=True)`` gives them, and batches are padded to a multiple of
32 (``DetDataPreprocessor``). Without ``--coco-json`` the sizes are COCO-like: 640 x 480 and
640 x 427 (each also as portrait) in the stated landscape shares. No images are read.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import numpy as np
from torch.utils.data import BatchSampler, DistributedSampler

from lightning_modules.aspect_ratio import AspectRatioBatches, padding_fraction

__all__ = ["coco_like_sizes", "compare_padding", "rescaled"]


def rescaled(height: int, width: int, scale: Sequence[int] = (1333, 800)) -> tuple[int, int]:
    """``(height, width)`` after mmcv's keep-ratio resize to ``scale``: the long side at most
    ``max(scale)``, the short side at most ``min(scale)``."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def coco_like_sizes(n: int, landscape: float, seed: int = 0) -> list[tuple[int, int]]:
    """``n`` original ``(height, width)``: COCO's two commonest shapes, 640 x 480 and
    640 x 427, landscape with probability ``landscape``, else portrait."""
    rng = np.random.default_rng(seed)
    short = rng.choice([480, 427], size=n)
    wide = rng.random(n) < landscape
    return [(int(s), 640) if w else (640, int(s)) for s, w in zip(short, wide, strict=True)]


class _Sizes:
    """Just enough of a dataset for the samplers: its length and each image's size."""

    def __init__(self, sizes: Sequence[tuple[int, int]]):
        self.sizes = sizes

    def __len__(self) -> int:
        return len(self.sizes)

    def get_data_info(self, i: int) -> dict:
        return {"height": self.sizes[i][0], "width": self.sizes[i][1]}


def compare_padding(sizes: Sequence[tuple[int, int]], batch_size: int = 2, world_size: int = 8,
                    epochs: int = 2, scale: Sequence[int] = (1333, 800), seed: int = 0
                    ) -> dict[str, float]:
    """Padding fraction of all training batches over ``epochs`` (every process), plain and
    grouped, for images of original ``sizes``."""
    data = _Sizes(sizes)
    seen = [rescaled(h, w, scale) for h, w in sizes]
    out = {}
    for name in ("plain", "grouped"):
        batches = []
        for epoch in range(epochs):
            for rank in range(world_size):
                shard = DistributedSampler(data, world_size, rank, shuffle=True, seed=seed)
                shard.set_epoch(epoch)
                make = AspectRatioBatches if name == "grouped" else BatchSampler
                batches += list(make(shard, batch_size, False))
        out[name] = padding_fraction(seen, batches)
    return out


def _coco_sizes(path: str) -> list[tuple[int, int]]:
    with open(path) as f:
        return [(im["height"], im["width"]) for im in json.load(f)["images"]]


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--coco-json", help="a COCO annotation file to take the image sizes from")
    ap.add_argument("--scale", type=int, nargs=2, default=(1333, 800))
    ap.add_argument("--batch-size", type=int, default=2, help="images per process")
    ap.add_argument("--world-size", type=int, default=8)
    ap.add_argument("-n", type=int, default=4000, help="COCO-like images")
    args = ap.parse_args(argv)
    runs = ({args.coco_json: _coco_sizes(args.coco_json)} if args.coco_json else
            {f"coco-like, {p:.0%} landscape": coco_like_sizes(args.n, p)
             for p in (0.5, 0.7, 0.9)})
    results = {}
    for name, sizes in runs.items():
        r = compare_padding(sizes, args.batch_size, args.world_size, scale=args.scale)
        results[name] = r
        print(f"{name}: {len(sizes)} images, batch {args.batch_size} x {args.world_size}: "
              f"padding {r['plain']:.1%} of batch pixels plain, {r['grouped']:.1%} grouped")
    return results


if __name__ == "__main__":
    main()
