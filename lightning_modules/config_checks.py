"""Configuration mistakes named before anything is built: the one place for config checks.

MM configs (python files):

- reading: a ``_base_`` that does not exist (the file listing it and close names named), a
  syntax error (the file and line, in whichever file of the ``_base_`` chain it is);
- keys: a misspelt key inside ``model``, ``{train,val,test}_dataloader`` (the loader, its
  dataset, sampler and pipeline steps), ``optim_wrapper`` (its optimizer, ``paramwise_cfg``,
  ``clip_grad``) or ``train_cfg``, named with its path and the close matches. The valid keys of a
  ``type``d dict are the arguments of the registered class, following ``**kwargs`` up the class
  hierarchy; a class that passes ``**kwargs`` elsewhere (e.g. this project's backbones, to the
  timm model, which rejects unknown ones itself when built) is not checked by name. Layer
  configs built by mmcv helpers that take keys of their own (``norm_cfg``, ``conv_cfg``,
  ``act_cfg``, ``upsample_cfg``, ``init_cfg``, ``roi_layer``, ``nms``) are not checked;
- data paths: a ``data_root``, ``ann_file`` or ``data_prefix`` folder that does not exist,
  named by its config key with the ``--cfg-options`` fix, before any dataset or model;
- class counts: a head's ``num_classes`` other than the dataset's number of classes.

Classification (Lightning YAML): a YAML syntax error named with the file, line and column
(jsonargparse names neither the file nor, for some errors, the line).
"""

from __future__ import annotations

import ast
import difflib
import inspect
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "check_class_count", "check_config", "check_data_paths",
           "check_yaml_configs", "read_config_file"]

# Layer configs that mmcv's builders (build_norm_layer, build_conv_layer, ...) read with keys
# of their own (requires_grad, scale_factor, ...), or that are not registry classes at all.
_LAYER_KEYS = {"norm_cfg", "conv_cfg", "act_cfg", "upsample_cfg", "init_cfg", "roi_layer", "nms",
               "dcn", "plugins", "pool_cfg", "layer_cfg", "ffn_cfg", "attn_cfg"}
# Keys every typed dict may hold (mmengine's Config / Registry handle them).
_ALWAYS = {"type", "_scope_", "_delete_"}
# mmengine's DefaultOptimWrapperConstructor reads these from paramwise_cfg, and nothing else:
# a misspelt one would be ignored without a word.
_PARAMWISE_KEYS = {"bias_lr_mult", "bias_decay_mult", "norm_decay_mult", "dwconv_decay_mult",
                   "flat_decay_mult", "custom_keys", "dcn_offset_lr_mult", "bypass_duplicate"}
_CUSTOM_KEY_KEYS = {"lr_mult", "decay_mult"}
_CLIP_KEYS = {"type", "max_norm", "norm_type", "error_if_nonfinite", "foreach", "clip_value"}
_LOOP_KEYS = {"type", "by_epoch", "max_epochs", "max_iters", "val_begin", "val_interval",
              "dynamic_intervals"}
_OPTIM_WRAPPER_KEYS = {"constructor", "paramwise_cfg"}


class ConfigError(ValueError):
    """A configuration that cannot be right; the message names the key or file and the fix."""


# ---- reading MM config files ------------------------------------------------------------------

def _bases(path: Path) -> list[Path]:
    """The ``_base_`` files a config names (resolved against its folder), read without running
    it; [] if it names none or cannot be parsed."""
    return [resolved for _, resolved in _base_entries(path)]


def _base_entries(path: Path) -> list[tuple[str, Path]]:
    """(as written, resolved) for each ``_base_`` entry of a config file."""
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError, ValueError):
        return []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "_base_" for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return []
            items = [value] if isinstance(value, str) else list(value)
            return [(v, (path.parent / v).resolve()) for v in items if isinstance(v, str)]
    return []


def _chain(path: Path) -> list[Path]:
    """``path`` and every file of its ``_base_`` chain, depth first."""
    seen: list[Path] = []
    todo = [path.resolve()]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo.extend(b for b in reversed(_bases(p)) if b.is_file())
    return seen


def _close(name: str, options: Iterable[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(name, list(options), n=n, cutoff=0.6)


def read_config_file(path: str | os.PathLike):
    """``mmengine.config.Config.fromfile(path)`` with errors that name the file at fault: a
    missing ``_base_`` (which config lists it, and close file names), a syntax error (file, line
    and column, in whichever file of the chain)."""
    from mmengine.config import Config

    path = Path(path)
    if not path.is_file():
        near = _close(path.name, os.listdir(path.parent)) if path.parent.is_dir() else []
        raise FileNotFoundError(f"config file not found: {path}"
                                + (f" (did you mean {', '.join(near)}?)" if near else ""))
    try:
        return Config.fromfile(str(path))
    except FileNotFoundError as e:
        missing = Path(e.filename).resolve() if e.filename else None
        owner = next((p for p in _chain(path) if missing in _bases(p)), None)
        if missing is None or owner is None:
            raise
        folder = missing.parent
        near = _close(missing.name, os.listdir(folder)) if folder.is_dir() else []
        listed = next(raw for raw, resolved in _base_entries(owner) if resolved == missing)
        raise ConfigError(
            f"config {path}: the _base_ {listed!r} listed in {owner} does not exist ({missing}"
            f"{'' if folder.is_dir() else '; neither does its folder'}). _base_ paths are "
            "relative to the folder of the file that lists them"
            + (f"; did you mean {', '.join(near)}?" if near else "")) from None
    except SyntaxError as e:
        for p in _chain(path):
            try:
                ast.parse(p.read_text(), filename=str(p))
            except SyntaxError as err:
                raise ConfigError(f"config {p}, line {err.lineno}, column {err.offset}: "
                                  f"syntax error: {err.msg}\n    {(err.text or '').rstrip()}"
                                  ) from None
        raise ConfigError(f"config {path}: syntax error: {e}") from None


# ---- keys -----------------------------------------------------------------------------------

def _closed_params(target: Any) -> set[str] | None:
    """The keyword arguments ``target(...)`` accepts, following ``**kwargs`` up the MRO of a
    class while it is passed on as ``**kwargs`` (mm's convention for super().__init__); None
    when it goes elsewhere (the arguments are not known from signatures)."""
    import torch

    names: set[str] = set()
    inits: list[Any] = []
    if inspect.isclass(target):
        for klass in target.__mro__:
            if klass in (object, torch.nn.Module):
                return names  # their __init__ takes no config keys
            if "__init__" in vars(klass):
                inits.append(vars(klass)["__init__"])
                try:
                    sig = inspect.signature(inits[-1])
                except (TypeError, ValueError):
                    return None
                var_kw = _add_params(sig, names, skip_first=True)
                if var_kw is None:
                    return names
                if var_kw != "kwargs":
                    return None
        return None
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    return names if _add_params(sig, names, skip_first=False) is None else None


def _add_params(sig: inspect.Signature, names: set[str], skip_first: bool) -> str | None:
    """Add ``sig``'s keyword-capable names to ``names``; the name of its ``**`` parameter."""
    params = list(sig.parameters.values())[1 if skip_first else 0:]
    var_kw = None
    for p in params:
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.add(p.name)
        elif p.kind is p.VAR_KEYWORD:
            var_kw = p.name
    return var_kw


def _timm_backbone_params(target: Any, cfg: Mapping) -> set[str] | None:
    """This project's MM backbones (``heads.mm_backbones.TimmBackbone``) pass their other keys
    to the family's timm model class: their own arguments and that class's, if both are known."""
    family, arch = getattr(target, "family", None), cfg.get("arch", "tiny")
    if not (inspect.isclass(target) and family and isinstance(arch, str)):
        return None
    import timm

    import backbones

    if not timm.models.is_model(f"{family}_{arch}"):
        return None  # an unknown arch: the backbone names the choices when built
    module = timm.models.model_entrypoint(f"{family}_{arch}").__module__
    models = [c for c in vars(backbones).values()
              if inspect.isclass(c) and c.__module__ == module]
    own = set(inspect.signature(target.__init__).parameters) - {"self", "overrides"}
    model = _closed_params(models[0]) if len(models) == 1 else None
    return own | model if model is not None else None


def _lookup(registries: Sequence[Any], name: str) -> Any:
    for registry in registries:
        with registry.switch_scope_and_registry(None) as reg:
            try:
                found = reg.get(name)
            except Exception:  # a registry whose lazy imports fail: not ours to report
                found = None
        if found is not None:
            return found
    return None


class _KeyChecker:
    """Collects unknown keys of typed dicts, with their config paths."""

    def __init__(self) -> None:
        from mmengine import registry as R

        self.R = R
        self.problems: list[str] = []
        self.by_key = {"pipeline": [R.TRANSFORMS], "transforms": [R.TRANSFORMS],
                       "dataset": [R.DATASETS], "datasets": [R.DATASETS],
                       "sampler": [R.DATA_SAMPLERS], "batch_sampler": [R.DATA_SAMPLERS],
                       "optimizer": [R.OPTIMIZERS]}

    def unknown(self, path: str, keys: Iterable[str], valid: set[str], owner: str) -> None:
        for key in keys:
            if key in valid or key in _ALWAYS:
                continue
            near = _close(key, valid)
            hint = (f"did you mean {' or '.join(near)}?" if near else
                    f"its keys: {', '.join(sorted(valid)[:25])}")
            self.problems.append(f"{path}.{key}: not a key of {owner} ({hint})")

    def typed(self, path: str, cfg: Mapping, registries: Sequence[Any]) -> None:
        """Check a ``type``d dict against its class, then what it holds."""
        kind = cfg.get("type")
        target = kind if callable(kind) else (_lookup(registries, kind)
                                               if isinstance(kind, str) else None)
        if target is not None:
            params = _closed_params(target)
            if params is None:
                params = _timm_backbone_params(target, cfg)
            if params is not None:
                name = getattr(target, "__name__", str(kind))
                self.unknown(path, cfg.keys(), params, name)
        self.children(path, cfg, registries)

    def children(self, path: str, cfg: Mapping, registries: Sequence[Any]) -> None:
        for key, value in cfg.items():
            if key in _LAYER_KEYS or key == "type":
                continue
            child = self.by_key.get(key, registries)
            items = value if isinstance(value, list | tuple) else [value]
            for i, item in enumerate(items):
                where = f"{path}.{key}" + (f"[{i}]" if item is not value else "")
                if isinstance(item, Mapping):
                    if "type" in item:
                        self.typed(where, item, child)
                    else:  # plain dicts (train_cfg, test_cfg, data_prefix) may hold typed ones
                        self.children(where, item, child)
                elif isinstance(item, list | tuple):  # TestTimeAug: lists of lists of steps
                    for j, sub in enumerate(item):
                        if isinstance(sub, Mapping) and "type" in sub:
                            self.typed(f"{where}[{j}]", sub, child)

    def loader(self, path: str, cfg: Mapping) -> None:
        import torch

        valid = _closed_params(torch.utils.data.DataLoader) or set()
        self.unknown(path, cfg.keys(), valid, "a data loader")
        self.children(path, cfg, [])

    def optim_wrapper(self, cfg: Mapping) -> None:
        kind = cfg.get("type", "OptimWrapper")
        target = _lookup([self.R.OPTIM_WRAPPERS], kind) if isinstance(kind, str) else kind
        params = _closed_params(target) if target is not None else None
        if params is not None:
            self.unknown("optim_wrapper", cfg.keys(), params | _OPTIM_WRAPPER_KEYS,
                         getattr(target, "__name__", str(kind)))
        optimizer = cfg.get("optimizer")
        if isinstance(optimizer, Mapping) and "type" in optimizer:
            self.typed("optim_wrapper.optimizer", optimizer, [self.R.OPTIMIZERS])
        paramwise = cfg.get("paramwise_cfg")
        if isinstance(paramwise, Mapping) and cfg.get("constructor") in (
                None, "DefaultOptimWrapperConstructor"):
            self.unknown("optim_wrapper.paramwise_cfg", paramwise.keys(), _PARAMWISE_KEYS,
                         "paramwise_cfg (DefaultOptimWrapperConstructor)")
            for name, value in (paramwise.get("custom_keys") or {}).items():
                if isinstance(value, Mapping):
                    self.unknown(f"optim_wrapper.paramwise_cfg.custom_keys.{name}",
                                 value.keys(), _CUSTOM_KEY_KEYS, "a custom_keys entry")
        clip = cfg.get("clip_grad")
        if isinstance(clip, Mapping):
            self.unknown("optim_wrapper.clip_grad", clip.keys(), _CLIP_KEYS, "clip_grad")


def check_config(cfg: Mapping) -> None:
    """Raise ``ConfigError`` listing every misspelt key of ``model``, the data loaders,
    ``optim_wrapper`` and ``train_cfg`` (module docstring), each with its path and close
    matches. Call with the config's registry scope entered (``mm_bridge.load_config``)."""
    from mmengine import registry as R

    checker = _KeyChecker()
    model = cfg.get("model")
    if isinstance(model, Mapping) and "type" in model:
        checker.typed("model", model, [R.MODELS, R.TASK_UTILS])
    for split in ("train", "val", "test"):
        loader = cfg.get(f"{split}_dataloader")
        if isinstance(loader, Mapping):
            checker.loader(f"{split}_dataloader", loader)
    if isinstance(cfg.get("optim_wrapper"), Mapping):
        checker.optim_wrapper(cfg["optim_wrapper"])
    if isinstance(cfg.get("train_cfg"), Mapping):
        checker.unknown("train_cfg", cfg["train_cfg"].keys(), _LOOP_KEYS, "train_cfg (a loop)")
    if checker.problems:
        source = getattr(cfg, "filename", None) or "the config"
        raise ConfigError(f"{source}: {len(checker.problems)} unknown key(s):\n  "
                          + "\n  ".join(checker.problems)
                          + "\nFix the spelling in the config (or in --cfg-options)")


# ---- data paths and class counts ----------------------------------------------------------------

def _missing(path: str, key: str, what: str, split: str) -> str:
    parent = os.path.dirname(os.path.normpath(path)) or "."
    near = _close(os.path.basename(os.path.normpath(path)), os.listdir(parent)) \
        if os.path.isdir(parent) else []
    return (f"{key}: {what} {path} does not exist"
            + (f" (in {parent}: did you mean {', '.join(near)}?)" if near else ""))


def check_data_paths(split: str, dataset: Mapping, key: str | None = None) -> None:
    """The ``data_root``, ``ann_file`` and ``data_prefix`` folders of a dataset config exist
    (local paths), as mmengine joins them; ``FileNotFoundError`` naming the config key and the
    ``--cfg-options`` fix. Wrapped datasets (``dataset`` / ``datasets`` keys) are followed."""
    key = key or f"{split}_dataloader.dataset"
    for inner in ("dataset", "datasets"):
        value = dataset.get(inner)
        for i, sub in enumerate(value if isinstance(value, list | tuple) else [value]):
            if isinstance(sub, Mapping):
                check_data_paths(split, sub, f"{key}.{inner}"
                                 + (f"[{i}]" if isinstance(value, list | tuple) else ""))

    def local(p: Any) -> bool:
        return isinstance(p, str) and bool(p) and "://" not in p

    root = dataset.get("data_root")
    problems = []
    if local(root) and not os.path.isdir(root):
        problems.append(_missing(root, f"{key}.data_root", "folder", split))
    else:
        def joined(p: str) -> str:
            return p if os.path.isabs(p) or not local(root) else os.path.join(root, p)

        ann = dataset.get("ann_file")
        if local(ann) and not os.path.exists(joined(ann)):
            problems.append(_missing(joined(ann), f"{key}.ann_file", "file", split))
        prefix = dataset.get("data_prefix")
        for name, value in (prefix.items() if isinstance(prefix, Mapping) else ()):
            if local(value) and not os.path.isdir(joined(value)):
                problems.append(_missing(joined(value), f"{key}.data_prefix.{name}", "folder",
                                         split))
    if problems:
        raise FileNotFoundError(
            f"the {split} data is not where the config says:\n  " + "\n  ".join(problems)
            + f"\nPut the dataset there or point the config at it, e.g. --cfg-options "
            f"{key}.data_root=PATH (demo configs: run tools/make_demo_data.py first)")


def _heads(model: Mapping) -> Iterable[tuple[str, Mapping]]:
    """(config path, head dict) of every head that classifies into the dataset's classes."""
    for name in ("decode_head", "auxiliary_head", "bbox_head"):
        value = model.get(name)
        items = value if isinstance(value, list | tuple) else [value]
        for i, head in enumerate(items):
            if isinstance(head, Mapping):
                yield f"model.{name}" + (f"[{i}]" if head is not value else ""), head
    roi = model.get("roi_head")
    if isinstance(roi, Mapping):
        for name in ("bbox_head", "mask_head"):
            value = roi.get(name)
            items = value if isinstance(value, list | tuple) else [value]
            for i, head in enumerate(items):
                if isinstance(head, Mapping):
                    yield f"model.roi_head.{name}" + (f"[{i}]" if head is not value else ""), head


def check_class_count(cfg: Mapping, classes: Sequence[str]) -> None:
    """Every classifying head's ``num_classes`` equals the number of the dataset's classes
    (what the metric and the labels use); ``ConfigError`` naming the keys otherwise."""
    model = cfg.get("model")
    if not isinstance(model, Mapping) or not classes:
        return
    wrong = [f"{path}.num_classes={head['num_classes']}" for path, head in _heads(model)
             if isinstance(head.get("num_classes"), int)
             and head["num_classes"] != len(classes)]
    if wrong:
        raise ConfigError(
            f"{getattr(cfg, 'filename', None) or 'the config'}: {', '.join(wrong)}, but the "
            f"dataset has {len(classes)} classes ({', '.join(map(str, classes[:10]))}"
            f"{', ...' if len(classes) > 10 else ''}). Set num_classes={len(classes)} (e.g. "
            "num_classes=len(classes) in the config) or the dataset's metainfo classes")


# ---- classification YAML ----------------------------------------------------------------------

def _config_args(args: Sequence[str]) -> list[str]:
    """The files given to ``-c`` / ``--config`` on a LightningCLI command line."""
    files = []
    for i, arg in enumerate(args):
        if arg in ("-c", "--config") and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def check_yaml_configs(args: Sequence[str] | None = None) -> None:
    """Parse every ``-c`` / ``--config`` YAML of a LightningCLI command line (``sys.argv`` by
    default); a syntax error raises ``ConfigError`` naming the file, line and column."""
    import yaml

    for name in _config_args(list(sys.argv[1:] if args is None else args)):
        if not os.path.isfile(name):
            continue  # jsonargparse names a missing file itself
        try:
            with open(name) as f:
                yaml.safe_load(f)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"config {name}{where}: YAML syntax error: {e.problem or e}"
                              + (f" ({e.context})" if e.context else "")
                              + ". Fix the file (indentation, brackets, quotes, ': ' after "
                              "keys)") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config {name}: YAML error: {e}") from None
