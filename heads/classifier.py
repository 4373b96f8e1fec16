"""Image classifier = a timm backbone's pooled features + a linear head.

The state dict reads ``backbone.<timm name>`` and ``head.{weight,bias}``: dropping ``backbone.``
gives exactly the layout of the timm model (whose classifier is also called ``head``), so the
families' checkpoint filters, the official releases and the MM ``init_cfg`` loader all see the
same names. Pure torch + timm: the Lightning loop lives in ``lightning_modules.classification``.
"""

from __future__ import annotations

import importlib
import os

import timm
import torch
import torch.nn.functional as F
from torch import nn

from backbones._helpers import read_checkpoint

__all__ = ["ImageClassifier", "LinearClassifier"]


class LinearClassifier(nn.Linear):
    """Dropout, then a linear layer; a plain ``nn.Linear`` in the state dict (``weight``,
    ``bias``) so that timm and official checkpoints' ``head.*`` load into it unchanged."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        super().__init__(in_features, num_classes)
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.dropout(x, self.drop_rate, self.training))


class ImageClassifier(nn.Module):
    """``timm.create_model(model_name, num_classes=0, **model_kwargs)`` + ``LinearClassifier``.

    ``model_kwargs`` reach the family's builder (``drop_path_rate``, ``img_size``, reduced
    ``embed_dims`` / ``depths`` for small demos, ``attn_types``, ...).
    """

    def __init__(self, model_name: str, num_classes: int, drop_rate: float = 0.0,
                 **model_kwargs):
        super().__init__()
        import backbones  # noqa: F401  (registers the families with timm)

        if not timm.is_model(model_name):
            known = ", ".join(timm.list_models("inline_*") + timm.list_models("l2vit_*"))
            raise ValueError(f"unknown model {model_name!r}; this project's models: {known}")
        self.model_name = model_name
        self.backbone = timm.create_model(model_name, pretrained=False, num_classes=0,
                                          **model_kwargs)
        self.head = LinearClassifier(self.backbone.num_features, num_classes, drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def no_weight_decay(self) -> set[str]:
        """The backbone's own list (position embeddings, relative tables, temperatures); norms
        and biases are caught by the optimizer's 1-D rule."""
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def timm_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under the timm model's names (what official checkpoints hold)."""
        return {**self.backbone.state_dict(),
                **{f"head.{k}": v for k, v in self.head.state_dict().items()}}

    def load_timm_state_dict(self, checkpoint: dict, source: str = "checkpoint") -> list[str]:
        """Load an official / timm-layout checkpoint through the family's filter.

        The backbone must match exactly. The head is loaded when its shape matches and skipped
        (kept freshly initialised, reported in the returned list) when the class count differs,
        which is fine-tuning on another label set. Raises a clear error on any other mismatch.
        """
        family = importlib.import_module(type(self.backbone).__module__)
        state = family.checkpoint_filter_fn(checkpoint, self.backbone)
        head = {k[5:]: v for k, v in state.items() if k.startswith("head.")}
        body = {k: v for k, v in state.items() if not k.startswith("head.")}
        try:
            self.backbone.load_state_dict(body, strict=True)
        except RuntimeError as e:
            raise RuntimeError(f"{source} does not match {self.model_name} (another variant, or "
                               f"different model_kwargs?): {e}") from None
        notes = []
        if head and all(head.get(k) is not None and head[k].shape == v.shape
                        for k, v in self.head.state_dict().items()):
            self.head.load_state_dict(head, strict=True)
        elif head:
            notes.append(f"head not loaded: {source} has {head['weight'].shape[0]} classes, "
                         f"the model {self.head.out_features}")
        else:
            notes.append(f"head not loaded: {source} has no classifier")
        return notes

    def load_pretrained(self, path: str | os.PathLike) -> list[str]:
        """``load_timm_state_dict`` from a file (safe unpickling: tensors and numpy only, unless
        the user opts in with ``LAV_TRUSTED_CHECKPOINTS=1``)."""
        return self.load_timm_state_dict(read_checkpoint(path), source=f"checkpoint {path}")

