"""NewModel and its heads: official parameter names, loading, bad input, equivalent input paths, long
sequences, padding sides, attention probabilities, backend names, subset_indices, head shapes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers
from safetensors import safe_open
from transformers import AutoConfig, AutoModel

import gte
import gte.attention
from gte import (
    NewConfig,
    NewForMaskedLM,
    NewForMultipleChoice,
    NewForQuestionAnswering,
    NewForSequenceClassification,
    NewForTokenClassification,
    NewModel,
)
from model_helpers import AUTO_CLASSES, collected_warnings, golden_case, golden_manifest, random_batch, small_config

CASES = golden_manifest()["cases"]
NEW_IMPL = "Alibaba-NLP/new-impl"
AUTO_MAP = {"AutoConfig": f"{NEW_IMPL}--configuration.NewConfig"} | {
    auto: f"{NEW_IMPL}--modeling.{cls}" for cls, auto in AUTO_CLASSES.items()
}


def tiny_model(cls=NewModel, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return cls(small_config(**overrides)).eval()


def valid_rows(hidden: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """[B, L, ...] -> each row's valid positions."""
    return [h[m.bool()] for h, m in zip(hidden, mask)]


def left_pad(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Move each right-padded row's tokens to the end of the row."""
    shifts = (batch["attention_mask"] == 0).sum(1).tolist()
    return {k: torch.stack([row.roll(s) for row, s in zip(v, shifts)]) for k, v in batch.items()}


# ------------------------------------------------------------------------------------ names and loading
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_official_state_dict_loads_and_saves_with_the_same_names(case, tmp_path):
    case_dir = case["dir"]
    cls = getattr(gte, case["class"])
    with collected_warnings() as found:
        model, info = cls.from_pretrained(case_dir, output_loading_info=True, **case["init_kwargs"])
    assert not found  # no load report, no deprecation noise
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    model.save_pretrained(tmp_path)
    with safe_open(case_dir / "model.safetensors", "pt") as official, safe_open(tmp_path / "model.safetensors", "pt") as ours:
        assert set(ours.keys()) == set(official.keys())
        for key in official.keys():
            assert torch.equal(ours.get_tensor(key), official.get_tensor(key)), key


def test_masked_lm_decoder_is_tied_and_not_saved(tmp_path):
    model = NewForMaskedLM.from_pretrained(golden_case("p04")["dir"])
    assert model.lm_head.decoder.weight is model.new.embeddings.word_embeddings.weight
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as saved:
        assert "lm_head.decoder.weight" not in saved.keys()
        assert "lm_head.decoder.bias" in saved.keys()
    with collected_warnings() as found:
        reloaded = NewForMaskedLM.from_pretrained(tmp_path)
    assert not found
    assert reloaded.lm_head.decoder.weight is reloaded.new.embeddings.word_embeddings.weight


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_auto_classes_load_official_dirs_with_remote_code_auto_map_offline(case, tmp_path, monkeypatch):
    """config.json carries the official `auto_map`; importing gte makes the Auto classes use our code, no prompt."""

    def no_remote_code(*args, **kwargs):
        raise AssertionError("remote code must not be fetched")

    monkeypatch.setattr(transformers.dynamic_module_utils, "get_class_from_dynamic_module", no_remote_code)
    model_dir = shutil.copytree(case["dir"], tmp_path / "official")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps(config | {"auto_map": AUTO_MAP}))

    assert type(AutoConfig.from_pretrained(model_dir)) is NewConfig
    with collected_warnings() as found:
        model = getattr(transformers, AUTO_CLASSES[case["class"]]).from_pretrained(model_dir, **case["init_kwargs"])
    assert not found
    assert type(model) is getattr(gte, case["class"])


def test_automodel_on_a_head_checkpoint_gives_the_base_model():
    model = AutoModel.from_pretrained(golden_case("p07")["dir"])
    assert type(model) is NewModel


# ------------------------------------------------------------------------------------ bad input
BAD_INPUTS = {
    "both ids and embeds": (lambda b: dict(input_ids=b["input_ids"], inputs_embeds=torch.zeros(*b["input_ids"].shape, 32)), "exactly one of input_ids and inputs_embeds"),
    "neither ids nor embeds": (lambda b: dict(attention_mask=b["attention_mask"]), "exactly one of input_ids and inputs_embeds"),
    "mask shape": (lambda b: dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"][:, :-1]), "attention_mask has shape"),
    "id too large": (lambda b: dict(input_ids=b["input_ids"] + 97, attention_mask=b["attention_mask"]), r"input_ids must lie in \[0, 97\)"),
    "negative id": (lambda b: dict(input_ids=b["input_ids"] - 98, attention_mask=b["attention_mask"]), r"input_ids must lie in \[0, 97\)"),
    "token type too large": (lambda b: dict(b, token_type_ids=torch.full_like(b["input_ids"], 2)), r"token_type_ids must lie in \[0, 2\).*type_vocab_size"),
    "token type shape": (lambda b: dict(b, token_type_ids=b["token_type_ids"][:, :3]), "token_type_ids has shape"),
    "empty batch": (lambda b: dict(input_ids=b["input_ids"][:0], attention_mask=b["attention_mask"][:0]), "empty batch"),
    "empty sequences": (lambda b: dict(input_ids=b["input_ids"][:, :0]), "empty batch"),
    "row without tokens": (lambda b: dict(b, attention_mask=b["attention_mask"] * torch.tensor([[1], [0], [1]])), r"rows \[1\] of attention_mask have no valid token"),
    "ids with 3 dims": (lambda b: dict(input_ids=b["input_ids"][None]), "must have 2 dimensions"),
}  # fmt: skip


@pytest.mark.parametrize("unpad", [True, False], ids=["unpad", "padded"])
@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_raises_value_error(name, unpad):
    model = tiny_model()
    make, message = BAD_INPUTS[name]
    with pytest.raises(ValueError, match=message):
        model(**make(random_batch(model.config, [5, 3, 2])), unpad_inputs=unpad)


def test_bad_input_through_a_head():
    model = tiny_model(NewForSequenceClassification)
    batch = random_batch(model.config, [4, 2])
    with pytest.raises(ValueError, match="input_ids must lie in"):
        model(input_ids=batch["input_ids"] + 200, attention_mask=batch["attention_mask"])


def test_multiple_choice_wants_three_dimensions():
    model = tiny_model(NewForMultipleChoice)
    with pytest.raises(ValueError, match=r"\(batch, num_choices, seq\)"):
        model(**random_batch(model.config, [4, 2]))


def test_absolute_positions_beyond_the_table_are_refused():
    model = tiny_model(position_embedding_type="absolute")
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(**random_batch(model.config, [17, 3]))


# ------------------------------------------------------------------------------------ equivalent paths
@pytest.mark.parametrize("unpad", [True, False], ids=["unpad", "padded"])
def test_inputs_embeds_equals_input_ids(unpad):
    model = tiny_model()
    batch = random_batch(model.config, [9, 4, 1])
    from_ids = model(**batch, unpad_inputs=unpad)
    embeds = model.get_input_embeddings()(batch.pop("input_ids"))
    from_embeds = model(inputs_embeds=embeds, **batch, unpad_inputs=unpad)
    torch.testing.assert_close(from_embeds.last_hidden_state, from_ids.last_hidden_state, rtol=0, atol=0)


def test_length_equals_attention_mask():
    model = tiny_model()
    batch = random_batch(model.config, [7, 3])
    by_mask = model(batch["input_ids"], batch["attention_mask"], unpad_inputs=True).last_hidden_state
    by_length = model(batch["input_ids"], length=[7, 3], unpad_inputs=True).last_hidden_state
    torch.testing.assert_close(by_length, by_mask, rtol=0, atol=0)


LONG_CONFIGS = {
    "plain": {},
    "ntk2": {"rope_scaling": {"type": "ntk", "factor": 2.0}},
    "ntk4_mixed": {"rope_scaling": {"type": "ntk", "factor": 4.0, "mixed_b": 0.5}},
    "logn": {"logn_attention_scale": True},
}


@pytest.mark.parametrize("overrides", LONG_CONFIGS.values(), ids=LONG_CONFIGS)
def test_longer_than_max_position_embeddings(overrides):
    """RoPE table grows past max_position_embeddings (x factor); unpadded, padded and one-by-one agree."""
    model = tiny_model(**overrides)
    rope = model.embeddings.rotary_emb
    short = rope.table(1, torch.device("cpu")).clone()
    factor = (overrides.get("rope_scaling") or {}).get("factor", 1)
    assert short.shape[0] == 16 * factor
    lengths = [80, 41, 17, 3]
    batch = random_batch(model.config, lengths)
    with torch.no_grad():
        unpadded = model(**batch, unpad_inputs=True).last_hidden_state
        padded = model(**batch, unpad_inputs=False).last_hidden_state
        alone = [model(**{k: v[i : i + 1, :n] for k, v in batch.items()}).last_hidden_state[0] for i, n in enumerate(lengths)]
    assert rope.cached_length >= 80
    torch.testing.assert_close(rope.table(1, torch.device("cpu"))[: short.shape[0]], short, rtol=0, atol=0)
    mask = batch["attention_mask"]
    for u, p, a in zip(valid_rows(unpadded, mask), valid_rows(padded, mask), alone):
        torch.testing.assert_close(u, p, rtol=0, atol=1e-5)
        torch.testing.assert_close(u, a, rtol=0, atol=1e-5)


@pytest.mark.parametrize("unpad", [True, False], ids=["unpad", "padded"])
@pytest.mark.parametrize("cls", [NewForSequenceClassification, NewForTokenClassification])
def test_left_padding_equals_right_padding(cls, unpad):
    model = tiny_model(cls, num_labels=3, logn_attention_scale=True)
    right = random_batch(model.config, [9, 5, 2])
    left = left_pad(right)
    with torch.no_grad():
        out_right = model(**right, output_hidden_states=True, unpad_inputs=unpad)
        out_left = model(**left, output_hidden_states=True, unpad_inputs=unpad)
    for r, l in zip(valid_rows(out_right.hidden_states[-1], right["attention_mask"]), valid_rows(out_left.hidden_states[-1], left["attention_mask"])):
        torch.testing.assert_close(l, r, rtol=0, atol=1e-5)
    if cls is NewForSequenceClassification:  # pools each row's first valid token
        torch.testing.assert_close(out_left.logits, out_right.logits, rtol=0, atol=1e-5)
    else:
        for r, l in zip(valid_rows(out_right.logits, right["attention_mask"]), valid_rows(out_left.logits, left["attention_mask"])):
            torch.testing.assert_close(l, r, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------ attention
@pytest.mark.parametrize("unpad", [True, False], ids=["unpad", "padded"])
def test_output_attentions_returns_probabilities(unpad):
    model = tiny_model(attn_implementation="sdpa")
    batch = random_batch(model.config, [9, 5, 2])
    with torch.no_grad():
        out = model(**batch, output_attentions=True, unpad_inputs=unpad)
        plain = model(**batch, unpad_inputs=unpad)
    assert len(out.attentions) == model.config.num_hidden_layers
    mask = batch["attention_mask"].bool()
    for probs in out.attentions:
        assert probs.shape == (3, 4, 9, 9)
        assert (probs >= 0).all()
        valid_queries = probs.permute(0, 2, 1, 3)[mask]  # [T, heads, keys]
        torch.testing.assert_close(valid_queries.sum(-1), torch.ones(valid_queries.shape[:2]))
        assert (probs.masked_select(~mask[:, None, None, :]) == 0).all()  # padded keys get nothing
    # the outputs were computed from these probabilities (eager) and agree with the plain (sdpa) run
    torch.testing.assert_close(out.last_hidden_state, plain.last_hidden_state, rtol=0, atol=1e-5)


def test_attentions_are_none_unless_asked():
    model = tiny_model()
    assert model(**random_batch(model.config, [3])).attentions is None


@pytest.mark.parametrize(("name", "runs"), [("eager", "eager"), ("sdpa", "sdpa"), ("auto", "sdpa")])
def test_attn_implementation_names(name, runs, backends_used):
    """The backend named is the one that runs (auto: the best the CPU has), with eager's numbers."""
    case_dir = golden_case("p01")["dir"]
    model = AutoModel.from_pretrained(case_dir, attn_implementation=name)
    reference = AutoModel.from_pretrained(case_dir, attn_implementation="eager")
    batch = random_batch(model.config, [6, 2])
    with torch.no_grad():
        expected = reference(**batch).last_hidden_state
        backends_used.clear()
        got = model(**batch).last_hidden_state
    assert set(backends_used) == {runs}
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_attn_implementation_can_be_changed_after_loading(backends_used):
    model = tiny_model()  # auto: sdpa on the CPU
    batch = random_batch(model.config, [5, 3])
    outputs = {}
    for name in ("eager", "sdpa"):
        model.set_attn_implementation(name)
        backends_used.clear()
        with torch.no_grad():
            outputs[name] = model(**batch).last_hidden_state
        assert set(backends_used) == {name}
    torch.testing.assert_close(outputs["eager"], outputs["sdpa"], rtol=0, atol=1e-5)


def test_invalid_attn_implementation_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown attn_implementation 'bogus'.*eager"):
        AutoModel.from_pretrained(golden_case("p01")["dir"], attn_implementation="bogus")
    with pytest.raises(ValueError, match="unknown attn_implementation"):
        NewModel(small_config(attn_implementation="bogus"))


def test_unavailable_backend_falls_back_with_a_warning(caplog, backends_used):
    """transformers' name flash_attention_2 is our flash_attn, which the CPU cannot run (installed or not): sdpa runs."""
    model = AutoModel.from_pretrained(golden_case("p01")["dir"], attn_implementation="flash_attention_2")
    gte.attention._warned.clear()
    with caplog.at_level("WARNING", logger="gte"):
        model(**random_batch(model.config, [4]))
    assert "attention backend 'flash_attn' is not available" in caplog.text
    assert set(backends_used) == {"sdpa"}


@pytest.mark.parametrize("head_dim", [8, 12, 20])
def test_varlen_pads_head_sizes_its_kernel_cannot_take(monkeypatch, head_dim):
    """torch's varlen kernel takes head sizes in multiples of 8 only (a CUDA kernel: a stand-in with the
    same contract runs here); other sizes are zero-padded and give eager's numbers."""
    from gte.attention import eager, varlen
    from gte.padding import Packing

    def kernel_contract(q, k, v, cu_q, cu_k, max_q, max_k, *, scale):
        assert q.shape[-1] % 8 == 0, "head_size must be a multiple of 8"
        grid = Packing.from_seqlens(torch.diff(cu_q).long())
        return eager.attend(q * (scale * q.shape[-1] ** 0.5), k, v, grid)  # eager scales by the padded size

    monkeypatch.setattr(varlen, "kernel", lambda: kernel_contract)
    torch.manual_seed(0)
    packing = Packing.from_seqlens(torch.tensor([5, 1, 3]))
    q, k, v = (torch.randn(9, 2, head_dim) for _ in range(3))
    torch.testing.assert_close(varlen.attend(q, k, v, packing), eager.attend(q, k, v, packing), rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", ["varlen", "flash"])
@pytest.mark.parametrize("window", [0, 2, 50])
def test_gpu_kernels_get_local_attention_as_their_window_size(monkeypatch, backend, window):
    """The GPU kernels (CUDA only: stand-ins with their documented contract run here) take local attention as
    window_size=(left, right), a query at i seeing keys i - left .. i + right of its sequence; given gte's window,
    they give eager's numbers."""
    from gte.attention import eager, flash, varlen
    from gte.padding import Packing

    def kernel_contract(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
        left, right = window_size
        out = torch.empty_like(v)
        for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
            i = torch.arange(end - start)[:, None]
            j = torch.arange(end - start)[None, :]
            seen = ((j >= i - left) | (left < 0)) & ((j <= i + right) | (right < 0))
            scores = torch.einsum("qhd,khd->hqk", q[start:end], k[start:end]) * (scale or q.shape[-1] ** -0.5)
            probs = scores.masked_fill(~seen, float("-inf")).softmax(-1)
            out[start:end] = torch.einsum("hqk,khd->qhd", probs, v[start:end])
        return out

    module = {"varlen": varlen, "flash": flash}[backend]
    monkeypatch.setattr(module, "kernel", lambda: kernel_contract)
    torch.manual_seed(0)
    packing = Packing.from_seqlens(torch.tensor([7, 1, 12]))
    q, k, v = (torch.randn(20, 2, 8) for _ in range(3))
    expected = eager.attend(q, k, v, packing, window)
    torch.testing.assert_close(module.attend(q, k, v, packing, window), expected, rtol=0, atol=1e-5)


@pytest.mark.skipif(gte.attention.xformers.kernel() is not None, reason="xformers is installed")
def test_memory_efficient_attention_without_xformers_warns_once_and_runs(caplog, backends_used):
    case_dir = golden_case("p01")["dir"]
    gte.attention._no_xformers.cache_clear()
    with caplog.at_level("WARNING", logger="gte"):
        models = [AutoModel.from_pretrained(case_dir, use_memory_efficient_attention=True) for _ in range(2)]
        batch = random_batch(models[0].config, [6, 2])
        outputs = [m(**batch, unpad_inputs=True).last_hidden_state for m in models]
    assert caplog.text.count("use_memory_efficient_attention=True but xformers is not installed") == 1
    assert set(backends_used) == {"sdpa"}  # the best memory-efficient attention the CPU has
    reference = AutoModel.from_pretrained(case_dir)(**batch, unpad_inputs=True).last_hidden_state
    torch.testing.assert_close(outputs[0], reference, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ subset_indices
@pytest.mark.parametrize("unpad", [True, False], ids=["unpad", "padded"])
def test_subset_indices(unpad):
    model = tiny_model()
    batch = random_batch(model.config, [7, 4, 2])
    selection = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
    selection[0, [0, 3, 6]] = selection[1, 2] = selection[2, 1] = True
    with torch.no_grad():
        full = model(**batch, unpad_inputs=unpad).last_hidden_state
        by_mask = model(**batch, subset_indices=selection, unpad_inputs=unpad)
        by_index = model(**batch, subset_indices=selection.flatten().nonzero().squeeze(1), unpad_inputs=unpad)
    assert by_mask.last_hidden_state.shape == (5, 32)
    assert by_mask.pooler_output is None
    torch.testing.assert_close(by_mask.last_hidden_state, full[selection], rtol=0, atol=1e-6)
    torch.testing.assert_close(by_index.last_hidden_state, by_mask.last_hidden_state, rtol=0, atol=0)


def test_subset_indices_on_padding_is_refused():
    model = tiny_model()
    batch = random_batch(model.config, [7, 2])
    with pytest.raises(ValueError, match="subset_indices selects padding"):
        model(**batch, subset_indices=torch.tensor([1, 12]), unpad_inputs=True)


# ------------------------------------------------------------------------------------ heads
@pytest.mark.parametrize("unpad", [True, False], ids=["unpad", "padded"])
def test_head_output_shapes(unpad):
    batch = random_batch(small_config(), [7, 5, 2])
    B, L = batch["input_ids"].shape
    with torch.no_grad():
        base = tiny_model(NewModel)(**batch, unpad_inputs=unpad)
        pooled = NewModel(small_config(), add_pooling_layer=True)(**batch, unpad_inputs=unpad)
        mlm = tiny_model(NewForMaskedLM)(**batch, unpad_inputs=unpad)
        seq = tiny_model(NewForSequenceClassification, num_labels=3)(**batch, unpad_inputs=unpad)
        tok = tiny_model(NewForTokenClassification, num_labels=5)(**batch, unpad_inputs=unpad)
        qa = tiny_model(NewForQuestionAnswering)(**batch, unpad_inputs=unpad)
        choices = {k: v.view(1, 3, L) for k, v in batch.items()}
        mc = tiny_model(NewForMultipleChoice)(**choices, output_hidden_states=True, unpad_inputs=unpad)
    assert base.last_hidden_state.shape == (B, L, 32) and base.pooler_output is None
    assert pooled.pooler_output.shape == (B, 32)
    assert mlm.logits.shape == (B, L, 97)
    assert seq.logits.shape == (B, 3)
    assert tok.logits.shape == (B, L, 5)
    assert qa.start_logits.shape == qa.end_logits.shape == (B, L)
    assert mc.logits.shape == (1, 3)
    assert mc.hidden_states[-1].shape == (3, L, 32)


def test_multiple_choice_scores_each_choice_alone():
    model = tiny_model(NewForMultipleChoice)
    batch = random_batch(model.config, [7, 5, 2, 6])
    with torch.no_grad():
        together = model(**{k: v.view(2, 2, -1) for k, v in batch.items()}).logits
        alone = [model(**{k: v[i : i + 1, None] for k, v in batch.items()}).logits for i in range(4)]
    torch.testing.assert_close(together.flatten(), torch.cat(alone).flatten(), rtol=0, atol=1e-5)


def test_return_dict_false_gives_tuples():
    model = tiny_model(NewForSequenceClassification, num_labels=2)
    out = model(**random_batch(model.config, [4, 2]), return_dict=False)
    assert isinstance(out, tuple) and out[0].shape == (2, 2)
