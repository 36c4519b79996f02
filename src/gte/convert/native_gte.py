"""The official `new` layout <-> transformers' native `gte` layout (model_type "gte").

Native `gte` checkpoints (converted by transformers) split q/k/v and gate/up, rename the norms and
describe NTK scaling as linear `rope_parameters`. Both layouts load into the same `gte` classes.
The native layout has no logn scale, no `mixed_b`, no RMSNorm and no absolute positions, and only
the base model, masked-LM, sequence- and token-classification heads: converting those refuses.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..configuration import NewConfig
from .files import ConversionError

# official (new) name -> native (gte) name, inside the base model; {i} = layer index
_LAYER_RENAMES = {
    "attention.o_proj": "self_attn.o_proj",
    "attention.q_proj": "self_attn.q_proj",
    "attention.k_proj": "self_attn.k_proj",
    "attention.v_proj": "self_attn.v_proj",
    "attn_ln": "post_attention_layernorm",
    "mlp_ln": "post_mlp_layernorm",
    "mlp.down_proj": "mlp.down_proj",
}
_NATIVE_ARCHITECTURES = {
    "NewModel": "GteModel",
    "NewForMaskedLM": "GteForMaskedLM",
    "NewForSequenceClassification": "GteForSequenceClassification",
    "NewForTokenClassification": "GteForTokenClassification",
}
_SHARED_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
    "initializer_range", "layer_norm_eps", "pad_token_id", "classifier_dropout", "id2label", "label2id",
    "problem_type", "tie_word_embeddings",
)  # fmt: skip
# Keys of ours (ModernBERT's pre-norm layers, local attention, heads) that the native layout has only at these values.
_NEW_ONLY = {
    "norm_position": "post", "first_attn_norm": True, "norm_bias": True, "layer_types": None, "local_rope_theta": None,
    "classifier_pooling": "cls", "head_act": None, "head_bias": True, "pooler_norm": False, "decoder_bias": True,
    "token_head": False,
}  # fmt: skip
# transformers' GteConfig defaults for keys a native config.json may leave out: those read here, and
# those that differ from NewConfig's.
_NATIVE_DEFAULTS = {
    "hidden_size": 768, "num_attention_heads": 12, "vocab_size": 250048, "max_position_embeddings": 8192,
    "pad_token_id": 1, "rope_theta": 160000.0,
}  # fmt: skip


# ------------------------------------------------------------------------------------ new -> gte
def native_config(config: NewConfig) -> dict[str, Any]:
    """A native `gte` config.json dict for this model, or ConversionError naming what it cannot express."""
    unsupported = {
        "logn_attention_scale": config.logn_attention_scale,
        "layer_norm_type='rms_norm'": config.layer_norm_type == "rms_norm",
        "position_embedding_type='absolute'": config.position_embedding_type == "absolute",
        "rope_scaling mixed_b": bool(config.rope_scaling and config.rope_scaling.get("mixed_b") is not None),
        # transformers' dynamic NTK follows the batch's padded length, ours each sequence's own
        "rope_scaling of type 'dynamic'": bool(config.rope_scaling and config.rope_scaling["type"] == "dynamic"),
        "gated_mlp=False (BERT's feed-forward)": not config.gated_mlp,
        "attention_bias=False (projections without biases)": not config.attention_bias,
        "mlp_bias=False (a feed-forward without biases)": not config.mlp_bias,
        f"a masked-LM head with hidden_act={config.hidden_act!r} (native: always 'gelu')": _mlm_act_differs(
            config.architectures, config.hidden_act
        ),
        **{f"{key}={getattr(config, key)!r}": getattr(config, key) != default for key, default in _NEW_ONLY.items()},
    }
    bad = [name for name, present in unsupported.items() if present]
    if bad:
        raise ConversionError(
            f"transformers' native `gte` layout cannot express {', '.join(bad)}; keep this checkpoint in the "
            "official `new` layout (it loads with `gte` as it is)"
        )
    architectures = [_NATIVE_ARCHITECTURES.get(a) for a in (config.architectures or ["NewModel"])]
    if None in architectures:
        raise ConversionError(
            f"transformers' native `gte` has no class for {config.architectures}; it has {sorted(_NATIVE_ARCHITECTURES)}"
        )
    out = {key: getattr(config, key) for key in _SHARED_KEYS if hasattr(config, key)}
    theta, scaling = float(config.rope_theta), config.rope_scaling
    if scaling:
        factor = float(scaling["factor"])
        rope = {"rope_type": "linear", "factor": factor ** (2 / config.head_dim), "rope_theta": theta * factor}
    else:
        rope = {"rope_type": "default", "rope_theta": theta}
    return {**out, "model_type": "gte", "architectures": architectures, "rope_parameters": rope}


def native_state_dict(state_dict: dict[str, torch.Tensor], config: NewConfig) -> dict[str, torch.Tensor]:
    """Official parameter names and packing -> native `gte` ones (a tied MLM decoder weight is not stored)."""
    out: dict[str, torch.Tensor] = {}
    hidden, inter = config.hidden_size, config.intermediate_size
    for name, tensor in state_dict.items():
        if name == "lm_head.decoder.weight" and config.tie_word_embeddings:
            continue
        prefix, rest = _split_prefix(name, "new.")
        native_prefix = "gte." if prefix else ""
        match = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", rest)
        if match is None:
            rest = rest.replace("lm_head.norm.", "lm_head.layer_norm.")
            out[native_prefix + rest] = tensor
            continue
        i, module, kind = match.groups()
        base = f"{native_prefix}layers.{i}."
        if module == "attention.qkv_proj":
            for part, t in zip("qkv", tensor.split(hidden)):
                out[f"{base}self_attn.{part}_proj.{kind}"] = t.clone()
        elif module == "mlp.up_gate_proj":
            up, gate = tensor.split(inter)
            out[f"{base}mlp.up_proj.{kind}"], out[f"{base}mlp.gate_proj.{kind}"] = up.clone(), gate.clone()
        else:
            out[f"{base}{_LAYER_RENAMES[module]}.{kind}"] = tensor
    return out


# ------------------------------------------------------------------------------------ gte -> new
def config_from_native(native: dict[str, Any]) -> NewConfig:
    native = _NATIVE_DEFAULTS | native
    if _mlm_act_differs(native.get("architectures"), native.get("hidden_act", "gelu")):
        raise ConversionError(
            f"this native GteForMaskedLM uses hidden_act={native['hidden_act']!r} in its encoder but 'gelu' in its "
            "masked-LM head, which the GTE `new` architecture cannot express; load it with transformers' GteForMaskedLM"
        )
    rope = native.get("rope_parameters") or {}
    theta = rope.get("rope_theta", native["rope_theta"])
    head_dim = native["hidden_size"] // native["num_attention_heads"]
    if rope.get("rope_type", "default") == "default":
        scaling = None
    elif rope["rope_type"] == "linear":
        factor = round(float(rope["factor"]) ** (head_dim / 2), 10)
        theta, scaling = theta / factor, {"type": "ntk", "factor": factor}
    else:
        raise ConversionError(f"rope_type {rope['rope_type']!r} has no equivalent in the GTE `new` architecture")
    kwargs = {key: native[key] for key in _SHARED_KEYS if key in native}
    architectures = [a.replace("Gte", "New", 1) for a in native.get("architectures") or ["GteModel"]]
    return NewConfig(
        **kwargs, rope_theta=theta, rope_scaling=scaling, pack_qkv=True, architectures=architectures
    )


def state_dict_from_native(native: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Native `gte` names -> official ones, q/k/v and up/gate packed again."""
    renames = {v: k for k, v in _LAYER_RENAMES.items() if not k.startswith("attention.")} | {"self_attn.o_proj": "attention.o_proj"}
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in native.items():
        prefix, rest = _split_prefix(name, "gte.")
        new_prefix = "new." if prefix else ""
        match = re.fullmatch(r"layers\.(\d+)\.(.+)\.(weight|bias)", rest)
        if match is None:
            out[new_prefix + rest.replace("lm_head.layer_norm.", "lm_head.norm.")] = tensor
            continue
        i, module, kind = match.groups()
        base = f"{new_prefix}encoder.layer.{i}."
        if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            groups.setdefault(f"{base}attention.qkv_proj.{kind}", {})[module[10]] = tensor
        elif module in ("mlp.up_proj", "mlp.gate_proj"):
            groups.setdefault(f"{base}mlp.up_gate_proj.{kind}", {})[module[4:-5]] = tensor
        else:
            out[f"{base}{renames[module]}.{kind}"] = tensor
    for name, parts in groups.items():
        order = ("q", "k", "v") if "qkv" in name else ("up", "gate")
        out[name] = torch.cat([parts[p] for p in order])
    return out


def architecture(native: dict[str, Any]) -> str:
    """The class a native config.json asks for, in the official `New*` spelling."""
    return (native.get("architectures") or ["GteModel"])[0].replace("Gte", "New", 1)


def _mlm_act_differs(architectures: list[str] | None, hidden_act: str) -> bool:
    """Native GteForMaskedLM's head always applies gelu; ours (like the original) applies hidden_act."""
    masked_lm = {"NewForMaskedLM", "GteForMaskedLM"} & set(architectures or ())
    return bool(masked_lm) and hidden_act != "gelu"


def _split_prefix(name: str, prefix: str) -> tuple[str, str]:
    return (prefix, name[len(prefix):]) if name.startswith(prefix) else ("", name)
