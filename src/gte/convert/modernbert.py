"""ModernBERT checkpoints (model_type "modernbert": answerdotai/ModernBERT-base, gte-modernbert-base,
gte-reranker-modernbert-base) -> `new`, exactly.

ModernBERT is our encoder with pre-norm layers (`norm_position: "pre"`, a final norm), no attention norm in
layer 0 (`first_attn_norm: false`: the embeddings' norm stands in), LayerNorms without biases (`norm_bias`), no
position table or token types, packed q/k/v (`Wqkv`), local attention in the layers `layer_types` marks
"sliding_attention" (a query sees the keys at most local_attention // 2 positions away, transformers' band) with
their own RoPE base (`local_rope_theta`), and a GeGLU whose first half of `Wi` is activated: our `up_gate_proj`
activates its second half, so the halves swap. Its head (dense -> act -> norm) is our pooler with `pooler_norm`
(after "cls" or "mean" pooling; per token in the token classifier, `token_head`) and our masked-LM head's transform. Dropouts: `mlp_dropout` becomes
`hidden_dropout_prob`; embedding and attention-output dropout (0 in every official checkpoint) are left out.

Refused with a ConversionError naming the setting: rotary scaling (`rope_parameters` of another type), biases on
the feed-forward's input projection (`mlp_bias`: ours has none there), activations transformers does not know,
architectures we have no head for (question answering, multiple choice).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import CONFIG_MAPPING

from .. import activations
from ..configuration import NewConfig
from .bert import (
    ELSEWHERE, LABEL_KEYS, Architecture, Names, pick_architecture, renamed,
)
from .files import ConversionError

MODEL_TYPE = "modernbert"
BASE_PREFIXES = ("model.",)
BASE_ROOTS = ("embeddings.", "layers.", "final_norm.")

# Their name -> ours, inside the base model. Layers: layers.{i}.<name>.
EMBEDDINGS = {
    "embeddings.tok_embeddings": "embeddings.word_embeddings",
    "embeddings.norm": "embeddings.LayerNorm",
    "final_norm": "encoder.final_norm",
}
LAYER = {
    "attn_norm": "attn_ln",
    "attn.Wqkv": "attention.qkv_proj",  # q, k, v rows in our order
    "attn.Wo": "attention.o_proj",
    "mlp_norm": "mlp_ln",
    "mlp.Wo": "mlp.down_proj",
}
NAMES = Names(BASE_PREFIXES, BASE_ROOTS, r"layers\.(\d+)\.(.+)", EMBEDDINGS, LAYER | {"mlp.Wi": "mlp.up_gate_proj"})

ARCHITECTURES = {
    "ModernBertModel": Architecture("NewModel"),
    "ModernBertForMaskedLM": Architecture(
        "NewForMaskedLM", {"head.dense": "lm_head.dense", "head.norm": "lm_head.norm", "decoder": "lm_head.decoder"}
    ),
    "ModernBertForSequenceClassification": Architecture(
        "NewForSequenceClassification",
        {"head.dense": "new.pooler.dense", "head.norm": "new.pooler.norm", "classifier": "classifier"},
    ),
    "ModernBertForTokenClassification": Architecture(
        "NewForTokenClassification", {"head.dense": "head.dense", "head.norm": "head.norm", "classifier": "classifier"}
    ),
}

SHARED_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "max_position_embeddings", "initializer_range", "pad_token_id", "attention_bias", "norm_bias", "layer_types",
    "classifier_pooling", "classifier_dropout", "decoder_bias", "tie_word_embeddings",
)  # fmt: skip
# Ours for every ModernBERT checkpoint. Attention dropout is dropped as for BERT (our kernels take none).
FIXED = {"position_embedding_type": "rope", "rope_scaling": None, "type_vocab_size": 0, "norm_position": "pre",
         "first_attn_norm": False, "gated_mlp": True, "pack_qkv": True, "mlp_bias": False, "pooler_norm": True, "token_head": True,
         "layer_norm_type": "layer_norm", "unpad_inputs": True, "attention_probs_dropout_prob": 0.0}  # fmt: skip


# ------------------------------------------------------------------------------------ config
def architecture(raw: dict[str, Any]) -> str:
    """Our class for a ModernBERT config.json, New* spelling."""
    return _architecture(raw).new_class


def config_from_modernbert(raw: dict[str, Any]) -> NewConfig:
    """A NewConfig for a ModernBERT config.json dict (read as transformers' ModernBertConfig reads it: legacy
    global_attn_every_n_layers and global / local_rope_theta included); ConversionError for what we cannot run."""
    arch = _architecture(raw)
    config = CONFIG_MAPPING[MODEL_TYPE].from_dict(raw)
    ropes = config.rope_parameters
    bad = [f"rope_parameters[{kind!r}]={ropes[kind]!r} (rotary scaling)" for kind in sorted(ropes)
           if ropes[kind].get("rope_type", "default") != "default"]  # fmt: skip
    if config.mlp_bias:
        bad.append("mlp_bias=True (a bias on the feed-forward's input projection Wi)")
    for key in ("hidden_activation", "classifier_activation"):
        if not activations.known(getattr(config, key)):
            bad.append(f"{key}={getattr(config, key)!r} (an activation transformers does not know)")
    if bad:
        raise ConversionError(
            f"this modernbert checkpoint has {'; '.join(bad)}: gte runs ModernBERT exactly only with unscaled RoPE, "
            f"a feed-forward without biases and one of transformers' activations; {ELSEWHERE}"
        )
    kwargs = {key: getattr(config, key) for key in SHARED_KEYS} | {key: raw[key] for key in LABEL_KEYS if key in raw}
    kwargs |= {
        "hidden_act": config.hidden_activation,
        "hidden_dropout_prob": config.mlp_dropout,
        "layer_norm_eps": config.norm_eps,
        "rope_theta": ropes["full_attention"]["rope_theta"],
        "local_rope_theta": ropes["sliding_attention"]["rope_theta"],
        "sliding_window": config.local_attention // 2,  # transformers' band: |i - j| <= local_attention // 2
        "head_act": config.classifier_activation,
        "head_bias": config.classifier_bias,
    }
    return NewConfig(**kwargs, **FIXED, architectures=[arch.new_class])


def _architecture(raw: dict[str, Any]) -> Architecture:
    return pick_architecture(raw, ARCHITECTURES, "ModernBertModel")


# ------------------------------------------------------------------------------------ weights
def state_dict_from_modernbert(weights: dict[str, torch.Tensor], raw: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Their parameter names -> ours; Wi's halves swapped into up_gate_proj: its rows are [activated; gate], ours
    [gate (our "up"); activated]."""

    def adjust(module: str, tensor: torch.Tensor) -> torch.Tensor:
        if not module.endswith(".mlp.Wi"):
            return tensor
        activated, gate = tensor.chunk(2)
        return torch.cat([gate, activated])

    return renamed(weights, _architecture(raw), NAMES, adjust)
