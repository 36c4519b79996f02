"""Checkpoints in other layouts, converted to the official `new` layout as they load.

Each layout is declared as data in its own module:
    native_gte   transformers' native `gte` (model_type "gte") <-> official `new`, both ways
    bert         BERT and XLM-RoBERTa (model_type "bert", "xlm-roberta") -> `new` with BERT's MLP
    nomic_bert   nomic-bert (model_type "nomic_bert": nomic-embed-text) -> `new` without biases
    modernbert   ModernBERT (model_type "modernbert") -> `new` with pre-norm layers and local attention

`NewPreTrainedModel.from_pretrained` loads every checkpoint through `load`, the engine (`gte.engine.load`)
through `read`; `architecture` and `new_config` read a config.json of any layout without touching the
weights, `new_shapes` the names and shapes its weights take in our layout. `write_back` goes the other way for a fine-tuned model: every
conversion only moves stored values (renames, concatenations, slices), so it runs once on the stored
elements' numbers and the result says where each of our values came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..configuration import NewConfig, engine_only
from . import bert, modernbert, native_gte, nomic_bert
from .files import ConversionError, read_config, read_weights
from .native_gte import config_from_native, native_config, native_state_dict, state_dict_from_native

__all__ = [
    "ConversionError", "Layout", "LAYOUTS", "architecture", "load", "new_config", "new_shapes", "read", "write_back",
    "config_from_native", "native_config", "native_state_dict", "state_dict_from_native",
]  # fmt: skip


@dataclass(frozen=True)
class Layout:
    """How a foreign config.json and its weights become ours."""

    config: Callable[[dict[str, Any]], NewConfig]  # refuses (ConversionError) what it cannot express
    state_dict: Callable[[dict[str, torch.Tensor], dict[str, Any]], dict[str, torch.Tensor]]  # (weights, config.json)
    architecture: Callable[[dict[str, Any]], str]  # our class, New* spelling


_BERT = Layout(bert.config_from_bert, bert.state_dict_from_bert, bert.architecture)
LAYOUTS: dict[str, Layout] = {
    "gte": Layout(
        native_gte.config_from_native, lambda weights, raw: state_dict_from_native(weights), native_gte.architecture
    ),
    **dict.fromkeys(bert.MODEL_TYPES, _BERT),
    nomic_bert.MODEL_TYPE: Layout(
        nomic_bert.config_from_nomic_bert, nomic_bert.state_dict_from_nomic_bert, nomic_bert.architecture
    ),
    modernbert.MODEL_TYPE: Layout(
        modernbert.config_from_modernbert, modernbert.state_dict_from_modernbert, modernbert.architecture
    ),
}
MODEL_TYPES = ("new", *LAYOUTS)
# from_pretrained's own keywords, which config.json files may also carry (transformers writes "dtype"): never overrides
LOADING_KEYS = frozenset({"model_type", "dtype", "torch_dtype", "attn_implementation", "device_map", "quantization_config",
                          "output_loading_info", "trust_remote_code", "use_safetensors", "revision"})  # fmt: skip


def architecture(raw: dict[str, Any]) -> str:
    """The class a config.json (any layout we read) asks for, in our New* spelling."""
    model_type = _model_type(raw)
    if model_type == "new":
        return (raw.get("architectures") or ["NewModel"])[0]
    return LAYOUTS[model_type].architecture(raw)


def new_config(raw: dict[str, Any]) -> NewConfig:
    """Our NewConfig for a config.json (any layout we read), built for gte's own use: it does not import the
    transformers model classes (`configuration.engine_only`)."""
    model_type = _model_type(raw)
    with engine_only():
        return NewConfig.from_dict(raw) if model_type == "new" else LAYOUTS[model_type].config(raw)


def new_shapes(raw: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """{our name: shape} for a checkpoint's {stored name: shape}, by its layout's own conversion run on
    meta tensors (no weight is read)."""
    model_type = _model_type(raw)
    if model_type == "new":
        return shapes
    meta = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    return {name: tuple(tensor.shape) for name, tensor in LAYOUTS[model_type].state_dict(meta, raw).items()}


def load(path: str, kwargs: dict[str, Any]) -> tuple[NewConfig, dict[str, torch.Tensor]] | None:
    """(config, state dict in the official layout) for a checkpoint in a foreign layout; None for `new` ones
    (and for anything without a config.json: transformers' own loading reports those). Keywords of
    `from_pretrained` that name keys of the checkpoint's config.json override them before the conversion (taken
    out of `kwargs`), as transformers does for its own configs: nomic's `rotary_scaling_factor=2`, say."""
    raw = read_config(path, kwargs)
    if raw is None or _model_type(raw) == "new":
        return None
    raw |= {key: kwargs.pop(key) for key in list(kwargs) if key in raw and key not in LOADING_KEYS}
    layout = LAYOUTS[raw["model_type"]]
    config = layout.config(raw)  # refuses before any weight is read
    return config, layout.state_dict(read_weights(path, kwargs), raw)


def read(path: str) -> tuple[NewConfig, dict[str, torch.Tensor]]:
    """(config, state dict in the official layout) for a checkpoint directory in any layout we read."""
    raw = read_config(path, {})
    if raw is None:
        raise ConversionError(f"{path} has no config.json: pass a checkpoint directory (config.json and model.safetensors)")
    model_type = _model_type(raw)
    config = new_config(raw)  # refuses before any weight is read
    weights = read_weights(path, {})
    return config, weights if model_type == "new" else LAYOUTS[model_type].state_dict(weights, raw)


def write_back(path: str, ours: dict[str, torch.Tensor], base_prefix: str = "new") -> dict[str, torch.Tensor]:
    """The checkpoint at `path`'s own tensors (names, shapes, layout; in float32) with our parameters' values in
    place of the stored ones they came from; what the conversion leaves behind (XLM-R's unused position rows,
    a pre-training head, BERT's pooler under NewModel) stays as stored. `base_prefix`: our base model's prefix,
    which a checkpoint of a head class stores and a base model's state dict lacks."""
    raw = read_config(path, {}) or {"model_type": "new"}
    stored = read_weights(path, {})
    numbers, start = {}, 0
    for name, tensor in stored.items():  # each stored element gets its number
        numbers[name] = torch.arange(start, start + tensor.numel()).view(tensor.shape)
        start += tensor.numel()
    model_type = _model_type(raw)
    sources = numbers if model_type == "new" else LAYOUTS[model_type].state_dict(numbers, raw)
    flat = torch.cat([tensor.detach().flatten().float().cpu() for tensor in stored.values()])
    written: set[int] = set()
    for name, tensor in ours.items():
        source = sources.get(name, sources.get(f"{base_prefix}.{name}"))
        if source is None and tensor.data_ptr() in written:
            continue  # a tied copy (a masked-LM decoder that is the word embeddings) of a weight written back
        written.add(tensor.data_ptr())
        if source is None or source.shape != tensor.shape:
            raise ConversionError(f"{path}: our weight {name!r} {tuple(tensor.shape)} has no stored counterpart to write "
                                  "back to; save the model in the official layout instead")  # fmt: skip
        flat[source.flatten()] = tensor.detach().flatten().float().cpu()
    return {name: flat[number.flatten()].view(stored[name].shape) for name, number in numbers.items()}


def _model_type(raw: dict[str, Any]) -> str:
    model_type = raw.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ConversionError(
            f"gte runs GTE v1.5 checkpoints (model_type 'new', or transformers' native 'gte') and BERT-family ones "
            f"('bert', 'xlm-roberta'), nomic-bert ('nomic_bert') and ModernBERT ('modernbert'); this one is {model_type!r}"
        )
    return model_type
