"""Checkpoint and position-embedding helpers shared by the family files."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, resize_rel_pos_bias_table
from torch import nn

__all__ = [
    "load_checkpoint",
    "pad_to_multiple",
    "resize_pos_embed_to",
    "resize_rel_pos_tables",
    "unwrap_state_dict",
]

_WRAPPER_KEYS = ("model", "state_dict", "model_ema")


def unwrap_state_dict(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """The weights inside an official or training checkpoint.

    Takes the first of ``model`` / ``state_dict`` / ``model_ema`` that holds a mapping (the
    official InLine and L2ViT releases use ``model``; Lightning and mmengine use ``state_dict``),
    and strips DDP's ``module.`` prefix.
    """
    sd = checkpoint
    for key in _WRAPPER_KEYS:
        if isinstance(sd, Mapping) and isinstance(sd.get(key), Mapping):
            sd = sd[key]
            break
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def resize_pos_embed_to(pos_embed: torch.Tensor, target: torch.Tensor, num_prefix_tokens: int,
                        old_hw: tuple[int, int] | None = None,
                        new_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """Bicubically resample a (1, P + H*W, C) learned position embedding to ``target``'s length.

    Grids default to square when not given (the official models are built square).
    """
    same_grid = old_hw is None or new_hw is None or tuple(old_hw) == tuple(new_hw)
    if pos_embed.shape == target.shape and same_grid:  # 14x14 and 7x28 share a length
        return pos_embed
    n_new = target.shape[1] - num_prefix_tokens
    if new_hw is None:
        side = int(round(n_new ** 0.5))
        if side * side != n_new:
            raise ValueError(f"cannot infer the grid of a {n_new}-token position embedding; "
                             "pass new_hw")
        new_hw = (side, side)
    return resample_abs_pos_embed(pos_embed, list(new_hw), old_size=old_hw,
                                  num_prefix_tokens=num_prefix_tokens, verbose=False)


def resize_rel_pos_tables(state_dict: dict[str, torch.Tensor], model: nn.Module
                          ) -> dict[str, torch.Tensor]:
    """Resize every ``relative_position_bias_table`` whose shape differs from the model's (a
    checkpoint trained with another window size) and drop stale ``relative_position_index``
    buffers in favour of the model's own."""
    own = model.state_dict()
    for k in list(state_dict):
        if k.endswith("relative_position_index") and k in own:
            state_dict[k] = own[k]
        elif k.endswith("relative_position_bias_table") and k in own:
            old, new = state_dict[k], own[k]
            if old.shape != new.shape:
                ow, nw = int(round(old.shape[0] ** 0.5)), int(round(new.shape[0] ** 0.5))
                old_win, new_win = (ow + 1) // 2, (nw + 1) // 2
                state_dict[k] = resize_rel_pos_bias_table(
                    old, new_window_size=(new_win, new_win), new_bias_shape=new.shape,
                    old_window_size=(old_win, old_win))
    return state_dict


def load_checkpoint(model: nn.Module, path: str | os.PathLike, filter_fn=None,
                    strict: bool = True, weights_only: bool = True):
    """Load a checkpoint file into ``model`` through the family's ``checkpoint_filter_fn``.

    ``weights_only=True`` (torch's safe unpickler) unless the caller opts out for a trusted file.
    Returns the ``load_state_dict`` result (missing / unexpected keys).
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=weights_only)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except Exception as e:  # pickle errors and truncated files
        raise RuntimeError(f"could not read checkpoint {path}: {e}. If it is a trusted file "
                           "holding more than tensors, load it with weights_only=False") from e
    sd = filter_fn(ckpt, model) if filter_fn is not None else unwrap_state_dict(ckpt)
    try:
        return model.load_state_dict(sd, strict=strict)
    except RuntimeError as e:
        raise RuntimeError(f"checkpoint {path} does not match {type(model).__name__}: {e}") from e


def pad_to_multiple(x: torch.Tensor, multiple: int | tuple[int, int]) -> torch.Tensor:
    """Zero-pad a (B, C, H, W) image at the bottom/right to multiples of ``multiple``."""
    mh, mw = (multiple, multiple) if isinstance(multiple, int) else multiple
    ph, pw = (-x.shape[-2]) % mh, (-x.shape[-1]) % mw
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x
