"""ModernBERT checkpoints on our engine (gte.convert.modernbert): the numbers of transformers' own ModernBert classes
(base model, sequence classifier with "cls" and "mean" pooling, masked LM, token classifier) on every CPU backend, padded and unpadded,
with sequences below and well above the local attention window; sentence-transformers' vectors; the Reranker;
write_back into their names; a clear refusal for what we cannot run exactly."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import transformers
from sentence_transformers import SentenceTransformer

import fixtures
import gte
from gte import NewForMaskedLM, NewForSequenceClassification, NewForTokenClassification, NewModel
from gte.convert import ConversionError
from gte.convert.modernbert import config_from_modernbert
from model_helpers import assert_writes_back_unchanged, collected_warnings, random_batch

ATOL = 1e-5
BACKENDS = gte.available_backends("cpu", torch.float32)
OURS = {
    "ModernBertModel": NewModel,
    "ModernBertForSequenceClassification": NewForSequenceClassification,
    "ModernBertForMaskedLM": NewForMaskedLM,
    "ModernBertForTokenClassification": NewForTokenClassification,
}
# The local layers see 4 positions each way: 1 and 4 tokens lie inside one window, 40 and 13 well past it.
LENGTHS = [9, 4, 40, 1, 13]
TEXTS = ["the quick brown fox jumps over the lazy dog", "paris", "", "deep neural network " * 30]
pytestmark = pytest.mark.filterwarnings("ignore::gte.embed.TruncationWarning")


@pytest.fixture(scope="module")
def modernbert(tmp_path_factory):
    """modernbert(architecture="ModernBertModel", **config) -> a tiny checkpoint saved by transformers' own class
    (fixtures.build_modernbert_model), built on first use."""
    built = {}

    def get(architecture: str = "ModernBertModel", **overrides):
        key = (architecture, json.dumps(overrides, sort_keys=True))
        if key not in built:
            built[key] = fixtures.build_modernbert_model(tmp_path_factory.mktemp(architecture), architecture, **overrides)
        return built[key]

    return get


def outputs(model, batch, **kwargs) -> torch.Tensor:
    """Sequence logits, or per-token logits / last_hidden_state on the valid tokens."""
    with torch.no_grad():
        out = model(**batch, **kwargs)
    values = out.logits if hasattr(out, "logits") else out.last_hidden_state
    return values if values.dim() == 2 else values[batch["attention_mask"].bool()]


def assert_same(ours, theirs, lengths=LENGTHS, **kwargs) -> None:
    batch = random_batch(ours.config, lengths)
    torch.testing.assert_close(outputs(ours, batch, **kwargs), outputs(theirs, batch), rtol=0, atol=ATOL)


CASES = {  # name: (architecture, config overrides)
    "base": ("ModernBertModel", {}),
    "classifier-cls": ("ModernBertForSequenceClassification", {}),
    "classifier-mean": ("ModernBertForSequenceClassification", {"classifier_pooling": "mean", "num_labels": 3}),
    "masked-lm": ("ModernBertForMaskedLM", {}),
    "token-classifier": ("ModernBertForTokenClassification", {"num_labels": 5}),
}


@pytest.mark.parametrize("unpad", [True, False], ids=["unpad", "padded"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_same_numbers_as_transformers(modernbert, case, backend, unpad):
    architecture, overrides = CASES[case]
    path = modernbert(architecture, **overrides)
    theirs = getattr(transformers, architecture).from_pretrained(path).eval()
    with collected_warnings() as found:
        ours = OURS[architecture].from_pretrained(path, attn_implementation=backend).eval()
    assert not found
    config = ours.config
    assert (config.norm_position, config.first_attn_norm, config.norm_bias) == ("pre", False, False)
    assert config.sliding_window == 4 and config.layer_window(0) is None and config.layer_window(1) == 4
    assert_same(ours, theirs, unpad_inputs=unpad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_sequences_in_many_window_blocks(modernbert, backend):
    """Sequences past the rotary table and far past the window (sdpa's CPU blocks of queries: several of them),
    runs of equal lengths among them."""
    path = modernbert()
    theirs = transformers.ModernBertModel.from_pretrained(path).eval()
    ours = NewModel.from_pretrained(path, attn_implementation=backend).eval()
    assert_same(ours, theirs, lengths=[150, 150, 70, 3], unpad_inputs=True)


def test_the_window_and_the_local_rope_base_matter(modernbert):
    """Without the window, or with the global RoPE base in the local layers, the numbers are not transformers'."""
    path = modernbert()
    theirs, converted = transformers.ModernBertModel.from_pretrained(path).eval(), NewModel.from_pretrained(path)
    batch = random_batch(converted.config, LENGTHS)
    for key, value in (("sliding_window", 1000), ("local_rope_theta", None)):
        config = copy.deepcopy(converted.config)
        setattr(config, key, value)
        ours = NewModel(config).eval()
        ours.load_state_dict(converted.state_dict())
        assert (outputs(ours, batch) - outputs(theirs, batch)).abs().max() > 1e-3, key


def test_legacy_config_keys_read_as_transformers_reads_them(modernbert):
    """The hub's config.json spelling (global_attn_every_n_layers, global_rope_theta, local_rope_theta)."""
    raw = {"model_type": "modernbert", "architectures": ["ModernBertModel"], "num_hidden_layers": 6,
           "global_attn_every_n_layers": 2, "global_rope_theta": 160000.0, "local_rope_theta": 10000.0,
           "local_attention": 128, "hidden_activation": "gelu", "classifier_pooling": "mean"}  # fmt: skip
    config = config_from_modernbert(raw)
    assert config.layer_types == ["full_attention", "sliding_attention"] * 3
    assert (config.rope_theta, config.local_rope_theta, config.sliding_window) == (160000.0, 10000.0, 64)
    assert config.classifier_pooling == "mean"


def test_transformers_keeps_its_own_modernbert_classes(modernbert):
    assert type(transformers.AutoModel.from_pretrained(modernbert())) is transformers.ModernBertModel


# ------------------------------------------------------------------------------ Embedder, Reranker
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_embedder_equals_sentence_transformers(modernbert, tmp_path, pooling):
    path = fixtures.build_sentence_transformer(tmp_path, modernbert(), pooling=pooling, normalize=True)
    reference = SentenceTransformer(str(path), device="cpu")
    assert type(reference[0].auto_model) is transformers.ModernBertModel  # their class, not ours
    embedder = gte.Embedder(path)
    assert embedder.pooling == pooling
    np.testing.assert_allclose(embedder.encode(TEXTS), reference.encode(TEXTS), atol=ATOL)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_reranker_scores_are_the_classifiers_logits(modernbert, pooling):
    path = modernbert("ModernBertForSequenceClassification", classifier_pooling=pooling)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    theirs = transformers.ModernBertForSequenceClassification.from_pretrained(path).eval()
    query, documents = "where is paris", ["paris is a city on a river", "deep neural network " * 8, "the lazy dog"]
    batch = tokenizer([query] * len(documents), documents, padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        expected = theirs(**batch).logits.squeeze(-1).tolist()
    np.testing.assert_allclose(gte.Reranker(path).score(query, documents), expected, atol=ATOL)


# ------------------------------------------------------------------------------ write_back
@pytest.mark.parametrize("case", CASES)
def test_write_back_of_an_unchanged_model_gives_the_stored_tensors(modernbert, case):
    """Our parameters written back into their names (Wi's halves swapped back) are the stored tensors, exactly."""
    architecture, overrides = CASES[case]
    path = modernbert(architecture, **overrides)
    assert_writes_back_unchanged(path, OURS[architecture].from_pretrained(path))


# ------------------------------------------------------------------------------ what we refuse
REFUSED = {  # name: (overrides of config.json, what the error names)
    "rope scaling": ({"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
                                          "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}},
                     "rotary scaling"),
    "mlp bias": ({"mlp_bias": True}, "mlp_bias=True"),
    "activation": ({"hidden_activation": "swiglu"}, "hidden_activation='swiglu'"),
    "architecture": ({"architectures": ["ModernBertForQuestionAnswering"]}, "ModernBertForQuestionAnswering"),
}  # fmt: skip


@pytest.mark.parametrize("name", REFUSED)
def test_variants_we_cannot_run_are_refused_by_name(modernbert, name, tmp_path):
    overrides, needle = REFUSED[name]
    config = json.loads((modernbert() / "config.json").read_text()) | overrides
    with pytest.raises(ConversionError, match=needle) as error:
        config_from_modernbert(config)
    assert "transformers" in str(error.value)  # says what to use instead
    for file in modernbert().iterdir():  # the checkpoint with this config.json: refused as it loads
        (tmp_path / file.name).write_bytes(file.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=needle):
        NewModel.from_pretrained(tmp_path)
