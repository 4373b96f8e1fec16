"""Models for the analyses: a timm name with keyword overrides, and an optional checkpoint.

Checkpoints (all read with ``backbones._helpers.read_checkpoint``, i.e. ``weights_only``):

- an official release or any plain state dict (``model`` / ``state_dict`` / ``model_ema``
  wrappers, ``module.`` prefixes), through the family's ``checkpoint_filter_fn``;
- a Lightning checkpoint of this project: classification (the backbone under the module's
  classifier attribute, e.g. ``model.backbone.``; ``--ema`` takes the EMA copy) or detection /
  segmentation (the backbone under ``model.backbone.model.``). The prefix is found by matching
  the checkpoint's keys against the model's own names rather than hard-coded, so a renamed
  attribute still loads; the model name and overrides come from the checkpoint's
  hyper-parameters when not given.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import timm
from torch import nn

__all__ = [
    "LoadedModel",
    "backbone_prefix",
    "load_model",
    "parse_model_kwargs",
    "parse_model_spec",
]

# Overrides that change the attention: always named in titles.
_LABEL_KEYS = ("attn_types", "global_attn", "global_softmax", "inline_injective", "inline_local",
               "kernel", "window_size")
# MM backbone options that are the adapter's, not the timm model's.
_MM_ONLY_KEYS = {"type", "arch", "out_indices", "init_cfg", "frozen_stages", "norm_eval", "with_cp",
                 "out_norm", "_scope_"}


def _parse_value(text: str) -> Any:
    """JSON, else a Python literal, else true/false/none, else the string itself."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            pass
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    return text


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets and quotes ('a=[1,2],b=3' -> two items)."""
    out, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if cur:
        out.append("".join(cur))
    return [s.strip() for s in out if s.strip()]


def parse_model_kwargs(items: str | Sequence[str] | None) -> dict[str, Any]:
    """``--model-kwargs``: one JSON object, or ``key=value`` items (separate arguments or
    comma-separated; values as JSON or Python literals: ``depths=[1,1,1,1]``)."""
    if items is None:
        return {}
    items = [items] if isinstance(items, str) else list(items)
    text = " ".join(items).strip()
    if text.startswith("{"):
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError(f"--model-kwargs JSON must be an object, got {text!r}")
        return value
    out: dict[str, Any] = {}
    for item in items:
        for pair in _split_top_level(item):
            if "=" not in pair:
                raise ValueError(f"model kwarg {pair!r} is not key=value (or give one JSON "
                                 "object)")
            key, value = pair.split("=", 1)
            out[key.strip()] = _parse_value(value.strip())
    return out


def parse_model_spec(spec: str) -> tuple[str | None, dict[str, Any], str | None]:
    """``NAME[:key=value,...][@CHECKPOINT]`` or ``@CHECKPOINT`` (model from the checkpoint's
    hyper-parameters) -> (name, kwargs, checkpoint)."""
    ckpt = None
    if "@" in spec:
        spec, ckpt = spec.split("@", 1)
    name, _, kw = spec.partition(":")
    return (name.strip() or None), parse_model_kwargs(kw) if kw else {}, (ckpt or None)


@dataclass
class LoadedModel:
    model: nn.Module
    name: str
    kwargs: dict[str, Any]
    checkpoint: dict[str, Any] = field(default_factory=dict)   # what was loaded, for the JSON

    @property
    def label(self) -> str:
        """Name, the overrides given (and the attention choices, even when they come from the
        checkpoint) and the checkpoint's last path parts, for titles."""
        from_ckpt = self.checkpoint.get("kwargs_from_checkpoint", ())
        kw = ",".join(f"{k}={v}" for k, v in self.kwargs.items()
                      if k not in from_ckpt or k in _LABEL_KEYS)
        text = self.name + (f":{kw}" if kw else "")
        if self.checkpoint.get("path"):
            text += " @" + "/".join(self.checkpoint["path"].split("/")[-3:])
        else:
            text += " (random init)"
        return text

    def default_size(self) -> tuple[int, int]:
        """The checkpoint's / override's ``img_size``, else the model's default input size."""
        size = self.kwargs.get("img_size")
        if size is not None:
            return (size, size) if isinstance(size, int) else tuple(size)
        cfg = timm.data.resolve_data_config({}, model=self.model)
        return tuple(cfg["input_size"][1:])

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        cfg = timm.data.resolve_data_config({}, model=self.model)
        return tuple(cfg["mean"]), tuple(cfg["std"])


def _is_lightning(ckpt: Any) -> bool:
    return isinstance(ckpt, Mapping) and isinstance(ckpt.get("state_dict"), Mapping) and any(
        k in ckpt for k in ("pytorch-lightning_version", "hyper_parameters", "global_step"))


def _model_from_hparams(ckpt: Mapping) -> tuple[str | None, dict[str, Any]]:
    """(timm name, overrides) from a Lightning checkpoint's hyper-parameters, if it has them:
    the classification module's ``model_name`` / ``model_kwargs``, or an MM config's backbone
    (``type`` InLinePVTBackbone / ``arch`` tiny -> inline_pvt_tiny, other keys overrides)."""
    hp = ckpt.get("hyper_parameters") or {}
    if isinstance(hp.get("model_name"), str):
        return hp["model_name"], dict(hp.get("model_kwargs") or {})
    backbone = ((hp.get("config") or {}).get("model") or {}).get("backbone") or {}
    if isinstance(backbone, Mapping) and "type" in backbone and "arch" in backbone:
        import backbones  # noqa: F401  (registers the families)

        family = re.sub(r"Backbone$", "", str(backbone["type"])).lower()
        for name in timm.list_models("*"):
            fam = name.rsplit("_", 1)[0]
            if fam.replace("_", "") == family and name.endswith("_" + str(backbone["arch"])):
                kwargs = {k: (list(v) if isinstance(v, tuple) else v)
                          for k, v in backbone.items() if k not in _MM_ONLY_KEYS}
                return name, kwargs
    return None, {}


def backbone_prefix(keys: Sequence[str], model_keys: set[str], prefer_ema: bool = False
                    ) -> tuple[str, int]:
    """The key prefix under which the model's weights sit in a state dict (``''``,
    ``model.backbone.``, ``model.backbone.model.``, ``model_ema.module.backbone.`` ...): the one
    after which most keys are the model's own names. Ties go to the non-EMA copy (EMA with
    ``prefer_ema``), then to the shorter prefix."""
    counts: dict[str, int] = {}
    for key in keys:
        if key in model_keys:
            counts[""] = counts.get("", 0) + 1
        for m in re.finditer(r"\.", key):
            prefix = key[:m.end()]
            if key[m.end():] in model_keys:
                counts[prefix] = counts.get(prefix, 0) + 1
    if not counts:
        return "", 0

    def rank(item: tuple[str, int]):
        prefix, n = item
        ema = "ema" in prefix
        return (-n, ema != prefer_ema, len(prefix))

    prefix, n = min(counts.items(), key=rank)
    return prefix, n


def _filter_fn(model: nn.Module):
    module = importlib.import_module(type(model).__module__)
    return getattr(module, "checkpoint_filter_fn", None)


def load_model(name: str | None, kwargs: Mapping[str, Any] | None = None,
               checkpoint: str | None = None, ema: bool = False) -> LoadedModel:
    """Build ``name`` (timm, ``num_classes=0``) with ``kwargs`` and load ``checkpoint``.

    With a Lightning checkpoint, ``name`` may be None and the checkpoint's own overrides are
    used, updated by ``kwargs``. Every backbone weight must load: missing keys other than the
    classifier and the final norm (absent from detection backbones) are an error.
    """
    import backbones  # noqa: F401  (registers the families with timm)
    from backbones._helpers import read_checkpoint, unwrap_state_dict

    kwargs = dict(kwargs or {})
    info: dict[str, Any] = {}
    ckpt = None
    if checkpoint:
        ckpt = read_checkpoint(checkpoint)
        info = {"path": str(checkpoint)}
        if _is_lightning(ckpt):
            hp_name, hp_kwargs = _model_from_hparams(ckpt)
            if name is None or name == hp_name:
                info["kwargs_from_checkpoint"] = sorted(hp_kwargs)
                kwargs = {**hp_kwargs, **kwargs}
                name = name or hp_name
    if not name:
        raise ValueError("give --model (a timm name), or a Lightning checkpoint of this project "
                         "whose hyper-parameters name it")
    if not timm.is_model(name):
        known = ", ".join(timm.list_models("inline_*") + timm.list_models("l2vit_*"))
        raise ValueError(f"unknown model {name!r}; this project's models: {known}")
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    model.eval()
    if ckpt is not None:
        if _is_lightning(ckpt):
            sd, fmt = ckpt["state_dict"], "lightning"
        else:
            sd, fmt = unwrap_state_dict(ckpt), "state_dict"
        own = model.state_dict()
        prefix, matched = backbone_prefix(list(sd), set(own), prefer_ema=ema)
        if matched == 0:
            raise ValueError(f"checkpoint {checkpoint} holds no weights named like {name}'s "
                             f"(first keys: {list(sd)[:5]})")
        sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        filter_fn = _filter_fn(model)
        sub = filter_fn(sub, model) if filter_fn is not None else sub
        sub = {k: v for k, v in sub.items() if not k.startswith("head.")}
        result = model.load_state_dict(sub, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(("head.", "norm."))]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"checkpoint {checkpoint} (weights under {prefix!r}) does not match {name} with "
                f"{dict(kwargs)}: missing {missing[:8]}, unexpected "
                f"{result.unexpected_keys[:8]} (give the model's --model-kwargs)")
        info.update(format=fmt, prefix=prefix, loaded_tensors=len(sub),
                    missing=list(result.missing_keys))
    return LoadedModel(model, name, kwargs, info)
