"""A checkpoint's sentence-transformers files, applied exactly or refused by name.

modules.json lists what sentence-transformers runs on the directory, in order:
  Transformer  the encoder, at the checkpoint's root: max_seq_length and do_lower_case (sentence_bert_config.json)
  Pooling      token states -> one vector (every mode, combined, include_prompt)
  Dense        a linear layer and a torch.nn activation (weights in its folder)
  Normalize    L2 normalisation
Any other module, or a setting of these that gte cannot run the same way, is an error naming it: never skipped.
config_sentence_transformers.json holds the prompts (`prompts`, `default_prompt_name`).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .hub import CheckpointError, read_json
from .pooling import Dense, Head, Normalize, Pooling

KINDS = ("Transformer", "Pooling", "Dense", "Normalize")
LEGACY_POOLING_KEYS = {  # sentence-transformers < 6: one boolean per mode, concatenated in this order
    "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}  # fmt: skip
VECTOR = "sentence_embedding"  # the feature Dense and Normalize must read and write for gte to run them


class UnsupportedModuleError(CheckpointError):
    """A sentence-transformers module (or a setting of one) that gte cannot apply exactly."""


@dataclass(frozen=True)
class SentenceTransformersSettings:
    modules: tuple[tuple[str, Path], ...] = ()  # (kind, folder) after the Transformer, in order; () without modules.json
    max_seq_length: int | None = None
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None

    @property
    def pooling(self) -> Pooling | None:
        folder = next((path for kind, path in self.modules if kind == "Pooling"), None)
        return None if folder is None else read_pooling(folder)


def read_settings(path: Path | None) -> SentenceTransformersSettings:
    """Everything sentence-transformers reads from the checkpoint directory `path` (none for a model object passed
    in); refuses what gte cannot run."""
    if path is None:
        return SentenceTransformersSettings()
    st_config = read_json(path / "sentence_bert_config.json") or {}
    prompts_config = read_json(path / "config_sentence_transformers.json") or {}
    prompts = prompts_config.get("prompts") or {}
    default = prompts_config.get("default_prompt_name")
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise CheckpointError(f"{path / 'config_sentence_transformers.json'}: `prompts` must map names to strings")
    if default is not None and default not in prompts:
        raise CheckpointError(f"{path / 'config_sentence_transformers.json'}: default_prompt_name {default!r} is not one "
                              f"of its prompts ({', '.join(prompts) or 'none'}); fix the file")  # fmt: skip
    return SentenceTransformersSettings(
        modules=_modules(path), max_seq_length=st_config.get("max_seq_length"),
        do_lower_case=bool(st_config.get("do_lower_case", False)), prompts=dict(prompts), default_prompt_name=default,
    )  # fmt: skip


def _modules(path: Path) -> tuple[tuple[str, Path], ...]:
    entries = read_json(path / "modules.json", list)
    if entries is None:
        return ()
    found = [(_kind(path, entry), path / entry.get("path", "")) for entry in entries]
    if not found or found[0][0] != "Transformer" or found[0][1].resolve() != path.resolve():
        raise UnsupportedModuleError(
            f"{path / 'modules.json'}: gte runs checkpoints whose first module is the Transformer at the directory's "
            "root (config.json beside modules.json); re-save it with sentence-transformers >= 3, which keeps it there"
        )
    rest = found[1:]
    if [kind for kind, _ in rest].count("Pooling") != 1 or rest[0][0] != "Pooling":
        raise UnsupportedModuleError(
            f"{path / 'modules.json'}: gte needs exactly one Pooling module, right after the Transformer, to make one "
            "vector per text as sentence-transformers does; use sentence-transformers for this checkpoint"
        )
    if any(kind == "Transformer" for kind, _ in rest):
        raise UnsupportedModuleError(f"{path / 'modules.json'}: more than one Transformer module is not supported; use "
                                     "sentence-transformers for this checkpoint")  # fmt: skip
    return tuple(rest)


def _kind(path: Path, entry: Any) -> str:
    """Transformer, Pooling, Dense or Normalize, from sentence-transformers' own module types; anything else is refused."""
    name = entry.get("type", "") if isinstance(entry, dict) else ""
    kind = name.rsplit(".", 1)[-1]
    if not name.startswith("sentence_transformers.") or kind not in KINDS:
        raise UnsupportedModuleError(
            f"{path / 'modules.json'}: module {entry.get('name', '?') if isinstance(entry, dict) else entry!r} of type "
            f"{name!r} is not one gte can apply (it runs {', '.join(KINDS)}); use sentence-transformers for this checkpoint"
        )
    return kind


def read_pooling(folder: Path) -> Pooling:
    config = read_json(folder / "config.json") or {}
    if "pooling_mode" in config:  # sentence-transformers >= 6: a mode or a list of modes
        mode = config["pooling_mode"]
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:
        modes = tuple(mode for key, mode in LEGACY_POOLING_KEYS.items() if config.get(key)) or ("mean",)
    try:
        return Pooling(modes, bool(config.get("include_prompt", True)))
    except ValueError as error:
        raise UnsupportedModuleError(f"{folder / 'config.json'}: {error}") from None


def pooling_width(folder: Path) -> int | None:
    config = read_json(folder / "config.json") or {}
    return config.get("embedding_dimension", config.get("word_embedding_dimension"))


def build_head(settings: SentenceTransformersSettings, hidden_size: int, pooling: Pooling) -> Head:
    """The Head that sentence-transformers' modules after the Transformer make (with `pooling` as the Pooling)."""
    width = hidden_size * len(pooling.modes)
    steps: list[nn.Module] = []
    for kind, folder in settings.modules:
        if kind == "Pooling":
            stored = pooling_width(folder)
            if stored is not None and stored != hidden_size:
                raise UnsupportedModuleError(
                    f"{folder / 'config.json'}: embedding_dimension {stored} is not the model's hidden_size "
                    f"{hidden_size}; the checkpoint's files disagree: download it again"
                )
        elif kind == "Dense":
            steps.append(load_dense(folder, width))
            width = steps[-1].linear.out_features
        elif kind == "Normalize":
            _check_io(folder, read_json(folder / "config.json") or {})
            steps.append(Normalize())
    return Head(pooling, steps)


def load_dense(folder: Path, width: int) -> Dense:
    config = read_json(folder / "config.json")
    if config is None:
        raise UnsupportedModuleError(f"{folder} has no config.json: the Dense module cannot be rebuilt; re-save the model")
    _check_io(folder, config)
    in_features, out_features, bias = config.get("in_features"), config.get("out_features"), config.get("bias", True)
    if in_features != width:
        raise UnsupportedModuleError(
            f"{folder / 'config.json'}: in_features {in_features} does not match the {width} values the module before "
            "it gives; the checkpoint's files disagree: download it again"
        )
    state = _dense_weights(folder)
    linear = nn.Linear(in_features, out_features, bias=bias)
    residual = None
    if config.get("use_residual", False):
        residual = nn.Identity() if in_features == out_features else nn.Linear(in_features, out_features, bias=False)
    dense = Dense(linear, _activation(folder, config.get("activation_function", "torch.nn.modules.activation.Tanh")),
                  residual)  # fmt: skip
    try:
        dense.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise UnsupportedModuleError(
            f"{folder}: the Dense weights do not fit its config.json ({first}); download the checkpoint again"
        ) from None
    return dense.eval().requires_grad_(False)


def _dense_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():  # sentence-transformers < 3 saved Dense weights this way
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise UnsupportedModuleError(f"{folder} has no model.safetensors (nor pytorch_model.bin): the Dense module's "
                                 "weights are missing; download the checkpoint again")  # fmt: skip


def _activation(folder: Path, name: str) -> nn.Module:
    """A torch.nn module class by its dotted name, built without arguments (as sentence-transformers does)."""
    module_name, _, class_name = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name) if name.startswith("torch.") else None
    except (ImportError, AttributeError):
        cls = None
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise UnsupportedModuleError(
            f"{folder / 'config.json'}: activation_function {name!r} is not a torch.nn module class; gte runs Dense "
            "layers with torch.nn activations only: use sentence-transformers for this checkpoint"
        )
    return cls()


def _check_io(folder: Path, config: dict[str, Any]) -> None:
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, VECTOR) not in (VECTOR, None):
            raise UnsupportedModuleError(
                f"{folder / 'config.json'}: {key} {config[key]!r} is not supported (gte applies this module to the "
                f"{VECTOR!r} only): use sentence-transformers for this checkpoint"
            )
