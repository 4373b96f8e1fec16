"""Inputs for the analyses: image files (or folders of them, e.g. the generated demo data under
``data/demo``), or generated images of simple shapes when none are given."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = ["Inputs", "collect_image_files", "generated_images", "load_inputs"]

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class Inputs:
    tensor: torch.Tensor          # (B, 3, H, W), normalised
    pictures: np.ndarray          # (B, H, W, 3) uint8, for drawing
    sources: list[str]            # file paths, or "generated:<seed>:<i>"


def collect_image_files(paths: Sequence[str], limit: int | None = None) -> list[Path]:
    """Files given directly, through a glob, or found (sorted, recursively) in folders."""
    files: list[Path] = []
    for p in paths:
        matches = sorted(glob.glob(p)) if any(ch in p for ch in "*?[") else [p]
        if not matches:
            raise FileNotFoundError(f"no file matches {p}")
        for m in matches:
            path = Path(m)
            if path.is_dir():
                files.extend(sorted(f for f in path.rglob("*") if f.suffix.lower() in IMAGE_EXTS))
            elif path.is_file():
                files.append(path)
            else:
                raise FileNotFoundError(f"image not found: {m}")
    if not files:
        raise FileNotFoundError(f"no images in {list(paths)}")
    return files[:limit] if limit else files


def generated_images(n: int, size: tuple[int, int], seed: int = 0) -> list[Image.Image]:
    """``n`` pictures of one to three filled shapes (ellipse, box, triangle) on a plain
    background: distinct objects and flat regions, as in the demo data."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for _ in range(n):
        bg = tuple(int(c) for c in rng.integers(0, 256, 3))
        img = Image.new("RGB", (w, h), bg)
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
            r = rng.uniform(0.1, 0.3) * min(h, w)
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape = int(rng.integers(3))
            if shape == 0:
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
            elif shape == 1:
                draw.rectangle([cx - r, cy - 0.7 * r, cx + r, cy + 0.7 * r], fill=color)
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
        out.append(img)
    return out


def load_inputs(paths: Sequence[str] | None, size: tuple[int, int], mean: Sequence[float],
                std: Sequence[float], num_images: int, seed: int = 0) -> Inputs:
    """``num_images`` inputs resized to ``size`` (H, W): from ``paths`` when given, else
    generated. Normalised with the model's mean and std."""
    if paths:
        files = collect_image_files(paths, num_images)
        pics = [Image.open(f).convert("RGB") for f in files]
        sources = [os.fspath(f) for f in files]
    else:
        pics = generated_images(num_images, size, seed)
        sources = [f"generated:{seed}:{i}" for i in range(num_images)]
    h, w = size
    arr = np.stack([np.asarray(p.resize((w, h), Image.BILINEAR), dtype=np.uint8) for p in pics])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return Inputs((x - m) / s, arr, sources)
