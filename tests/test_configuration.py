"""NewConfig: the original's defaults, every key of official config.json files, validation, round trips."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig

from fixtures import AUTO_MAP
from gte import NewConfig
from gte.rope import RotaryEmbedding

# config.json as the official hub repos store it (gte-base-en-v1.5 and gte-multilingual-reranker-base shapes).
OFFICIAL_BASE_EN = {
    "_name_or_path": "Alibaba-NLP/gte-base-en-v1.5",
    "architectures": ["NewModel"],
    "attention_probs_dropout_prob": 0.0,
    "auto_map": AUTO_MAP,
    "classifier_dropout": None,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "layer_norm_type": "layer_norm",
    "logn_attention_clip1": False,
    "logn_attention_scale": False,
    "max_position_embeddings": 8192,
    "model_type": "new",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pack_qkv": True,
    "pad_token_id": 0,
    "position_embedding_type": "rope",
    "rope_scaling": {"factor": 2.0, "type": "ntk"},
    "rope_theta": 500000,
    "torch_dtype": "float32",
    "transformers_version": "4.39.1",
    "type_vocab_size": 0,
    "unpad_inputs": False,
    "use_memory_efficient_attention": False,
    "vocab_size": 30528,
}
OFFICIAL_RERANKER = OFFICIAL_BASE_EN | {
    "architectures": ["NewForSequenceClassification"],
    "classifier_dropout": 0.0,
    "id2label": {"0": "LABEL_0"},
    "label2id": {"LABEL_0": 0},
    "pad_token_id": 1,
    "rope_scaling": {"factor": 8.0, "type": "ntk"},
    "rope_theta": 160000,
    "torch_dtype": "float16",
    "type_vocab_size": 1,
    "vocab_size": 250048,
}

DEFAULTS = {
    "vocab_size": 30528,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.0,
    "max_position_embeddings": 2048,
    "type_vocab_size": 1,
    "initializer_range": 0.02,
    "layer_norm_type": "layer_norm",
    "layer_norm_eps": 1e-12,
    "position_embedding_type": "rope",
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "classifier_dropout": None,
    "pack_qkv": True,
    "unpad_inputs": False,
    "use_memory_efficient_attention": False,
    "logn_attention_scale": False,
    "logn_attention_clip1": False,
}


def write_config(tmp_path, config: dict):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_defaults():
    config = NewConfig()
    assert config.model_type == "new"
    assert {key: getattr(config, key) for key in DEFAULTS} == DEFAULTS
    assert config.tie_word_embeddings is True
    assert (config.gated_mlp, config.attention_bias, config.mlp_bias) == (True, True, True)  # ours: the official model
    ours = ("norm_position", "first_attn_norm", "norm_bias", "layer_types", "sliding_window", "local_rope_theta",
            "classifier_pooling", "head_act", "head_bias", "pooler_norm", "decoder_bias", "token_head")  # ModernBERT's switches
    assert [getattr(config, key) for key in ours] == ["post", True, True, None, None, None, "cls", None, True, False, True, False]
    assert config.layer_window(0) is None


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"layer_norm_type": "batch_norm"}, "layer_norm_type"),
        ({"position_embedding_type": "alibi"}, "position_embedding_type"),
        ({"rope_scaling": {"type": "yarn", "factor": 2.0}}, "rope_scaling"),
        ({"rope_scaling": {"type": "dynamic"}}, r"rope_scaling\['factor'\]"),
        ({"rope_scaling": {"type": "dynamic", "factor": 0.5}}, r"rope_scaling\['factor'\]"),
        ({"rope_scaling": {"type": "dynamic", "factor": True}}, r"rope_scaling\['factor'\]"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 0}}, "original_max"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2, "original_max_position_embeddings": 2.5}}, "original_max"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0, "mixed_b": 0.5}}, "mixed_b"),
        ({"rope_scaling": {"type": "ntk"}}, r"rope_scaling\['factor'\]"),
        ({"rope_scaling": {"type": "ntk", "factor": 0.5}}, r"rope_scaling\['factor'\]"),
        ({"rope_scaling": "ntk"}, "rope_scaling"),
        ({"hidden_size": 100, "num_attention_heads": 12}, "hidden_size"),
        ({"num_attention_heads": 0}, "num_attention_heads"),
        ({"attention_bias": "no"}, "attention_bias"),
        ({"mlp_bias": None}, "mlp_bias"),
        ({"norm_position": "middle"}, "norm_position"),
        ({"norm_bias": 1}, "norm_bias"),
        ({"classifier_pooling": "max"}, "classifier_pooling"),
        ({"head_act": "nope"}, "head_act"),
        ({"layer_types": ["full_attention"]}, "layer_types"),
        ({"num_hidden_layers": 2, "layer_types": ["full_attention", "local"]}, "layer_types"),
        ({"num_hidden_layers": 2, "layer_types": ["full_attention", "sliding_attention"]}, "sliding_window"),
        ({"num_hidden_layers": 2, "layer_types": ["full_attention", "sliding_attention"], "sliding_window": -1}, "sliding_window"),
    ],
)
def test_invalid_values_raise_value_error_naming_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        NewConfig(**kwargs)


def test_invalid_config_json_is_refused_on_load(tmp_path):
    write_config(tmp_path, OFFICIAL_BASE_EN | {"layer_norm_type": "group_norm"})
    with pytest.raises(ValueError, match="layer_norm_type"):
        AutoConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("official", [OFFICIAL_BASE_EN, OFFICIAL_RERANKER], ids=["base-en", "reranker"])
def test_official_config_json_loads(tmp_path, official):
    config = AutoConfig.from_pretrained(write_config(tmp_path, official))
    assert type(config) is NewConfig
    for key, value in official.items():
        if key not in ("_name_or_path", "torch_dtype", "transformers_version", "id2label"):
            assert getattr(config, key) == value, key
    assert config.dtype == getattr(torch, official["torch_dtype"])
    assert config.auto_map == official["auto_map"]
    assert config.num_labels == len(official.get("id2label", {0: "", 1: ""}))
    if "id2label" in official:
        assert config.id2label == {0: "LABEL_0"}


def test_save_load_round_trip_keeps_every_key(tmp_path):
    config = NewConfig(
        vocab_size=1000,
        hidden_size=64,
        num_attention_heads=4,
        rope_theta=20000.0,
        rope_scaling={"type": "ntk", "factor": 4.0, "mixed_b": 0.5},
        layer_norm_type="rms_norm",
        layer_norm_eps=1e-6,
        pack_qkv=False,
        unpad_inputs=True,
        use_memory_efficient_attention=True,
        logn_attention_scale=True,
        logn_attention_clip1=True,
        classifier_dropout=0.2,
        type_vocab_size=2,
        id2label={0: "neg", 1: "neutral", 2: "pos"},
        architectures=["NewForSequenceClassification"],
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "new"
    assert saved["rope_scaling"] == {"type": "ntk", "factor": 4.0, "mixed_b": 0.5}
    assert "rope_parameters" not in saved
    loaded = NewConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.rope_scaling == config.rope_scaling
    assert loaded.id2label == {0: "neg", 1: "neutral", 2: "pos"}


@pytest.mark.parametrize("trained", [{}, {"original_max_position_embeddings": 512}])
def test_dynamic_ntk_rope_scaling(trained, tmp_path):
    """{"type": "dynamic", "factor", "original_max_position_embeddings" (default: max_position_embeddings)}: a
    valid config that saves and loads as it is."""
    scaling = {"type": "dynamic", "factor": 2} | trained
    config = NewConfig(max_position_embeddings=64, rope_scaling=scaling)
    assert RotaryEmbedding(config).dynamic == (2.0, trained.get("original_max_position_embeddings", 64))
    config.save_pretrained(tmp_path)
    assert NewConfig.from_pretrained(tmp_path).rope_scaling == scaling


def test_head_dim():
    assert NewConfig(hidden_size=64, num_attention_heads=4).head_dim == 16
