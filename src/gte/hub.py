"""Finding and loading a checkpoint: the embedded default model, a local directory or a hub id; device and
dtype, tokenizer. (Its sentence-transformers files are read by st_files.py.)"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import convert
from .models import DEFAULT_MODEL, embedded_path
from .prepack import prepack

# What a checkpoint needs; hub repos also hold ONNX exports and other large files we never read.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*_Pooling/*", "*_Dense/*", "*_Normalize/*"]
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")
JSON_KINDS = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
              type(None): "null"}  # fmt: skip
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}  # fmt: skip


class ModelNotFoundError(FileNotFoundError):
    """The model is neither a checkpoint directory nor a hub id that can be found or downloaded."""


class CheckpointError(ValueError):
    """A checkpoint file that is not what it should be (JSON that does not parse, or of the wrong kind)."""


def resolve(model: str | os.PathLike) -> Path:
    """A checkpoint directory for the embedded model's id (never downloaded), a local path, or a hub id
    (downloaded into, or read from, the HF cache)."""
    embedded = embedded_path(str(model))
    if embedded is not None:
        return embedded
    path = Path(model).expanduser()
    if path.is_dir():
        return check_checkpoint(path)
    name = str(model)
    if path.exists() or name.startswith(("/", ".", "~")) or name.count("/") != 1:
        raise ModelNotFoundError(f"model {name!r} is not a checkpoint directory (and not a hub id like {DEFAULT_MODEL!r})")
    return check_checkpoint(_download(name))


def check_checkpoint(path: Path) -> Path:
    """`path`, when it holds a config.json and safetensors weights; else ModelNotFoundError saying what is missing."""
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"{path} has no config.json: pass a checkpoint directory (config.json, model.safetensors, tokenizer files)"
        )
    if not any((path / name).is_file() for name in WEIGHTS_FILES):
        raise ModelNotFoundError(
            f"{path} has no model.safetensors (nor model.safetensors.index.json): gte reads safetensors weights (a "
            "pytorch_model.bin converts with transformers: from_pretrained(...).save_pretrained(dir))"
        )
    return path


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=ALLOW_PATTERNS))
    except (RepositoryNotFoundError, GatedRepoError) as error:
        raise ModelNotFoundError(
            f"hub model {repo_id!r} does not exist or needs access rights ({type(error).__name__}); check the id, "
            "log in with `hf auth login` for gated models, or pass a local checkpoint directory"
        ) from error
    except OSError as error:  # not (completely) cached, and offline, no network or an HTTP failure
        local = f"/path/to/{repo_id.split('/')[1]}"
        raise ModelNotFoundError(
            f"hub model {repo_id!r} is not in the Hugging Face cache and cannot be downloaded now (offline mode or no "
            f"network: {type(error).__name__}). Download it once with network access (`hf download {repo_id}`), or pass "
            f"a local checkpoint directory instead of the id: gte.Embedder({local!r}) / gte embed --model {local}"
        ) from error


def read_json(path: Path, kind: type[dict] | type[list] = dict) -> Any:
    """A checkpoint's JSON file, which must hold a `kind` (an object, or a list); None when there is no such file."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}): repair or replace the checkpoint's file") from None
    if not isinstance(value, kind):
        raise CheckpointError(f"{path} holds {JSON_KINDS.get(type(value), 'a value')}, not {JSON_KINDS[kind]}: repair or "
                              "replace the checkpoint's file")  # fmt: skip
    return value


def architecture(path: Path) -> tuple[str, int]:
    """(our class, New* spelling; number of labels) from config.json, in any layout gte reads."""
    config = read_json(path / "config.json") or {}
    try:
        name = convert.architecture(config)
    except convert.ConversionError as error:
        raise convert.ConversionError(f"{path}: {error}") from None
    return name, config.get("num_labels") or len(config.get("id2label") or {0: 0, 1: 1})


# ------------------------------------------------------------------------------ device and dtype
def resolve_device(device: str | torch.device | None) -> torch.device:
    """None: cuda when present, else cpu. A device named must exist here (ValueError otherwise)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    here = "cpu" + ", cuda, cuda:1, ..." * torch.cuda.is_available()
    try:
        target = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: devices here are {here}") from None
    try:
        torch.empty(0, device=target)
    except (RuntimeError, AssertionError) as error:  # torch built without CUDA, no GPU, no such GPU, ...
        reason = str(error).strip().split("\n")[0]
        raise ValueError(f"device {str(target)!r} is not available here ({reason}); devices here are {here}") from None
    return target


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None: float16 on GPU, float32 on CPU."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(f"cannot load a tokenizer from {path}: {error}") from error


# ------------------------------------------------------------------------------ loading
@dataclass
class Loaded:
    model: torch.nn.Module  # a gte NewPreTrainedModel, in eval mode
    tokenizer: Any
    name: str
    path: Path | None  # the checkpoint directory; None for a model object passed in


def load(
    model: str | os.PathLike | torch.nn.Module,
    choose_class: Callable[[str, int], type],
    *,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    tokenizer: Any,
    attn_implementation: str | None,
) -> Loaded:
    """Load a checkpoint (directory or hub id) as the class `choose_class(architecture, num_labels)`
    returns (it raises for checkpoints the caller cannot use), or take a loaded model as it is."""
    if isinstance(model, torch.nn.Module):
        choose_class(type(model).__name__, model.config.num_labels)
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=None if dtype is None else resolve_dtype(dtype, model.device))
        return Loaded(model.eval(), tokenizer, model.config._name_or_path or type(model).__name__, None)
    target = resolve_device(device)
    path = resolve(model)
    cls = choose_class(*architecture(path))
    kwargs = {"dtype": resolve_dtype(dtype, target)}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    loaded = cls.from_pretrained(str(path), **kwargs).to(target).eval()
    prepack(loaded)  # ours alone to change: a model object passed in is used as it is
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(path)
    return Loaded(loaded, tokenizer, str(model), path)
