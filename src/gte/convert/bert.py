"""BERT and XLM-RoBERTa checkpoints (model_type "bert" / "xlm-roberta") -> the `new` layout, exactly.

Both are post-norm encoders that ours expresses with absolute positions, packed q/k/v and
`gated_mlp=False` (BERT's up -> act -> down feed-forward). XLM-R numbers its positions from
padding_idx + 1: row padding_idx + 1 + i of its table is position i, so the table loses its first
padding_idx + 1 rows (never used) and positions start at 0 as everywhere else.

A BERT-family variant that we cannot run exactly (relative position embeddings, ALiBi, pre-norm
layers, decoders, an activation transformers does not know, weights we have no place for) is
refused with a ConversionError that names what it has.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import CONFIG_MAPPING

from .. import activations
from ..configuration import NewConfig
from .files import ConversionError

MODEL_TYPES = ("bert", "xlm-roberta")
ELSEWHERE = "run it with transformers or sentence-transformers instead"
BASE_PREFIXES = ("bert.", "roberta.")  # the base model inside a head checkpoint
BASE_ROOTS = ("embeddings.", "encoder.", "pooler.")  # the base model's own modules

# Their name -> ours, inside the base model. {i}: the layer index.
EMBEDDINGS = {
    "embeddings.word_embeddings": "embeddings.word_embeddings",
    "embeddings.position_embeddings": "embeddings.position_embeddings",
    "embeddings.token_type_embeddings": "embeddings.token_type_embeddings",
    "embeddings.LayerNorm": "embeddings.LayerNorm",
    "pooler.dense": "pooler.dense",
}
LAYER = {
    "attention.output.dense": "attention.o_proj",
    "attention.output.LayerNorm": "attn_ln",
    "intermediate.dense": "mlp.up_proj",
    "output.dense": "mlp.down_proj",
    "output.LayerNorm": "mlp_ln",
}
BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")  # index buffers some checkpoints store
# Old TF-converted checkpoints name LayerNorm parameters gamma / beta.
PARAMETER_NAMES = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}


@dataclass(frozen=True)
class Architecture:
    new_class: str  # our class, New* spelling; for NewModel every weight outside the base model is left behind
    heads: dict[str, str] = field(default_factory=dict)  # their head module -> ours (outside the base model)


@dataclass(frozen=True)
class Names:
    """How a layout names the weights of its base model, as data for `renamed`."""

    prefixes: tuple[str, ...]  # the base model inside a head checkpoint
    roots: tuple[str, ...]  # the base model's own modules, in a base checkpoint
    layer: str  # a layer's module: a regex with groups (layer index, part)
    embeddings: dict[str, str]  # their module outside the layers -> ours
    layer_parts: dict[str, str]  # their part of a layer -> ours; parts sharing one of ours are stacked in this order
    skip: tuple[str, ...] = ()  # index buffers some checkpoints store


ARCHITECTURES = {
    "BertModel": Architecture("NewModel"),
    "BertForMaskedLM": Architecture("NewModel"),  # the encoder of a pre-training checkpoint
    "BertForPreTraining": Architecture("NewModel"),
    "BertForSequenceClassification": Architecture("NewForSequenceClassification", {"classifier": "classifier"}),
    "XLMRobertaModel": Architecture("NewModel"),
    "XLMRobertaForMaskedLM": Architecture("NewModel"),
    # RobertaClassificationHead: dense -> tanh -> out_proj on the first token, i.e. our pooler + classifier
    "XLMRobertaForSequenceClassification": Architecture(
        "NewForSequenceClassification", {"classifier.dense": "new.pooler.dense", "classifier.out_proj": "classifier"}
    ),
}
DEFAULT_ARCHITECTURE = {"bert": "BertModel", "xlm-roberta": "XLMRobertaModel"}
NAMES = Names(BASE_PREFIXES, BASE_ROOTS, r"encoder\.layer\.(\d+)\.(.+)", EMBEDDINGS, LAYER | {
    "attention.self.query": "attention.qkv_proj", "attention.self.key": "attention.qkv_proj",
    "attention.self.value": "attention.qkv_proj",
}, skip=BUFFERS)  # fmt: skip

# config.json keys that keep their name and meaning
SHARED_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "max_position_embeddings", "type_vocab_size", "initializer_range", "layer_norm_eps",
    "pad_token_id", "classifier_dropout",
)  # fmt: skip
LABEL_KEYS = ("id2label", "label2id", "num_labels", "problem_type")
# Ours for every converted checkpoint. Attention dropout is dropped (our kernels take none): inference is
# unchanged, fine-tuning a converted model runs without it.
FIXED = {"position_embedding_type": "absolute", "gated_mlp": False, "pack_qkv": True, "unpad_inputs": True,
         "attention_probs_dropout_prob": 0.0}  # fmt: skip

# key -> (is the value one we cannot run?, what it means)
UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "position_embedding_type": (lambda v: v not in (None, "absolute"), "relative position embeddings or ALiBi"),
    "is_decoder": (bool, "a decoder (causal attention)"),
    "add_cross_attention": (bool, "cross-attention"),
    "prenorm": (bool, "pre-norm layers"),
    "pre_norm": (bool, "pre-norm layers"),
    "normalize_before": (bool, "pre-norm layers"),
    "hidden_act": (lambda v: not activations.known(v), "an activation transformers does not know"),
}


# ------------------------------------------------------------------------------------ config
def architecture(raw: dict[str, Any]) -> str:
    """Our class for a BERT / XLM-R config.json, New* spelling."""
    return _architecture(raw).new_class


def config_from_bert(raw: dict[str, Any]) -> NewConfig:
    """A NewConfig for a BERT / XLM-R config.json dict; ConversionError for variants we cannot run exactly."""
    arch = _architecture(raw)
    full = _with_defaults(raw)
    bad = [f"{key}={full[key]!r} ({what})" for key, (unsupported, what) in UNSUPPORTED.items() if unsupported(full.get(key))]
    if bad:
        raise ConversionError(
            f"this {raw['model_type']} checkpoint has {'; '.join(bad)}: gte runs BERT-family models exactly only with "
            f"absolute positions, post-norm layers and one of transformers' activations; {ELSEWHERE}"
        )
    kwargs = {key: full[key] for key in SHARED_KEYS} | {key: raw[key] for key in LABEL_KEYS if key in raw}
    kwargs["max_position_embeddings"] -= position_offset(full)
    return NewConfig(**kwargs, **FIXED, architectures=[arch.new_class])


def position_offset(config: dict[str, Any]) -> int:
    """Rows of the position table before position 0: padding_idx + 1 for XLM-R, none for BERT."""
    return config["pad_token_id"] + 1 if config["model_type"] == "xlm-roberta" else 0


def _with_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """transformers' defaults for the keys a config.json leaves out."""
    return CONFIG_MAPPING[raw["model_type"]]().to_dict() | raw


def _architecture(raw: dict[str, Any]) -> Architecture:
    return pick_architecture(raw, ARCHITECTURES, DEFAULT_ARCHITECTURE[raw["model_type"]])


def pick_architecture(raw: dict[str, Any], architectures: dict[str, Architecture], default: str) -> Architecture:
    """The Architecture a config.json names (`default` when it names none); ConversionError for one we do not run."""
    name = (raw.get("architectures") or [default])[0]
    if name not in architectures:
        raise ConversionError(
            f"gte cannot run the {raw['model_type']} architecture {name!r} exactly (custom code or a head we do not "
            f"have): it runs {', '.join(architectures)}; {ELSEWHERE}"
        )
    return architectures[name]


# ------------------------------------------------------------------------------------ weights
def state_dict_from_bert(weights: dict[str, torch.Tensor], raw: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Their parameter names -> ours; q/k/v packed; XLM-R's position table shifted to start at position 0."""
    offset = position_offset(_with_defaults(raw))

    def adjust(module: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor[offset:] if module == "embeddings.position_embeddings" else tensor

    return renamed(weights, _architecture(raw), NAMES, adjust)


def renamed(weights: dict[str, torch.Tensor], arch: Architecture, names: Names,
            adjust: Callable[[str, torch.Tensor], torch.Tensor] = lambda module, tensor: tensor) -> dict[str, torch.Tensor]:  # fmt: skip
    """Their weights under our names (`adjust(their module, tensor)` first): the base model's through `names`, the
    heads' through `arch`; ConversionError for a weight with no place."""
    base_prefix = "" if arch.new_class == "NewModel" else "new."
    out: dict[str, torch.Tensor] = {}
    stacks: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in weights.items():
        inner = strip_base_prefix(name, names.prefixes, names.roots)
        if inner is None:  # a head weight
            if arch.new_class != "NewModel":
                out[rename_head(name, arch.heads)] = tensor
            continue
        if inner.startswith(names.skip):
            continue
        module, kind = split_parameter(inner, name)
        tensor = adjust(module, tensor)
        layer = re.fullmatch(names.layer, module)
        if layer is None:
            if module not in names.embeddings:
                raise unknown_weight(name)
            out[f"{base_prefix}{names.embeddings[module]}.{kind}"] = tensor
            continue
        i, part = layer.groups()
        if part not in names.layer_parts:
            raise unknown_weight(name)
        stacks.setdefault(f"{base_prefix}encoder.layer.{i}.{names.layer_parts[part]}.{kind}", {})[part] = tensor
    order = list(names.layer_parts)
    for name, parts in stacks.items():
        stacked = [parts[p] for p in sorted(parts, key=order.index)]
        out[name] = stacked[0] if len(stacked) == 1 else torch.cat(stacked)
    return out


def strip_base_prefix(name: str, prefixes: tuple[str, ...], roots: tuple[str, ...]) -> str | None:
    """The name inside the base model (stored under one of `prefixes`, or bare under one of its `roots`), or None
    for a head weight."""
    for prefix in prefixes:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name if name.startswith(roots) else None


def split_parameter(inner: str, name: str) -> tuple[str, str]:
    module, _, kind = inner.rpartition(".")
    if kind not in PARAMETER_NAMES:
        raise unknown_weight(name)
    return module, PARAMETER_NAMES[kind]


def rename_head(name: str, heads: dict[str, str]) -> str:
    module, _, kind = name.rpartition(".")
    if module not in heads:
        raise unknown_weight(name)
    return f"{heads[module]}.{PARAMETER_NAMES.get(kind, kind)}"


def unknown_weight(name: str) -> ConversionError:
    return ConversionError(
        f"weight {name!r} has no place in gte's encoder: this checkpoint is a variant gte cannot run exactly; {ELSEWHERE}"
    )
