"""BERT and XLM-RoBERTa checkpoints on our engine (gte.convert.bert): the numbers of transformers' own
classes on every backend, padded and unpadded, with token types and XLM-R's position offset; the
sentence-transformers directories, the Reranker and the CLI on them; and a clear refusal for every
variant we cannot run exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import save_file
from sentence_transformers import SentenceTransformer

import gte
from gte import NewForSequenceClassification, NewModel
from gte.convert import ConversionError
from gte.convert.bert import ARCHITECTURES, config_from_bert
from model_helpers import collected_warnings

ATOL = 1e-5
BACKENDS = gte.available_backends("cpu", torch.float32)
OURS = {"BertModel": NewModel, "XLMRobertaModel": NewModel,
        "BertForSequenceClassification": NewForSequenceClassification,
        "XLMRobertaForSequenceClassification": NewForSequenceClassification}  # fmt: skip
TEXTS = ["the quick brown fox jumps over the lazy dog", "paris", "", "北京 der hund le chat", "search " * 60]
pytestmark = pytest.mark.filterwarnings("ignore::gte.embed.TruncationWarning")


def padded_batch(config, lengths: list[int], *, left: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask (/ token_type_ids) with the checkpoint's pad id at padding; real ids never equal it."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    columns = torch.arange(width)
    lengths_t = torch.tensor(lengths)[:, None]
    mask = (columns >= width - lengths_t) if left else (columns < lengths_t)
    ids = torch.randint(config.pad_token_id + 1, config.vocab_size, (len(lengths), width), generator=g)
    batch = {"input_ids": ids.masked_fill(~mask, config.pad_token_id), "attention_mask": mask.long()}
    if config.type_vocab_size > 1:
        batch["token_type_ids"] = torch.randint(0, config.type_vocab_size, ids.shape, generator=g) * mask
    return batch


def outputs(model, batch, **kwargs) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(**batch, **kwargs)
    if hasattr(out, "logits"):
        return {"logits": out.logits}
    mask = batch["attention_mask"].bool()
    return {"last_hidden_state (valid tokens)": out.last_hidden_state[mask], "pooler_output": out.pooler_output}


@pytest.mark.parametrize("unpad", [True, False], ids=["unpad", "padded"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("architecture", list(OURS))
def test_same_numbers_as_transformers(bert_family, architecture, backend, unpad):
    path = bert_family(architecture)
    theirs = getattr(transformers, architecture).from_pretrained(path).eval()
    kwargs = {"add_pooling_layer": True} if OURS[architecture] is NewModel else {}
    with collected_warnings() as found:
        ours = OURS[architecture].from_pretrained(path, attn_implementation=backend, **kwargs).eval()
    assert not found
    batch = padded_batch(theirs.config, [9, 4, 13, 1, 13])
    expected = outputs(theirs, batch)
    got = outputs(ours, batch, unpad_inputs=unpad)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=ATOL, msg=lambda m: f"{name}: {m}")


def test_xlm_roberta_positions_start_after_padding_idx(bert_family):
    """XLM-R numbers positions from padding_idx + 1, over each row's real tokens: left padding too."""
    path = bert_family("XLMRobertaModel")
    theirs = transformers.XLMRobertaModel.from_pretrained(path).eval()
    ours = NewModel.from_pretrained(path).eval()
    table = theirs.embeddings.position_embeddings.weight
    assert ours.config.max_position_embeddings == theirs.config.max_position_embeddings - 2
    torch.testing.assert_close(ours.embeddings.position_embeddings.weight, table[2:], rtol=0, atol=0)
    batch = padded_batch(theirs.config, [5, 11, 2], left=True)
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        expected = theirs(**batch).last_hidden_state[mask]
        got = ours(**batch).last_hidden_state[mask]
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)


def test_the_longest_input_is_the_models_own_limit(bert_family):
    """A 64-position BERT and a 66-row XLM-R table both take 64 tokens, and refuse 65."""
    for architecture in ("BertModel", "XLMRobertaModel"):
        ours = NewModel.from_pretrained(bert_family(architecture)).eval()
        batch = padded_batch(ours.config, [64])
        ours(**batch)
        with pytest.raises(ValueError, match="max_position_embeddings"):
            ours(**padded_batch(ours.config, [65]))


def test_transformers_keeps_its_own_bert_classes(bert_family):
    """`import gte` registers nothing over transformers' `bert` / `xlm-roberta` Auto classes."""
    assert type(transformers.AutoModel.from_pretrained(bert_family("BertModel"))) is transformers.BertModel
    assert type(transformers.AutoModel.from_pretrained(bert_family("XLMRobertaModel"))) is transformers.XLMRobertaModel


def test_base_model_from_a_classifier_checkpoint(bert_family):
    path = bert_family("XLMRobertaForSequenceClassification")
    base = NewModel.from_pretrained(path).eval()
    reference = transformers.XLMRobertaModel.from_pretrained(path, add_pooling_layer=False).eval()
    batch = padded_batch(base.config, [6, 3])
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        torch.testing.assert_close(base(**batch).last_hidden_state[mask], reference(**batch).last_hidden_state[mask], rtol=0, atol=ATOL)


def test_converted_model_saves_and_reloads_as_new(bert_family, tmp_path):
    """A converted model saved with save_pretrained is a `new` checkpoint (gated_mlp=false) with the same numbers."""
    ours = NewForSequenceClassification.from_pretrained(bert_family("BertForSequenceClassification")).eval()
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "new" and saved["gated_mlp"] is False and saved["position_embedding_type"] == "absolute"
    again = NewForSequenceClassification.from_pretrained(tmp_path).eval()
    batch = padded_batch(ours.config, [5, 8])
    torch.testing.assert_close(outputs(again, batch)["logits"], outputs(ours, batch)["logits"], rtol=0, atol=0)


# ------------------------------------------------------------------------------ Embedder, Reranker, CLI
@pytest.mark.parametrize("architecture,pooling", [("BertModel", "mean"), ("XLMRobertaModel", "cls")])
def test_embedder_equals_sentence_transformers(bert_family, architecture, pooling):
    path = bert_family(architecture, pooling)
    reference = SentenceTransformer(str(path), device="cpu")
    assert type(reference[0].auto_model).__module__.startswith("transformers.models")  # their class, not ours
    embedder = gte.Embedder(path)
    assert (embedder.pooling, embedder.max_length) == (pooling, 48)
    np.testing.assert_allclose(embedder.encode(TEXTS), reference.encode(TEXTS), atol=ATOL)


@pytest.mark.parametrize("architecture", ["BertForSequenceClassification", "XLMRobertaForSequenceClassification"])
def test_reranker_scores_are_the_classifiers_logits(bert_family, architecture):
    path = bert_family(architecture)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    theirs = getattr(transformers, architecture).from_pretrained(path).eval()
    query, documents = "where is paris", ["paris is a city on a river", "deep neural network", "the lazy dog " * 3]
    batch = tokenizer([query] * len(documents), documents, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = theirs(**batch).logits.squeeze(-1).tolist()
    np.testing.assert_allclose(gte.Reranker(path).score(query, documents), expected, atol=ATOL)


def test_cli_embeds_and_reranks_with_bert_family_checkpoints(bert_family, capsys):
    from gte_cli import main

    model = bert_family("BertModel", "mean")
    assert main(["embed", "--model", str(model), "paris", "the lazy dog"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    np.testing.assert_allclose([r["embedding"] for r in rows], gte.Embedder(model).encode(["paris", "the lazy dog"]), atol=ATOL)
    reranker = bert_family("BertForSequenceClassification")
    assert main(["rerank", "--model", str(reranker), "-q", "paris", "paris is a city", "a lazy dog"]) == 0
    lines = capsys.readouterr().out.splitlines()
    scores = gte.Reranker(reranker).score("paris", ["paris is a city", "a lazy dog"])
    assert [float(line.split("\t")[0]) for line in lines] == pytest.approx(sorted(scores, reverse=True), abs=1e-5)


def test_info_describes_a_converted_checkpoint(bert_family, capsys):
    from gte_cli import main

    assert main(["info", "--json", str(bert_family("XLMRobertaForSequenceClassification"))]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "xlm-roberta (converted as it loads)"
    assert report["architecture"] == "NewForSequenceClassification"
    assert (report["gated_mlp"], report["position_embedding_type"], report["max_position_embeddings"]) == (False, "absolute", 64)
    assert "rope_theta" not in report


# ------------------------------------------------------------------------------ what we refuse
def write_checkpoint(out: Path, config: dict, weights: dict[str, torch.Tensor] | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config))
    save_file(weights or {"embeddings.word_embeddings.weight": torch.zeros(64, 32)}, out / "model.safetensors")
    return out


TINY_BERT = {"model_type": "bert", "architectures": ["BertModel"], "vocab_size": 64, "hidden_size": 32,
             "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64}  # fmt: skip
UNSUPPORTED = {
    "relative_key": ({"position_embedding_type": "relative_key"}, "relative position embeddings"),
    "relative_key_query": ({"position_embedding_type": "relative_key_query"}, "relative position embeddings"),
    "alibi": ({"position_embedding_type": "alibi"}, "ALiBi"),
    "pre-norm": ({"prenorm": True}, "pre-norm"),
    "pre_norm": ({"pre_norm": True}, "pre-norm"),
    "activation": ({"hidden_act": "swiglu"}, "hidden_act='swiglu'"),
    "decoder": ({"is_decoder": True}, "decoder"),
    "cross-attention": ({"add_cross_attention": True}, "cross-attention"),
    "custom architecture": ({"architectures": ["JinaBertForMaskedLM"]}, "JinaBertForMaskedLM"),
    "xlm-r relative": ({"model_type": "xlm-roberta", "architectures": ["XLMRobertaModel"],
                        "position_embedding_type": "relative_key"}, "relative position embeddings"),
}  # fmt: skip


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_variants_are_refused_by_name(name, tmp_path):
    overrides, needle = UNSUPPORTED[name]
    path = write_checkpoint(tmp_path, TINY_BERT | overrides)
    for load in (NewModel.from_pretrained, gte.Embedder):
        with pytest.raises(ConversionError, match=needle) as error:
            load(path)
        assert "transformers" in str(error.value)  # says what to use instead


def test_weights_we_have_no_place_for_are_refused(tmp_path):
    """A variant the config does not announce still shows in its weights (here, relative position distances)."""
    torch.manual_seed(0)
    weights = {k: v for k, v in transformers.BertModel(transformers.BertConfig(**TINY_BERT)).state_dict().items()}
    weights["encoder.layer.0.attention.self.distance_embedding.weight"] = torch.zeros(127, 8)
    path = write_checkpoint(tmp_path, TINY_BERT, weights)
    with pytest.raises(ConversionError, match="distance_embedding"):
        NewModel.from_pretrained(path)


def test_other_model_types_are_refused(tmp_path):
    path = write_checkpoint(tmp_path, TINY_BERT | {"model_type": "deberta-v2"})
    with pytest.raises(ConversionError, match="'deberta-v2'"):
        gte.Embedder(path)
    with pytest.raises(ConversionError, match="'deberta-v2'"):
        NewModel.from_pretrained(path)


def test_every_declared_architecture_converts():
    for name in ARCHITECTURES:
        model_type = "xlm-roberta" if name.startswith("XLM") else "bert"
        config = config_from_bert(TINY_BERT | {"model_type": model_type, "architectures": [name]})
        assert config.architectures == [ARCHITECTURES[name].new_class] and not config.gated_mlp


def test_base_model_leaves_head_weights_behind(bert_family, tmp_path):
    """A checkpoint whose config says BertModel but whose file also holds a head loads its encoder."""
    source = bert_family("BertForSequenceClassification")
    config = json.loads((source / "config.json").read_text()) | {"architectures": ["BertModel"]}
    weights = {k: v.contiguous() for k, v in transformers.BertForSequenceClassification.from_pretrained(source).state_dict().items()}
    path = write_checkpoint(tmp_path, config, weights)
    base = NewModel.from_pretrained(path).eval()
    reference = transformers.BertModel.from_pretrained(source).eval()
    batch = padded_batch(base.config, [5, 2])
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        torch.testing.assert_close(base(**batch).last_hidden_state[mask], reference(**batch).last_hidden_state[mask], rtol=0, atol=ATOL)
