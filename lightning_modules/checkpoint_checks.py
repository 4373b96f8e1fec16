"""Checkpoint files checked before torch reads them, and checkpoints matched to their task: the one
place for checkpoint input (safe unpickling itself is ``backbones._helpers.safe_torch_load``;
weights that do not fit the model, ``callbacks.check_checkpoint_fits``).

torch's own errors name nothing useful here: a zero-byte file gives ``EOFError`` or an empty
message, a cut-short one "failed finding central directory", a text file an unpickling error
of one character. ``check_checkpoint_file`` reads only the file's first bytes and its zip
directory (at the end), so it costs nothing even for large files:

- missing (close names in its folder named), a folder, empty (0 bytes);
- truncated: a zip checkpoint (what ``torch.save`` writes) without its end;
- not a checkpoint: neither a zip nor a pickle (what it looks like is named: text, JSON, an
  image, a safetensors file, a python config).

``check_checkpoint_task``: a Lightning checkpoint of this project knows its task from its
hyper-parameters (the MM config's ``default_scope``, or the classifier's ``model_name``); one of
another task (a detection checkpoint given to segmentation) is refused with the right tool named.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import os
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["SCOPE_TASKS", "CheckpointError", "check_checkpoint_file", "check_checkpoint_file_task",
           "check_checkpoint_task",
           "check_pretrained_files", "checkpoint_source", "checkpoint_task", "loading_checkpoint",
           "resume_checkpoint"]

TASK_TOOLS = {"detection": "tools/train_det.py / test_det.py / infer.py",
              "segmentation": "tools/train_seg.py / test_seg.py / infer.py",
              "classification": "tools/train_cls.py (fit / validate / test / predict)"}
# The task of an MM config, by its registry scope.
SCOPE_TASKS = {"mmdet": "detection", "mmseg": "segmentation"}

# The file being loaded by load_from_checkpoint, for messages raised from module hooks.
_LOADING: contextvars.ContextVar[str | None] = contextvars.ContextVar("_LOADING", default=None)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used here; the message names the file and the fix."""


def _looks_like(head: bytes) -> str:
    """What a file whose first bytes are ``head`` seems to be (for 'not a checkpoint')."""
    if head[:3] == b"\xff\xd8\xff":
        return "a JPEG image"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "a PNG image"
    if len(head) > 9 and head[8:10] == b"{\"":
        return "a safetensors file (load it with safetensors and save a torch state dict)"
    text = head.lstrip()
    if text[:1] in (b"{", b"["):
        return "a JSON file"
    if any(text.startswith(k) for k in (b"_base_", b"import", b"from", b"#", b"model")):
        return "a Python or text file (a config?)"
    if head[:2] == b"\x1f\x8b":
        return "a gzip archive (unpack it first)"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "not a format torch writes"


def check_checkpoint_file(path: str | os.PathLike, what: str = "checkpoint") -> None:
    """Raise ``FileNotFoundError`` / ``CheckpointError`` naming ``path`` when it is missing, a
    folder, empty, truncated or not a torch checkpoint (module docstring); ``what`` names it in
    messages (e.g. the config key that gave the path)."""
    p = Path(path)
    if not p.exists():
        near = (difflib.get_close_matches(p.name, os.listdir(p.parent), n=3)
                if p.parent.is_dir() else [])
        raise FileNotFoundError(f"{what} not found: {p}"
                                + (f" (in its folder: {', '.join(near)})" if near else
                                   "" if p.parent.is_dir() else
                                   f" (its folder {p.parent} does not exist either)"))
    if p.is_dir():
        raise CheckpointError(f"{what} {p} is a folder; give the checkpoint file in it (e.g. "
                              f"{p / 'last.ckpt'})")
    size = p.stat().st_size
    if size == 0:
        raise CheckpointError(f"{what} {p} is empty (0 bytes): a save or copy that was "
                              "interrupted. Use another checkpoint (e.g. the previous one of "
                              "its folder) or copy it again")
    with open(p, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":  # torch.save's zip format: its directory is at the end
        if not zipfile.is_zipfile(p):
            raise CheckpointError(
                f"{what} {p} is truncated or corrupt: its end is missing ({size:,} bytes), "
                "as after a save or copy that was interrupted. Use another checkpoint (e.g. the "
                "previous one of its folder) or copy it again")
        return
    if head[:1] == b"\x80":  # a pickle: torch's legacy format
        return
    raise CheckpointError(f"{what} {p} is not a torch checkpoint: it looks like "
                          f"{_looks_like(head)}. Give a .ckpt written by this project's "
                          "training tools or a .pth / .pt state dict")


def checkpoint_task(checkpoint: Mapping) -> str | None:
    """'detection', 'segmentation' or 'classification' for a Lightning checkpoint of this
    project (from its hyper-parameters); None for anything else (plain weights)."""
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, Mapping):
        return None
    config = hparams.get("config")
    if isinstance(config, Mapping):
        return SCOPE_TASKS.get(config.get("default_scope"))
    if "model_name" in hparams:
        return "classification"
    return None


def check_checkpoint_file_task(path: str | os.PathLike, expected: str) -> None:
    """``check_checkpoint_task`` on a file, before anything is built: its hyper-parameters are
    read with the tensors memory-mapped (no weights loaded); a file that cannot be read that way
    is left to the loader, which names its problem."""
    import torch

    from backbones import _helpers

    # The numpy values the project's safe loader allows (dataset metadata, scheduler states).
    allowed = getattr(_helpers, "_NUMPY_SAFE_GLOBALS", [])
    try:
        with torch.serialization.safe_globals(allowed):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # legacy format, objects needing the opt-in: the real load will tell
        return
    if isinstance(checkpoint, Mapping):
        check_checkpoint_task(checkpoint, expected, f"checkpoint {path}")


def checkpoint_source(default: str = "the checkpoint", trainer: Any = None) -> str:
    """How to name the checkpoint being loaded: the file of ``load_from_checkpoint`` (see
    ``loading_checkpoint``) or of the Trainer's ``ckpt_path``."""
    path = _LOADING.get() or (getattr(trainer, "ckpt_path", None) if trainer is not None else None)
    return f"checkpoint {path}" if path else default


@contextlib.contextmanager
def loading_checkpoint(path: str | os.PathLike) -> Iterator[None]:
    """Name ``path`` in checkpoint messages raised while it is loaded (``load_from_checkpoint``
    calls the module's ``on_load_checkpoint`` without the file name)."""
    token = _LOADING.set(os.fspath(path))
    try:
        yield
    finally:
        _LOADING.reset(token)


def check_checkpoint_task(checkpoint: Mapping, expected: str, source: str) -> None:
    """Raise ``CheckpointError`` when ``checkpoint`` is this project's checkpoint of another task
    than ``expected``, naming the tools that take it."""
    task = checkpoint_task(checkpoint)
    if task is None or task == expected:
        return
    hparams = checkpoint["hyper_parameters"]
    detail = (f"model {hparams.get('model_name')!r}" if task == "classification" else
              f"its config has default_scope={hparams['config'].get('default_scope')!r}")
    raise CheckpointError(
        f"{source} is a {task} checkpoint ({detail}), but this is {expected}: use it with "
        f"{TASK_TOOLS[task]}, or give a {expected} checkpoint here")


def resume_checkpoint(resume: str | None, work_dir: Path) -> str | None:
    """The file ``--resume`` means: ``WORK_DIR/checkpoints/last.ckpt`` for 'last', else the path
    given; a clear error when there is none (what the folder holds instead, and what to do)."""
    if resume is None:
        return None
    if resume != "last":
        check_checkpoint_file(resume, "--resume checkpoint")
        return str(resume)
    folder = work_dir / "checkpoints"
    path = folder / "last.ckpt"
    if path.is_file():
        check_checkpoint_file(path)
        return str(path)
    others = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
    if others:
        found = ", ".join(p.name for p in others[-5:])
        hint = f"it holds {found}: resume from one with --resume {others[-1]}"
    elif work_dir.is_dir():
        hint = ("the work dir holds no checkpoints (the run stopped before its first one?); "
                "start without --resume")
    else:
        hint = (f"the work dir {work_dir} does not exist: was the run started with another "
                "--work-dir? Give that one, or start without --resume")
    raise FileNotFoundError(f"cannot resume: no checkpoint at {path}; {hint}")


def _pretrained(cfg: Any, path: str) -> Iterator[tuple[str, str]]:
    """(config key, file) of every ``init_cfg=dict(type='Pretrained', checkpoint=...)``."""
    if isinstance(cfg, Mapping):
        if cfg.get("type") == "Pretrained" and isinstance(cfg.get("checkpoint"), str):
            yield f"{path}.checkpoint", cfg["checkpoint"]
        for key, value in cfg.items():
            yield from _pretrained(value, f"{path}.{key}")
    elif isinstance(cfg, list | tuple):
        for i, value in enumerate(cfg):
            yield from _pretrained(value, f"{path}[{i}]")


def check_pretrained_files(cfg: Mapping) -> None:
    """Every local ``init_cfg`` Pretrained file of the config's model is there and readable as a
    checkpoint (``check_checkpoint_file``), before the model is built or any training starts;
    the messages name the config key."""
    for key, file in _pretrained(cfg.get("model"), "model"):
        if "://" in file:  # torchvision://, open-mmlab://, http(s): not ours to check
            continue
        try:
            check_checkpoint_file(file, f"{key} (init_cfg Pretrained)")
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e}. Download the weights there, point the config at "
                                    f"them (--cfg-options {key}=PATH), or train from scratch "
                                    f"with --cfg-options {key.rsplit('.', 1)[0]}=None") from None
