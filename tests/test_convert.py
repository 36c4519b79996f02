"""gte.convert: golden cases converted to transformers' native `gte` layout load both in transformers' own
Gte classes and in ours, and still match the golden outputs; what the native layout cannot express is refused."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

import gte
from gte import NewConfig, NewForMaskedLM, NewForSequenceClassification, NewModel
from gte.convert import ConversionError, config_from_native, native_config, native_state_dict, state_dict_from_native
from model_helpers import (
    collected_warnings, convert_case, golden_case, golden_diffs, golden_manifest, random_batch, run_golden, save_native,
    small_config,
)  # fmt: skip

ATOL = golden_manifest()["tolerance"]["atol"]
CONVERTIBLE = ["p01", "p07"]  # plain RoPE / NTK factor 2 with split q/k/v and token types, LayerNorm


def assert_golden(model: torch.nn.Module, case: dict, **call_kwargs) -> None:
    """The model (ours or transformers' Gte) gives the case's golden outputs; no keywords: its own forward's."""
    diffs = golden_diffs(case, run_golden(model.eval(), case, **call_kwargs))
    assert max(diffs.values()) <= ATOL, diffs


@pytest.mark.parametrize("name", CONVERTIBLE)
def test_converted_golden_case_loads_in_transformers_native_gte(name, tmp_path):
    case = golden_case(name)
    native_dir = convert_case(case, tmp_path)
    config = json.loads((native_dir / "config.json").read_text())
    assert config["model_type"] == "gte"
    native_cls = getattr(transformers, config["architectures"][0])
    with collected_warnings() as found:
        model = native_cls.from_pretrained(native_dir)
        auto = transformers.AutoConfig.from_pretrained(native_dir)
    assert not found
    assert type(model).__module__.startswith("transformers.models.gte")
    assert type(auto) is transformers.GteConfig
    assert_golden(model, case)


@pytest.mark.parametrize("unpad", [True, False], ids=["unpad", "padded"])
@pytest.mark.parametrize("name", CONVERTIBLE)
def test_converted_golden_case_loads_in_our_classes(name, unpad, tmp_path):
    case = golden_case(name)
    native_dir = convert_case(case, tmp_path)
    with collected_warnings() as found:
        model = getattr(gte, case["class"]).from_pretrained(native_dir)
    assert not found
    assert type(model) is getattr(gte, case["class"])
    assert_golden(model, case, unpad_inputs=unpad)


def test_native_ntk_rope_parameters():
    """Fixed NTK factor f -> linear factor f ** (2 / head_dim) on rope_theta * f, and back."""
    config = NewConfig.from_pretrained(golden_case("p07")["dir"])
    native = native_config(config)
    factor = config.rope_scaling["factor"]
    assert native["rope_parameters"] == {"rope_type": "linear", "factor": factor ** (2 / config.head_dim), "rope_theta": config.rope_theta * factor}
    back = config_from_native(json.loads(json.dumps(native)))
    assert back.rope_scaling == {"type": "ntk", "factor": factor}
    assert back.rope_theta == pytest.approx(config.rope_theta)


def test_native_loading_keeps_from_pretrained_options(tmp_path, backends_used):
    """Loading info, dtype, attn_implementation, add_pooling_layer and the model's name all pass through."""
    native_dir = convert_case(golden_case("p01"), tmp_path)
    model, info = NewModel.from_pretrained(
        native_dir, output_loading_info=True, dtype=torch.float64, attn_implementation="eager"
    )
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert model(**random_batch(model.config, [5, 2])).last_hidden_state.dtype == torch.float64
    assert set(backends_used) == {"eager"}  # not sdpa, the CPU's default
    assert model.name_or_path == model.config.name_or_path == str(native_dir)
    _, info = NewModel.from_pretrained(native_dir, output_loading_info=True, add_pooling_layer=True)
    assert set(info["missing_keys"]) == {"pooler.dense.weight", "pooler.dense.bias"}


def test_native_base_model_loads_from_a_head_checkpoint(tmp_path):
    native_dir = convert_case(golden_case("p07"), tmp_path)
    model = NewModel.from_pretrained(native_dir)
    reference = gte.NewForTokenClassification.from_pretrained(native_dir).new
    batch = random_batch(model.config, [6, 3])
    torch.testing.assert_close(model(**batch).last_hidden_state, reference(**batch).last_hidden_state, rtol=0, atol=0)


@pytest.mark.parametrize("cls", [NewForMaskedLM, NewForSequenceClassification])
def test_heads_round_trip_through_the_native_layout(cls, tmp_path):
    """Random gelu / LayerNorm / NTK models: ours, transformers' Gte* and ours-from-native agree."""
    torch.manual_seed(0)
    config = small_config(rope_scaling={"type": "ntk", "factor": 2.0}, num_labels=3, architectures=[cls.__name__])
    model = cls(config).eval()
    native_dir = save_native(config, model.state_dict(), tmp_path)
    native = getattr(transformers, native_config(config)["architectures"][0]).from_pretrained(native_dir).eval()
    with collected_warnings() as found:
        ours = cls.from_pretrained(native_dir).eval()
    assert not found
    batch = random_batch(config, [8, 8])  # full rows: native positions ignore the mask
    with torch.no_grad():
        expected = model(**batch).logits
        torch.testing.assert_close(native(**batch).logits, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours(**batch).logits, expected, rtol=0, atol=1e-5)
    if cls is NewForMaskedLM:
        assert ours.lm_head.decoder.weight is ours.new.embeddings.word_embeddings.weight


def test_state_dict_round_trip_is_exact():
    case_dir = golden_case("p01")["dir"]
    config = NewConfig.from_pretrained(case_dir)
    official = load_file(case_dir / "model.safetensors")
    back = state_dict_from_native(native_state_dict(official, config))
    assert back.keys() == official.keys()
    assert all(torch.equal(back[k], official[k]) for k in official)


def test_native_config_defaults_fill_missing_keys():
    """transformers' GteConfig defaults apply where a native config.json leaves keys out."""
    config = config_from_native({"model_type": "gte", "hidden_size": 64, "num_attention_heads": 4})
    assert (config.vocab_size, config.max_position_embeddings, config.pad_token_id, config.rope_theta) == (250048, 8192, 1, 160000.0)
    assert config.rope_scaling is None


UNSUPPORTED = {
    "logn": ({"logn_attention_scale": True}, "logn_attention_scale"),
    "mixed_b": ({"rope_scaling": {"type": "ntk", "factor": 4.0, "mixed_b": 0.5}}, "mixed_b"),
    "dynamic ntk": ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling of type 'dynamic'"),
    "rms_norm": ({"layer_norm_type": "rms_norm"}, "rms_norm"),
    "absolute": ({"position_embedding_type": "absolute"}, "absolute"),
    "qa": ({"architectures": ["NewForQuestionAnswering"]}, "NewForQuestionAnswering"),
    "mc": ({"architectures": ["NewForMultipleChoice"]}, "NewForMultipleChoice"),
    "mlm_silu": ({"architectures": ["NewForMaskedLM"], "hidden_act": "silu"}, "hidden_act='silu'"),
    "no attention bias": ({"attention_bias": False}, "attention_bias=False"),
    "no mlp bias": ({"mlp_bias": False}, "mlp_bias=False"),
    "pre-norm": ({"norm_position": "pre"}, "norm_position='pre'"),
    "local attention": ({"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 4}, "layer_types="),
    "mean pooling": ({"classifier_pooling": "mean"}, "classifier_pooling='mean'"),
}


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_features_refuse_to_convert(name):
    overrides, message = UNSUPPORTED[name]
    with pytest.raises(ConversionError, match=message) as error:
        native_config(small_config(**overrides))
    assert "native `gte`" in str(error.value)


@pytest.mark.parametrize("name", [c["name"][:3] for c in golden_manifest()["cases"] if c["name"][:3] not in CONVERTIBLE])
def test_other_golden_cases_refuse_to_convert(name):
    with pytest.raises(ConversionError):
        native_config(NewConfig.from_pretrained(golden_case(name)["dir"]))


def test_native_masked_lm_with_another_activation_is_refused():
    with pytest.raises(ConversionError, match="gelu"):
        config_from_native({"model_type": "gte", "architectures": ["GteForMaskedLM"], "hidden_act": "silu"})
