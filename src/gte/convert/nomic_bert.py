"""nomic-bert checkpoints (model_type "nomic_bert": nomic-embed-text-v1 / v1.5 and fine-tunes) -> `new`, exactly.

nomic-bert is our encoder with other names and without biases: word + token type embeddings and a LayerNorm
(`emb_ln`), post-norm layers (`norm1`, `norm2`), packed q/k/v (`attn.Wqkv`) with rotate-half RoPE over the
whole head, and a GLU feed-forward: act(`fc12`, the gate) * `fc11` (up) -> `fc2`, which is our `up_gate_proj`
(up rows first) and `down_proj`. Its config.json comes in two spellings: the hub checkpoints' own (GPT-2 keys
read by nomic's remote code: n_embd, rotary_emb_base, qkv_proj_bias, ...) and transformers' native
NomicBertConfig (hidden_size, rope_parameters). The weights carry the same names in both: transformers saves
the hub's names.

Rotary scaling (nomic's `rotary_scaling_factor` past `max_trained_positions`, 2048 on the hub; transformers'
`rope_parameters` of rope_type "dynamic" past `max_position_embeddings`) is dynamic NTK, our rope_scaling
{"type": "dynamic", "factor", "original_max_position_embeddings"}: each sequence gets the frequencies for its own
length, which is what their code gives it run alone (in their batches the base follows the padded length, and
earlier calls; gte.rope).

A variant that we cannot run exactly is refused with a ConversionError naming its setting: pre-norm or
parallel layers, causal attention, rotary embeddings over part of each head, interleaved rotary pairs, XPos,
rotary scaling other than dynamic NTK by a factor >= 1, biases on the GLU's up/gate projection, RMSNorm, a
feed-forward other than a GLU, mixture-of-experts layers (nomic-embed-text-v2-moe).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import CONFIG_MAPPING

from .. import activations
from ..configuration import NewConfig
from .bert import (
    ELSEWHERE, LABEL_KEYS, Architecture, Names, pick_architecture, renamed,
)
from .files import ConversionError

MODEL_TYPE = "nomic_bert"
BASE_PREFIXES = ("nomic_bert.", "bert.")  # transformers' head classes; nomic's own pre-training class
BASE_ROOTS = ("embeddings.", "emb_ln.", "encoder.", "pooler.")

# Their name -> ours, inside the base model. Layers: encoder.layers.{i}.<name>.
EMBEDDINGS = {
    "embeddings.word_embeddings": "embeddings.word_embeddings",
    "embeddings.token_type_embeddings": "embeddings.token_type_embeddings",
    "emb_ln": "embeddings.LayerNorm",
    "pooler.dense": "pooler.dense",
}
LAYER = {
    "attn.Wqkv": "attention.qkv_proj",  # q, k, v rows in our order
    "attn.out_proj": "attention.o_proj",
    "mlp.fc2": "mlp.down_proj",
    "norm1": "attn_ln",
    "norm2": "mlp_ln",
}
# up (fc11), then gate (fc12): stacked into mlp.up_gate_proj in this order
NAMES = Names(BASE_PREFIXES, BASE_ROOTS, r"encoder\.layers\.(\d+)\.(.+)", EMBEDDINGS,
              LAYER | {"mlp.fc11": "mlp.up_gate_proj", "mlp.fc12": "mlp.up_gate_proj"})  # fmt: skip

ARCHITECTURES = {
    "NomicBertModel": Architecture("NewModel"),
    "NomicBertForMaskedLM": Architecture("NewModel"),  # the encoder of a pre-training checkpoint
    "NomicBertForPreTraining": Architecture("NewModel"),  # nomic's own (nomic-bert-2048)
    "NomicBertForSequenceClassification": Architecture("NewForSequenceClassification", {"classifier": "classifier"}),
}
REMOTE_ARCHITECTURES = ("NomicBertModel", "NomicBertForPreTraining")  # those whose remote code we know to be ours

# Ours for every converted checkpoint; attention dropout is dropped as for BERT (our kernels take none).
FIXED = {"position_embedding_type": "rope", "gated_mlp": True, "pack_qkv": True,
         "unpad_inputs": True, "attention_probs_dropout_prob": 0.0}  # fmt: skip

# --- transformers' NomicBertConfig
NATIVE_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "max_position_embeddings", "type_vocab_size", "initializer_range", "layer_norm_eps",
    "pad_token_id", "classifier_dropout",
)  # fmt: skip

# --- the hub's spelling: nomic's remote NomicBertConfig (a GPT2Config); its defaults for keys a config.json leaves out
REMOTE_DEFAULTS = {
    "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None, "n_positions": 1024, "vocab_size": 50257,
    "pad_vocab_size_multiple": 1, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "resid_pdrop": 0.1,
    "initializer_range": 0.02, "type_vocab_size": 2, "rotary_emb_fraction": 0.0, "rotary_emb_base": 1000,
    "rotary_emb_interleaved": False, "rotary_emb_scale_base": None, "rotary_scaling_factor": None,
    "max_trained_positions": 2048, "qkv_proj_bias": True, "mlp_fc1_bias": True, "mlp_fc2_bias": True,
    "prenorm": False, "parallel_block": False, "causal": False, "use_rms_norm": False, "pad_token_id": None,
}  # fmt: skip
GLU_ACTIVATIONS = {"swiglu": "silu", "geglu": "gelu", "glu": "sigmoid"}  # nomic's name -> the gate's activation
# key -> (is the value one we cannot run?, what it means)
REMOTE_UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "prenorm": (bool, "pre-norm layers"),
    "parallel_block": (bool, "attention and feed-forward in parallel"),
    "causal": (bool, "causal attention"),
    "rotary_emb_fraction": (lambda v: v != 1, "rotary embeddings over part of each head (or none)"),
    "rotary_emb_interleaved": (bool, "interleaved rotary pairs"),
    "rotary_emb_scale_base": (lambda v: v is not None, "XPos rotary scaling"),
    # nomic's code scales when the factor is truthy (dynamic NTK); we take factors >= 1, as transformers asks
    "rotary_scaling_factor": (lambda v: bool(v) and not _is_factor(v),
                              "dynamic NTK scaling by other than a number >= 1"),
    "mlp_fc1_bias": (bool, "biases on the feed-forward's up and gate projections"),
    "use_rms_norm": (bool, "RMSNorm"),
    "activation_function": (lambda v: v not in GLU_ACTIVATIONS, "a feed-forward other than a GLU"),
    "moe_every_n_layers": (bool, "mixture-of-experts layers"),
    "num_experts": (bool, "mixture-of-experts layers"),
}  # fmt: skip


# ------------------------------------------------------------------------------------ config
def architecture(raw: dict[str, Any]) -> str:
    """Our class for a nomic-bert config.json, New* spelling."""
    return _architecture(raw).new_class


def config_from_nomic_bert(raw: dict[str, Any]) -> NewConfig:
    """A NewConfig for a nomic-bert config.json dict (either spelling); ConversionError for variants we cannot
    run exactly."""
    arch = _architecture(raw)
    kwargs, bad = _remote_settings(raw) if _is_remote(raw) else _native_settings(raw)
    if not activations.known(kwargs["hidden_act"]):
        bad.append(f"hidden_act={kwargs['hidden_act']!r} (an activation transformers does not know)")
    if bad:
        raise ConversionError(
            f"this nomic_bert checkpoint has {'; '.join(bad)}: gte runs nomic-bert exactly only with post-norm "
            f"layers, rotate-half RoPE over whole heads (unscaled or dynamic NTK) and a GLU feed-forward; {ELSEWHERE}"
        )
    labels = {key: raw[key] for key in LABEL_KEYS if key in raw}
    return NewConfig(**kwargs, **labels, **FIXED, architectures=[arch.new_class])


def _is_remote(raw: dict[str, Any]) -> bool:
    """Whether a config.json is in the hub's spelling (nomic's remote code) rather than transformers' native one."""
    return "n_embd" in raw


def _native_settings(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """NewConfig keys and what we cannot run, from transformers' NomicBertConfig (its defaults, its reading of
    legacy rope keys)."""
    config = CONFIG_MAPPING[MODEL_TYPE].from_dict(raw)
    kwargs = {key: getattr(config, key) for key in NATIVE_KEYS}
    rope = config.rope_parameters
    kwargs |= {"rope_theta": rope["rope_theta"], "attention_bias": False, "mlp_bias": False}
    kwargs["rope_scaling"], bad = _native_scaling(rope, config.max_position_embeddings)
    if config.head_dim * config.num_attention_heads != config.hidden_size:
        bad.append(f"head_dim={config.head_dim} (heads of another size than hidden_size / num_attention_heads)")
    return kwargs, bad


def _native_scaling(rope: dict[str, Any], max_positions: int) -> tuple[dict[str, Any] | None, list[str]]:
    """Our rope_scaling for transformers' rope_parameters, and what we cannot run. Its dynamic NTK scales past
    max_position_embeddings, whatever original_max_position_embeddings says: a key that disagrees is refused."""
    kind = rope.get("rope_type", "default")
    if kind == "default":
        return None, []
    factor, trained = rope.get("factor"), rope.get("original_max_position_embeddings", max_positions)
    if kind != "dynamic" or not _is_factor(factor):
        return None, [f"rope_parameters={rope!r} (rotary scaling other than dynamic NTK by a factor >= 1)"]
    if trained != max_positions:
        return None, [f"rope_parameters={rope!r} (original_max_position_embeddings={trained}, which transformers' "
                      f"dynamic NTK ignores for max_position_embeddings={max_positions}; make them equal)"]  # fmt: skip
    return _dynamic(factor, max_positions), []


def _dynamic(factor: float, trained: int) -> dict[str, Any]:
    return {"type": "dynamic", "factor": factor, "original_max_position_embeddings": trained}


def _is_factor(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1


def _remote_settings(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """NewConfig keys and what we cannot run, from the hub's spelling (nomic's remote NomicBertConfig)."""
    full = REMOTE_DEFAULTS | raw
    bad = [f"{key}={full.get(key)!r} ({what})" for key, (unsupported, what) in REMOTE_UNSUPPORTED.items()
           if unsupported(full.get(key))]  # fmt: skip
    if _architecture(raw).new_class != "NewModel" and raw["architectures"][0] not in REMOTE_ARCHITECTURES:
        bad.append(f"architectures={raw['architectures']!r} (a head of nomic's remote code; gte runs transformers' "
                   "NomicBertForSequenceClassification)")  # fmt: skip
    multiple, factor = full["pad_vocab_size_multiple"], full["rotary_scaling_factor"]
    kwargs = {
        "vocab_size": -(-full["vocab_size"] // multiple) * multiple,  # the remote code pads the table to a multiple
        "hidden_size": full["n_embd"],
        "num_hidden_layers": full["n_layer"],
        "num_attention_heads": full["n_head"],
        "intermediate_size": full["n_inner"] or 4 * full["n_embd"],
        "hidden_act": GLU_ACTIVATIONS.get(full["activation_function"], full["activation_function"]),
        "hidden_dropout_prob": full["resid_pdrop"],
        "max_position_embeddings": full["n_positions"],
        "type_vocab_size": full["type_vocab_size"],
        "initializer_range": full["initializer_range"],
        "layer_norm_eps": full["layer_norm_epsilon"],
        "pad_token_id": full["pad_token_id"],
        "rope_theta": full["rotary_emb_base"],
        "rope_scaling": _dynamic(factor, full["max_trained_positions"]) if factor else None,
        "attention_bias": full["qkv_proj_bias"],  # Wqkv and out_proj alike
        "mlp_bias": full["mlp_fc2_bias"],
    }
    return kwargs, bad


def _architecture(raw: dict[str, Any]) -> Architecture:
    return pick_architecture(raw, ARCHITECTURES, "NomicBertModel")


# ------------------------------------------------------------------------------------ weights
def state_dict_from_nomic_bert(weights: dict[str, torch.Tensor], raw: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Their parameter names -> ours; fc11 (up) and fc12 (gate) stacked into up_gate_proj."""
    return renamed(weights, _architecture(raw), NAMES)
