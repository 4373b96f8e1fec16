"""Helpers shared by the family files: argument checks, weight init, the block runner, the timm
classifier API, model building, checkpoints, position embeddings and padding to any input size.

Each family file keeps its own model class and timm registration; what lives here is only what
was written out identically in several of them, so that a fix lands in every family at once.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed, resize_rel_pos_bias_table, trunc_normal_
from timm.models import build_model_with_cfg
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "ClassifierMixin",
    "build_backbone",
    "ceil_div",
    "check_global_pool",
    "check_image",
    "check_model_args",
    "check_output_fmt",
    "default_cfg",
    "head_per_position",
    "init_weights_trunc_normal",
    "is_static_zero",
    "load_checkpoint",
    "pad_amount",
    "pad_hw",
    "pad_to_multiple",
    "pos_embed_for_grid",
    "read_checkpoint",
    "resize_pos_embed_to",
    "resize_rel_pos_tables",
    "run_blocks",
    "safe_torch_load",
    "to_pair",
    "trusted_checkpoints",
    "unpad_hw",
    "unwrap_state_dict",
]

_M = TypeVar("_M", bound=nn.Module)

# An FX leaf (as timm registers it for its own tracer): it compares sizes in Python.
torch.fx.wrap("resample_abs_pos_embed")


# ---- argument checks --------------------------------------------------------------------------

def _alternatives(options: Sequence[str]) -> str:
    """``'a' or 'b'`` for two options, ``one of ('a', 'b', 'c')`` for more (error messages)."""
    return " or ".join(map(repr, options)) if len(options) <= 2 else f"one of {tuple(options)}"


def check_global_pool(global_pool: str, allowed: Sequence[str]) -> None:
    """Reject a pooling the family's ``forward_head`` does not implement: an unknown string would
    otherwise silently mean 'no pooling'."""
    if global_pool not in allowed:
        raise ValueError(f"global_pool must be {_alternatives(allowed)}, got {global_pool!r}")


def check_output_fmt(output_fmt: str, allowed: Sequence[str]) -> None:
    """``forward_intermediates``' layout check (the families differ in which layouts they give)."""
    if output_fmt not in allowed:
        raise ValueError(f"output_fmt must be {_alternatives(allowed)}, got {output_fmt!r}")


def check_model_args(global_pool: str, allowed_pools: Sequence[str], *, num_classes: int,
                     drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                     drop_path_rate: float = 0.0,
                     per_stage: Mapping[str, Sequence[Any]] | None = None,
                     num_stages: int | None = None,
                     positive_ints: Mapping[str, int | Sequence[int]] | None = None,
                     positive: Mapping[str, float | Sequence[float]] | None = None,
                     widths: Sequence[int] = (), heads: Sequence[int] = ()) -> None:
    """The ``__init__`` checks of every family, so that a bad argument fails at construction with
    a message that names it rather than deep in a forward. In this order:

    - ``per_stage``: sequences with one entry per stage, all as long as the first (or as
      ``num_stages`` for a family with a fixed number of stages);
    - ``positive_ints``: ints (or sequences of them) that must be >= 1;
    - ``positive``: numbers (or sequences of them) that must be > 0;
    - ``widths`` / ``heads``: each stage's width divisible by its number of heads;
    - the pooling, ``num_classes >= 0`` and the dropout / drop-path rates in [0, 1).
    """
    per_stage = dict(per_stage or {})
    if per_stage:
        (first, ref), *_ = per_stage.items()
        n = len(ref) if num_stages is None else num_stages
        for name, seq in per_stage.items():
            if len(seq) != n or not n:
                expected = (f"the model has {n} stages" if num_stages is not None
                            else f"{first} has {n} stages")
                raise ValueError(f"{name} has {len(seq)} entries, {expected} (one entry per "
                                 f"stage, at least one stage)")
    for name, v in (positive_ints or {}).items():
        values = v if isinstance(v, Sequence) else (v,)
        if not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) and i >= 1
                   for i in values):
            raise ValueError(f"{name} must be a positive int" + (" per stage" if values is v
                                                                 else "") + f", got {v!r}")
    for name, v in (positive or {}).items():
        values = v if isinstance(v, Sequence) else (v,)
        if not all(isinstance(x, numbers.Real) and x > 0 for x in values):
            raise ValueError(f"{name} must be > 0, got {v!r}")
    for i, (w, h) in enumerate(zip(widths, heads, strict=True)):
        if w % h:
            where = f"stage {i}: " if len(widths) > 1 else ""
            raise ValueError(f"{where}width {w} is not divisible by num_heads {h}")
    check_global_pool(global_pool, allowed_pools)
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    for name, p in (("drop_rate", drop_rate), ("attn_drop_rate", attn_drop_rate),
                    ("drop_path_rate", drop_path_rate)):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {p}")


def check_image(x: torch.Tensor, in_chans: int) -> None:
    """That ``x`` is a (B, ``in_chans``, H, W) batch with H, W >= 1 (every such size runs; an empty
    or mis-shaped input would otherwise fail deep inside with a confusing message). Through
    ``torch._assert``, which FX traces and torch.export keeps as a check on symbolic sizes."""
    msg = f"expected images of shape (B, {in_chans}, H, W) with H, W >= 1"
    torch._assert(x.ndim == 4, msg)
    torch._assert(x.shape[1] == in_chans, msg)
    torch._assert(x.shape[2] >= 1, msg)
    torch._assert(x.shape[3] >= 1, msg)


def to_pair(v: int | Sequence[int], name: str) -> tuple[int, int]:
    """A positive int or a pair of them -> (h, w); ``name`` is for the error message."""
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2 or not all(isinstance(i, int) and i > 0 for i in t):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {v!r}")
    return t


# ---- weight init, checkpointing, the timm API --------------------------------------------------

def init_weights_trunc_normal(m: nn.Module, std: float = 0.02,
                              weight_types: tuple[type[nn.Module], ...] = (nn.Linear,)) -> None:
    """The official init of every family (use with ``model.apply``): truncated normal weights
    and zero biases on ``weight_types``, LayerNorm weight 1 / bias 0."""
    if isinstance(m, weight_types):
        trunc_normal_(m.weight, std=std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, *args: Any,
               checkpointing: bool = False) -> torch.Tensor:
    """The block runner of every family: ``x = block(x, *args)`` for each block in turn.

    With ``checkpointing`` (timm's ``set_grad_checkpointing``) each block runs through
    non-reentrant activation checkpointing while gradients are recorded: its activations are
    recomputed in backward instead of kept. Not while scripting, which cannot trace it.
    """
    checkpointing = checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting()
    for blk in blocks:
        x = checkpoint(blk, x, *args, use_reentrant=False) if checkpointing else blk(x, *args)
    return x


class ClassifierMixin:
    """timm's ``forward`` (``forward_features`` then ``forward_head``), ``get_classifier`` /
    ``reset_classifier`` / ``set_grad_checkpointing`` for a model with a linear ``head`` on
    ``num_features`` pooled features.

    Per family: ``global_pools`` (the poolings its ``forward_head`` implements) and
    ``reinit_head`` (re-apply the official init to a new head, as the official CSwin does;
    otherwise the head keeps ``nn.Linear``'s default init, as timm's models do).
    """

    global_pools: ClassVar[tuple[str, ...]] = ("avg", "")
    reinit_head: ClassVar[bool] = False

    head: nn.Module
    num_features: int
    num_classes: int
    global_pool: str
    grad_checkpointing: bool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            check_global_pool(global_pool, self.global_pools)
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = (nn.Linear(self.num_features, num_classes) if num_classes > 0
                     else nn.Identity())
        if self.reinit_head:
            init_weights_trunc_normal(self.head)


def head_per_position(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The classifier at every position of an unpooled (B, C, H, W) map (``global_pool=''``):
    logits as (B, classes, H, W), in the layout of the features, as timm expects."""
    return head(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def default_cfg(first_conv: str, **kwargs: Any) -> dict[str, Any]:
    """A variant's timm pretrained config: an ImageNet-1k classifier (``head``) at 224 x 224,
    bicubic, ImageNet mean / std; no download URL (the official weights are local files, loaded
    through the family's filter). ``kwargs`` override."""
    return {"url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None,
            "crop_pct": 0.9, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN,
            "std": IMAGENET_DEFAULT_STD, "first_conv": first_conv, "classifier": "head", **kwargs}


def build_backbone(model_cls: type[_M], variant: str, pretrained: bool,
                   filter_fn: Callable[[dict, _M], dict[str, torch.Tensor]],
                   default_out_indices: Sequence[int], **kwargs: Any) -> _M:
    """``build_model_with_cfg`` as every family calls it: the family's checkpoint filter for
    pretrained weights, and a ``features_only`` wrapper that uses ``forward_intermediates``."""
    out_indices = kwargs.pop("out_indices", default_out_indices)
    model = build_model_with_cfg(
        model_cls, variant, pretrained,
        pretrained_filter_fn=filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
        **kwargs)
    _check_pos_embed_grids(getattr(model, "model", model), variant)  # features_only wraps
    return model


def _check_pos_embed_grids(model: nn.Module, variant: str) -> None:
    """A construction ``img_size`` smaller than a stage's stride leaves that stage's learned
    position-embedding grid empty; the forward would then fail on a 0-element reshape."""
    grids = getattr(model, "grid_sizes", None) or [getattr(model, "grid_size", (1, 1))]
    for i, (gh, gw) in enumerate(grids):
        if gh < 1 or gw < 1:
            stride = model.feature_info[i]["reduction"]
            raise ValueError(
                f"img_size is too small for {variant}: the position-embedding grid of stage "
                f"{i + 1} (stride {stride}) would be {gh} x {gw}; img_size must be at least "
                f"{stride} on each side")


# ---- checkpoints and position embeddings -------------------------------------------------------

_WRAPPER_KEYS = ("model", "state_dict", "model_ema")
# heads.classifier.ImageClassifier as the Lightning classification module holds it.
_CLS_BACKBONE, _CLS_HEAD = "model.backbone.", "model.head."


def unwrap_state_dict(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """The weights inside an official or training checkpoint.

    Takes the first of ``model`` / ``state_dict`` / ``model_ema`` that holds a mapping (the
    official InLine and L2ViT releases use ``model``; Lightning and mmengine use ``state_dict``),
    and strips DDP's ``module.`` prefix. A checkpoint of this project's classification module
    (``model.backbone.*``, ``model.head.*``, ``model_ema.*``) gives its raw weights under the timm
    names, so it loads wherever an official checkpoint does.
    """
    sd = checkpoint
    for key in _WRAPPER_KEYS:
        if isinstance(sd, Mapping) and isinstance(sd.get(key), Mapping):
            sd = sd[key]
            break
    sd = {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}
    if any(k.startswith(_CLS_BACKBONE) for k in sd):
        sd = {(k[len(_CLS_BACKBONE):] if k.startswith(_CLS_BACKBONE) else k[6:]): v
              for k, v in sd.items() if k.startswith((_CLS_BACKBONE, _CLS_HEAD))}
    return sd


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


def pos_embed_for_grid(pos_embed: torch.Tensor, stored_hw: tuple[int, int],
                       hw: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
    """A learned (1, P + h*w, C) position embedding stored for ``stored_hw``, resampled to the
    grid ``hw`` of the input actually seen (itself when the grids match): any input size runs.

    The shortcut needs a concrete grid: under torch.export or FX tracing ``hw`` is symbolic and
    the traced graph always resamples (timm's resampler then skips its own size check too), so
    that it holds for every input size; resampling to the stored grid is the identity.
    """
    if all(isinstance(n, int) for n in hw) and tuple(hw) == tuple(stored_hw):
        return pos_embed
    # Called directly, not via resize_pos_embed_to: its shape shortcut would compare symbolic
    # token counts, and 14x14 and 7x28 grids share a length.
    return resample_abs_pos_embed(pos_embed, [hw[0], hw[1]], old_size=list(stored_hw),
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


# Opt-in to full unpickling (arbitrary code can run while loading): only for trusted files.
TRUSTED_ENV = "LAV_TRUSTED_CHECKPOINTS"
# Numpy scalars and arrays (mmengine's meta, some releases' metrics) are plain data.
_NUMPY_SAFE_GLOBALS = [
    np._core.multiarray.scalar,
    np._core.multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    *{type(np.dtype(t)) for t in ("bool", "int8", "int16", "int32", "int64", "uint8",
                                  "float16", "float32", "float64")},
]


def trusted_checkpoints() -> bool:
    """Whether the user opted in (``LAV_TRUSTED_CHECKPOINTS=1``) to full unpickling."""
    return os.environ.get(TRUSTED_ENV) == "1"


def safe_torch_load(file, map_location: Any = "cpu", weights_only: bool | None = None) -> Any:
    """``torch.load`` with ``weights_only=True`` (tensors, containers, numpy values), unless the
    caller passes ``weights_only=False`` or the user sets ``LAV_TRUSTED_CHECKPOINTS=1``. A file
    that needs more (an argparse Namespace, a yacs config, mmengine's HistoryBuffer) is refused
    with a message naming both ways to opt in."""
    if weights_only is False or trusted_checkpoints():
        return torch.load(file, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(_NUMPY_SAFE_GLOBALS):
            return torch.load(file, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError with its own long text
        if "weights_only" not in str(e) and "Unsupported global" not in str(e):
            raise
        name = getattr(file, "name", file)
        raise RuntimeError(
            f"checkpoint {name} holds Python objects beyond tensors and numpy values (for "
            f"example a training script's config or args, or an mmengine Runner's "
            f"HistoryBuffer), which torch refuses to unpickle safely. If you trust the file, set "
            f"{TRUSTED_ENV}=1 (or pass weights_only=False) to load it with "
            f"weights_only=False.") from e


def read_checkpoint(path: str | os.PathLike, weights_only: bool = True) -> Any:
    """A checkpoint file's contents (``safe_torch_load``), with errors that name the file: not
    found, truncated or corrupt, or holding objects that need the opt-in."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return safe_torch_load(path, weights_only=weights_only)
    except Exception as e:
        if str(path) in str(e):  # the opt-in message names the file already
            raise
        raise RuntimeError(f"could not read checkpoint {path} (truncated or corrupt?): {e}") from e


def load_checkpoint(model: nn.Module, path: str | os.PathLike, filter_fn=None,
                    strict: bool = True, weights_only: bool = True):
    """Load a checkpoint file into ``model`` through the family's ``checkpoint_filter_fn``.

    Safe unpickling (``safe_torch_load``) unless the caller opts out with
    ``weights_only=False`` for a trusted file. Returns the ``load_state_dict`` result.
    """
    ckpt = read_checkpoint(path, weights_only=weights_only)
    sd = filter_fn(ckpt, model) if filter_fn is not None else unwrap_state_dict(ckpt)
    try:
        return model.load_state_dict(sd, strict=strict)
    except RuntimeError as e:
        raise RuntimeError(f"checkpoint {path} does not match {type(model).__name__}: {e}") from e


# ---- padding to any input size ----------------------------------------------------------------
# In eager, sizes are ints. Under torch.export (and the dynamo ONNX exporter) sizes that depend on
# the input's height and width are SymInts, under torch.fx symbolic tracing Proxies: a Python
# branch on them would fix an exported graph to the example size (or stop an FX trace). So padded
# sizes are computed as integer arithmetic, and work that is a no-op at a given size (padding by
# zero, a shift of zero) is skipped only where the size is a concrete int.

def is_static_zero(n: int | torch.SymInt) -> bool:
    """Whether ``n`` is a concrete 0, i.e. the work it sizes can be skipped. False for a symbolic
    size (a SymInt or FX Proxy), whose value the traced graph must not assume."""
    return isinstance(n, int) and n == 0


def ceil_div(n: int | torch.SymInt, d: int) -> int | torch.SymInt:
    """ceil(n / d) for a positive int ``d``; ``n`` may be symbolic."""
    return (n + d - 1) // d


def pad_amount(n: int | torch.SymInt, multiple: int) -> int | torch.SymInt:
    """What to add to ``n`` to reach a multiple of ``multiple``. Written as ``ceil_div * multiple
    - n`` so that a symbolic padded size is a plain product, which views and reshapes into
    ``multiple``-sized blocks can match without a guard."""
    return 0 if multiple == 1 else ceil_div(n, multiple) * multiple - n


def pad_hw(x: torch.Tensor, multiple_h: int, multiple_w: int, channels_last: bool = False
           ) -> torch.Tensor:
    """Zero-pad a (B, C, H, W) map, or (B, H, W, C) with ``channels_last``, at the bottom / right
    to multiples of (``multiple_h``, ``multiple_w``). Returns ``x`` itself (no copy) when no
    padding is needed at a concrete size."""
    h, w = (x.shape[1], x.shape[2]) if channels_last else (x.shape[-2], x.shape[-1])
    ph, pw = pad_amount(h, multiple_h), pad_amount(w, multiple_w)
    if is_static_zero(ph) and is_static_zero(pw):
        return x
    return F.pad(x, (0, 0, 0, pw, 0, ph) if channels_last else (0, pw, 0, ph))


def unpad_hw(x: torch.Tensor, ph: int, pw: int, channels_last: bool = False) -> torch.Tensor:
    """Undo ``pad_hw``: crop ``ph`` rows and ``pw`` columns off the bottom / right, as a contiguous
    tensor (``x`` itself when nothing was padded at a concrete size). Cropping is padding by the
    negative amounts: unlike slicing to the original size, this needs no proof under torch.export
    that the original size is at most the padded one."""
    if is_static_zero(ph) and is_static_zero(pw):
        return x
    return F.pad(x, (0, 0, 0, -pw, 0, -ph) if channels_last else (0, -pw, 0, -ph))


def pad_to_multiple(x: torch.Tensor, multiple: int | tuple[int, int]) -> torch.Tensor:
    """Zero-pad a (B, C, H, W) image at the bottom/right to multiples of ``multiple``."""
    mh, mw = (multiple, multiple) if isinstance(multiple, int) else multiple
    return pad_hw(x, mh, mw)
