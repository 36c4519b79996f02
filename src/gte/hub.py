"""Finding, checking and loading a checkpoint: the embedded default model, a local directory or a hub id (at a
revision); its weights checked against config.json before they load; device and dtype, tokenizer. (Its
sentence-transformers files are read by st_files.py.)"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gte_defaults import DEFAULT_MODEL

from . import convert, threads
from .configuration import NewConfig, engine_only
from .int8 import INT8
from .models import embedded_path
from .prepack import prepack

# What a checkpoint needs; hub repos also hold ONNX exports and other large files we never read.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*_Pooling/*", "*_Dense/*", "*_Normalize/*"]
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = "tokenizer.json, or vocab.txt or a sentencepiece model (*.model) with tokenizer_config.json"
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "*.model")  # a tokenizer has one of these
LAYER_NAME = re.compile(r"encoder\.layer\.(\d+)\.")
CLASSIFIER_HEADS = ("NewForSequenceClassification", "NewForTokenClassification")  # classifier: [num_labels, hidden]
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
    """A checkpoint file that is not what it should be (JSON that does not parse, or of the wrong kind; weights
    damaged or incomplete, or of other shapes than config.json says)."""


def resolve(model: str | os.PathLike, revision: str | None = None) -> Path:
    """A checkpoint directory for the embedded model's id (never downloaded; with a revision, the hub's), a
    local path, or a hub id (downloaded into, or read from, the HF cache; at `revision`, a commit hash, branch
    or tag, when given). The checkpoint is checked (`check_checkpoint`) before it is returned."""
    embedded = embedded_path(str(model)) if revision is None else None
    if embedded is not None:
        return embedded
    path = Path(model).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"revision {revision!r} pins a hub commit, and {model} is a local directory: drop the "
                             "revision, or pass a hub id")  # fmt: skip
        return check_checkpoint(path)
    name = str(model)
    if path.exists() or name.startswith(("/", ".", "~")) or name.count("/") != 1:
        raise ModelNotFoundError(f"model {name!r} is not a checkpoint directory (and not a hub id like {DEFAULT_MODEL!r})")
    return check_checkpoint(_download(name, revision))


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
    check_weights(path)
    return path


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:  # offline, the cache alone (given a commit hash, snapshot_download would ask the hub for its file list)
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS,
                                      local_files_only=constants.HF_HUB_OFFLINE))  # fmt: skip
    except RevisionNotFoundError as error:
        raise ModelNotFoundError(
            f"hub model {repo_id!r} has no revision {revision!r}: give one of its commit hashes, branches or tags"
        ) from error
    except (RepositoryNotFoundError, GatedRepoError) as error:
        raise ModelNotFoundError(
            f"hub model {repo_id!r} does not exist or needs access rights ({type(error).__name__}); check the id, "
            "log in with `hf auth login` for gated models, or pass a local checkpoint directory"
        ) from error
    except OSError as error:  # not (completely) cached, and offline, no network or an HTTP failure
        local = f"/path/to/{repo_id.split('/')[1]}"
        at, option = ("", "") if revision is None else (f" at revision {revision!r}", f" --revision {revision}")
        raise ModelNotFoundError(
            f"hub model {repo_id!r}{at} is not in the Hugging Face cache and cannot be downloaded now (offline mode or "
            f"no network: {type(error).__name__}). Download it once with network access (`hf download {repo_id}{option}`), "
            f"or pass a local checkpoint directory instead of the id: gte.Embedder({local!r}) / gte embed --model {local}"
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


# ------------------------------------------------------------------------------ weights
def check_weights(path: Path) -> None:
    """The safetensors files are whole, and config.json's shape keys are the weights' own: CheckpointError
    naming the file, or the key with both values (a ConversionError for a layout gte cannot run)."""
    raw = read_json(path / "config.json")
    try:
        config = convert.new_config(raw)
        shapes = convert.new_shapes(raw, weight_shapes(path))
    except convert.ConversionError as error:
        raise convert.ConversionError(f"{path}: {error}") from None
    for key, found in _config_from_shapes(config, shapes, path).items():
        ours = getattr(config, key)
        if found != ours:
            given = raw.get(key, ours)  # in the file's own terms: XLM-R counts positions from padding_idx + 1
            weights = found + given - ours if isinstance(given, int) else found
            raise CheckpointError(
                f"{path / 'config.json'} has {key}={given!r} but the weights have {key}={weights}: the config and "
                "the weights are from different models; put the checkpoint's own config.json beside its weights"
            )


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} from the headers of model.safetensors, or of the shards its index names."""
    index = read_json(path / "model.safetensors.index.json")
    if index is None:
        return _header_shapes(path / "model.safetensors")
    weight_map = index.get("weight_map")
    if not (isinstance(weight_map, dict) and weight_map and all(isinstance(v, str) for v in weight_map.values())):
        raise CheckpointError(f"{path / 'model.safetensors.index.json'} has no weight_map of tensor names to shard "
                              "files: repair or replace the checkpoint's file")  # fmt: skip
    shapes: dict[str, tuple[int, ...]] = {}
    for shard in sorted(set(weight_map.values())):
        if not (path / shard).is_file():
            raise ModelNotFoundError(f"{path / shard} is missing (model.safetensors.index.json names it): download or "
                                     "copy the checkpoint again")  # fmt: skip
        shapes |= _header_shapes(path / shard)
    missing = [name for name in weight_map if name not in shapes]
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} tensors that model.safetensors.index.json names are in none of "
                              f"its shards (the first: {missing[0]}): download or copy the checkpoint again")  # fmt: skip
    return shapes


def _header_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """The header's {tensor name: shape}; safetensors checks that the file holds every byte the header names."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(file, "pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{file} is damaged or incomplete ({error}): download or copy the checkpoint again") from None


def _config_from_shapes(config: NewConfig, shapes: dict[str, tuple[int, ...]], path: Path) -> dict[str, int]:
    """The values the weights (in our layout) give config.json's shape keys."""
    base = {name.removeprefix("new."): shape for name, shape in shapes.items()}
    words = base.get("embeddings.word_embeddings.weight")
    if words is None:
        raise CheckpointError(f"{path}: the weights have no word embeddings (embeddings.word_embeddings.weight): "
                              "point gte at an encoder checkpoint, or download or copy it again")  # fmt: skip
    found = {
        "vocab_size": words[0],
        "hidden_size": words[1],
        "num_hidden_layers": len({match[1] for name in base if (match := LAYER_NAME.match(name))}),
        "type_vocab_size": base.get("embeddings.token_type_embeddings.weight", (0,))[0],
    }
    if "encoder.layer.0.mlp.up_gate_proj.weight" in base:  # up and gate stacked
        found["intermediate_size"] = base["encoder.layer.0.mlp.up_gate_proj.weight"][0] // 2
    elif "encoder.layer.0.mlp.up_proj.weight" in base:
        found["intermediate_size"] = base["encoder.layer.0.mlp.up_proj.weight"][0]
    if config.position_embedding_type == "absolute":
        found["max_position_embeddings"] = base.get("embeddings.position_embeddings.weight", (0,))[0]
    if (config.architectures or [None])[0] in CLASSIFIER_HEADS and "classifier.weight" in base:
        found["num_labels"] = base["classifier.weight"][0]
    return found


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
    """None: float16 on GPU, float32 on CPU. (int8 is not a dtype to load in: see `load`.)"""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype {dtype} is not a floating-point dtype: pass {INT8!r} for int8 projections, or one "
                             "of float32, float16, bfloat16")  # fmt: skip
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join([*DTYPES, INT8])}")
    return DTYPES[dtype]


def int8_device(device: str | torch.device | None) -> torch.device:
    """The CPU (the default for int8); ValueError for any other device."""
    target = resolve_device(device or "cpu")
    if target.type != "cpu":
        raise ValueError(f"dtype {INT8!r} runs on the CPU only (torch's dynamic int8 kernels are CPU kernels), not "
                         f"on {target}: pass device='cpu' (--device cpu) or none, or use float16 / bfloat16 on "
                         f"{target}")  # fmt: skip
    return target


def load_tokenizer(path: Path):
    """The checkpoint's tokenizer. ModelNotFoundError when it has none that works: without a vocabulary file,
    transformers either fails or (BERT, XLM-R) makes a tokenizer that knows only its special tokens, so that
    every word becomes the unknown token."""
    from transformers import AutoTokenizer

    if not any(next(path.glob(pattern), None) for pattern in VOCABULARY_FILES):
        raise _no_tokenizer(path, "no tokenizer files")
    try:
        with engine_only():  # AutoTokenizer reads the config: no need for the transformers model classes
            tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as error:
        raise _no_tokenizer(path, f"transformers: {' '.join(str(error).split())}") from error
    specials = len(tokenizer.all_special_ids)
    if tokenizer.vocab_size <= specials:
        raise _no_tokenizer(path, f"its {type(tokenizer).__name__} knows only {tokenizer.vocab_size} tokens, the "
                            f"{specials} special ones")  # fmt: skip
    return tokenizer


def _no_tokenizer(path: Path, reason: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"{path} has no usable tokenizer ({reason}): a checkpoint needs {TOKENIZER_FILES}; copy them from the model "
        f"it was trained from (`hf download ID tokenizer.json tokenizer_config.json --local-dir {path}`)"
    )


# ------------------------------------------------------------------------------ loading
@dataclass
class Loaded:
    model: torch.nn.Module  # gte.engine's Encoder / EncoderWithHead (or a model passed in), in eval mode
    tokenizer: Any
    name: str
    path: Path | None  # the checkpoint directory; None for a model object passed in
    int8: bool = False  # float32 now, for the caller to quantize (int8.quantize_measured) once it can measure


def load(
    model: str | os.PathLike | torch.nn.Module,
    choose_architecture: Callable[[str, int], str],
    *,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    tokenizer: Any,
    attn_implementation: str | None,
    revision: str | None = None,
    trainable: bool = False,
) -> Loaded:
    """Load a checkpoint (directory, or hub id at `revision`) into the engine as the architecture
    `choose_architecture(architecture, num_labels)` returns (one of gte.engine.ARCHITECTURES; it raises for
    checkpoints the caller cannot use), or take a loaded model as it is (moved or converted in place when a device or
    dtype is given). dtype "int8": float32 on the CPU, unpacked, with `Loaded.int8` set for the caller to quantize.
    `trainable`: plain nn.Linear projections (packed ones have no backward), in train mode. torch gets its default
    thread count here, unless the user chose one (gte.threads)."""
    from . import engine

    threads.configure()
    int8 = dtype == INT8
    if int8:
        device, dtype = int8_device(device), torch.float32
    if isinstance(model, torch.nn.Module):
        if revision is not None:
            raise ValueError(f"revision {revision!r} pins a hub commit of a model to load; this model is loaded "
                             "already: drop the revision")  # fmt: skip
        choose_architecture(getattr(model, "architecture", type(model).__name__), model.config.num_labels)
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=None if dtype is None else resolve_dtype(dtype, model.device))
        return Loaded(model.eval(), tokenizer, model.config._name_or_path or type(model).__name__, None, int8)
    target = resolve_device(device)
    path = resolve(model, revision)
    chosen = choose_architecture(*architecture(path))
    try:
        loaded = engine.load(path, chosen, dtype=resolve_dtype(dtype, target), attn_implementation=attn_implementation)
    except engine.MissingWeights as error:
        raise _incomplete(path, error.names) from None
    loaded = loaded.to(target).train(trainable)
    if not (int8 or trainable):
        prepack(loaded)  # ours alone to change: a model object passed in is used as it is
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(path)
    name = str(model) if revision is None else f"{model}@{revision}"
    return Loaded(loaded, tokenizer, name, path, int8)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' progress bar ("Loading weights") and load report stay off while gte loads a checkpoint (gte
    checks the weights itself), unless its verbosity asks for more than warnings (TRANSFORMERS_VERBOSITY=info or
    debug); its settings are as they were afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    if verbosity < hf_logging.WARNING:
        yield
        return
    hook = hf_logging.set_tqdm_hook(_no_progress_bar)
    hf_logging.set_verbosity(max(verbosity, hf_logging.ERROR))
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.set_tqdm_hook(hook)


def _no_progress_bar(factory: Callable, args: tuple, kwargs: dict) -> Any:
    return factory(*args, **{**kwargs, "disable": True})


def _incomplete(path: Path, missing: list[str]) -> CheckpointError:
    """Parameters the weights file lacks would be random numbers: refused."""
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return CheckpointError(f"{path}: the weights lack {', '.join(missing[:3])}{more}, which would be random numbers: "
                           "download the checkpoint again, or pass a complete one")  # fmt: skip
