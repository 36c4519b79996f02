"""Packed projections (oneDNN, float32 and bfloat16 CPU): the numbers of nn.Linear, nothing lost on save, and
only models gte loads itself are packed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import gte
from gte.prepack import PackedLinear, prepack, supported
from model_helpers import golden_diffs, golden_manifest, load_golden_model, run_golden, random_batch, small_config

pytestmark = pytest.mark.skipif(not supported(torch.float32), reason="no packed oneDNN kernel on this machine / torch build")

TEXTS = ["what is the capital of China?", "how to implement quick sort in python? " * 20, "panda"]


def packed_modules(model: torch.nn.Module) -> list[PackedLinear]:
    return [module for module in model.modules() if isinstance(module, PackedLinear)]


@pytest.mark.parametrize("config", [{}, {"pack_qkv": False}, {"gated_mlp": False}, {"attention_bias": False, "mlp_bias": False}],
                         ids=["packed-qkv", "split-qkv", "plain-mlp", "no-bias"])
def test_packed_layers_give_the_linear_numbers(config):
    torch.manual_seed(0)
    model = gte.NewModel(small_config(**config)).eval()
    batch = random_batch(model.config, [9, 3, 17])
    projections = 6 if "pack_qkv" in config else 4  # q, k, v (or qkv), o, and the MLP's two
    with torch.inference_mode():
        expected = model(**batch).last_hidden_state
        assert prepack(model) == projections * model.config.num_hidden_layers
        got = model(**batch).last_hidden_state
    assert not any(type(m) is torch.nn.Linear for m in model.encoder.modules())
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)


@pytest.mark.skipif(not supported(torch.bfloat16), reason="no bfloat16 oneDNN kernel for this CPU / torch build")
def test_bfloat16_projections_are_packed_and_give_the_linear_numbers(tiny_model_dir):
    torch.manual_seed(0)
    model = gte.NewModel(small_config()).eval().to(torch.bfloat16)
    batch = random_batch(model.config, [9, 3, 17])
    with torch.inference_mode():
        expected = model(**batch).last_hidden_state
        assert prepack(model) == 4 * model.config.num_hidden_layers
        got = model(**batch).last_hidden_state
    assert {module.packed.dtype for module in packed_modules(model)} == {torch.bfloat16}
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)
    embedder = gte.Embedder(tiny_model_dir, dtype="bfloat16")
    assert len(packed_modules(embedder.model)) == 4 * embedder.model.config.num_hidden_layers
    original = load_file(str(tiny_model_dir / "model.safetensors"))
    for name, tensor in embedder.model.state_dict().items():
        torch.testing.assert_close(tensor, original[name].to(torch.bfloat16), atol=0, rtol=0)


def test_embedder_packs_the_model_it_loads_but_not_one_passed_in(tiny_model_dir):
    own = gte.Embedder(tiny_model_dir)
    assert len(packed_modules(own.model)) == 4 * own.model.config.num_hidden_layers
    theirs = gte.NewModel.from_pretrained(str(tiny_model_dir))
    borrowed = gte.Embedder(theirs, tokenizer=own.tokenizer, max_length=own.max_length, pooling=own.pooling)
    assert packed_modules(theirs) == []
    np.testing.assert_allclose(own.encode(TEXTS), borrowed.encode(TEXTS), atol=1e-6)


def test_nothing_is_lost_on_save(tiny_model_dir, tmp_path):
    original = load_file(str(tiny_model_dir / "model.safetensors"))
    embedder = gte.Embedder(tiny_model_dir)
    state = embedder.model.state_dict()
    assert list(state) == list(gte.NewModel.from_pretrained(str(tiny_model_dir)).state_dict())
    for name, tensor in original.items():
        torch.testing.assert_close(state[name], tensor, atol=0, rtol=0)
    model = gte.NewModel(embedder.model.config)
    model.load_state_dict(state)  # strict: transformers' class takes the engine's weights as they are
    model.save_pretrained(tmp_path)
    assert set(load_file(str(tmp_path / "model.safetensors"))) == set(original)


def test_reranker_packs_and_scores_as_before(reranker_model_dir):
    reranker = gte.Reranker(reranker_model_dir)
    assert packed_modules(reranker.model)
    plain = gte.Reranker(gte.NewForSequenceClassification.from_pretrained(str(reranker_model_dir)), tokenizer=reranker.tokenizer)
    docs = ["a panda is a bear", "the capital of China is Beijing"]
    np.testing.assert_allclose(reranker.score("panda", docs), plain.score("panda", docs), atol=1e-5)


@pytest.mark.parametrize("unpad", [True, False], ids=["unpad", "padded"])
def test_golden_cases_pass_packed(unpad):
    for case in golden_manifest()["cases"]:
        model = load_golden_model(case)
        assert prepack(model) > 0
        diffs = golden_diffs(case, run_golden(model, case, unpad_inputs=unpad))
        assert max(diffs.values()) <= golden_manifest()["tolerance"]["atol"], (case["name"], diffs)


def test_the_probe_leaves_the_random_state_alone():
    supported.cache_clear()
    state = torch.random.get_rng_state()
    assert supported(torch.float32)
    assert torch.equal(torch.random.get_rng_state(), state)
