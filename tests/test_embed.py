"""gte.Embedder on tiny checkpoints: numbers against independent references (transformers' own native `gte` classes
on the checkpoint converted to their layout, and the golden fixtures' float64 outputs pooled by hand), batch/order
independence, Matryoshka dims, truncation, input checks, sparse weights."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from transformers import AutoTokenizer
from transformers.utils import ModelOutput

import gte
from gte.embed import TruncationWarning, cut_batches
from gte.hub import CheckpointError, ModelNotFoundError
from model_helpers import golden_case, golden_manifest, golden_tensors, golden_tokenizer, one_label_copy, valid_tokens

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "",
    "search",
    "deep neural network learning for retrieval and rank of a document set",
    "paris london berlin",
    "a",
    "what is the capital of china? the city of berlin is not",
]


@pytest.fixture(scope="module")
def embedder(tiny_model_dir) -> gte.Embedder:
    return gte.Embedder(tiny_model_dir)


def test_loading_prints_nothing(capfd, tiny_model_dir, reranker_model_dir):
    """No progress bar ("Loading weights") and no load report from transformers, whose settings stay as they were."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    gte.Embedder(tiny_model_dir)
    gte.Reranker(reranker_model_dir)
    assert capfd.readouterr() == ("", "")
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == (verbosity, bars)
    assert hf_logging.set_tqdm_hook(None) is None  # no hook of ours left behind


GOLDEN_ATOL = golden_manifest()["tolerance"]["atol"]


def native_outputs(native: Path, texts: list[str], head: str = "GteModel") -> tuple[ModelOutput, dict]:
    """The independent reference: transformers' own class `head` of its native `gte` model, on a checkpoint converted
    to that layout (the native_dir fixture), called on the padded batch its tokenizer makes. (outputs, batch)."""
    tokenizer = AutoTokenizer.from_pretrained(native)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    model = getattr(transformers, head).from_pretrained(native).eval()
    assert type(model).__module__ == "transformers.models.gte.modeling_gte"  # none of gte's code
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    return out, batch


def cls_vectors(out: ModelOutput) -> np.ndarray:
    """The normalised first-token vectors of the last hidden state."""
    return F.normalize(out.hidden_states[-1][:, 0], dim=-1).numpy()


def test_encode_matches_transformers_native_gte(embedder, tiny_model_dir, native_dir):
    out, _ = native_outputs(native_dir(tiny_model_dir), TEXTS)
    expected = cls_vectors(out)
    vectors = embedder.encode(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_results_do_not_depend_on_batch_tokens_or_order(embedder):
    texts = [" ".join(random.Random(i).choices(TEXTS[0].split() + TEXTS[3].split(), k=i % 40)) for i in range(60)]
    reference = embedder.encode(texts)
    for seed, budget in enumerate((1, 9, 64, 300, 100_000)):
        order = list(range(len(texts)))
        random.Random(seed).shuffle(order)
        shuffled = embedder.encode([texts[i] for i in order], batch_tokens=budget)
        np.testing.assert_allclose(shuffled, reference[order], atol=1e-5, rtol=0)


def test_cut_batches_respects_the_budget():
    lengths = [5, 1, 9, 3, 3, 20, 2]
    batches = cut_batches(lengths, 10)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 or len(b) == 1 for b in batches)
    assert [lengths[i] for b in batches for i in b] == sorted(lengths, reverse=True)
    with pytest.raises(ValueError, match="batch_tokens"):
        cut_batches(lengths, 0)


def test_matryoshka_dim(embedder):
    raw = embedder.encode(TEXTS, normalize=False)
    for dim in (1, 8, 32):
        expected = raw[:, :dim] / np.linalg.norm(raw[:, :dim], axis=1, keepdims=True)
        np.testing.assert_allclose(embedder.encode(TEXTS, dim=dim), expected, atol=1e-6)
    np.testing.assert_allclose(embedder.encode(TEXTS, dim=8, normalize=False), raw[:, :8])
    for bad in (0, 33):
        with pytest.raises(ValueError, match="dim must be between 1 and the model's 32 dimensions"):
            embedder.encode(TEXTS, dim=bad)


def test_settings_from_sentence_transformers_files(embedder, multilingual_model_dir):
    assert (embedder.max_length, embedder.pooling) == (64, "cls")  # sentence_bert_config.json, 1_Pooling
    other = gte.Embedder(multilingual_model_dir)  # no sentence-transformers files
    assert (other.max_length, other.pooling) == (128, "cls")  # max_position_embeddings
    with pytest.warns(TruncationWarning, match="max_length=16"):  # a max_length given cuts at that length
        assert len(gte.Embedder(multilingual_model_dir, max_length=16).tokenize(["der hund " * 20])[0]) == 16


def test_mean_pooling_from_the_pooling_config(tiny_model_dir, native_dir, tmp_path):
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "mean"))
    pooling = json.loads((copy / "1_Pooling" / "config.json").read_text())
    pooling |= {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}
    (copy / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    embedder = gte.Embedder(copy, normalize=False)
    assert embedder.pooling == "mean"
    out, batch = native_outputs(native_dir(tiny_model_dir), TEXTS)
    m = batch["attention_mask"][..., None].float()
    expected = ((out.last_hidden_state * m).sum(1) / m.sum(1)).numpy()
    np.testing.assert_allclose(embedder.encode(TEXTS), expected, atol=1e-5)
    with pytest.raises(ValueError, match="pooling 'median' is not supported"):
        gte.Embedder(copy, pooling="median")


def test_attributes(embedder, tiny_model_dir, backends_used):
    assert embedder.model_name == str(tiny_model_dir)
    assert isinstance(embedder.model, gte.engine.Encoder)
    assert embedder.device == torch.device("cpu") and embedder.dtype == torch.float32
    assert (embedder.hidden_size, embedder.vocab_size % 64) == (32, 0)
    embedder.encode(TEXTS)
    assert set(backends_used) == {embedder.backend}  # the backend it reports is the one that runs
    assert not embedder.has_sparse
    assert "Embedder(" in repr(embedder)


def test_tokenize_special_tokens_and_empty_strings(embedder):
    cls, sep = embedder.tokenizer.cls_token_id, embedder.tokenizer.sep_token_id
    ids = embedder.tokenize(["", "fox"])
    assert ids[0] == [cls, sep]
    assert ids[1][0] == cls and ids[1][-1] == sep
    assert embedder.encode(["", "fox"]).shape == (2, 32)
    assert embedder.encode("fox").shape == (1, 32)
    assert embedder.encode([]).shape == (0, 32)


def test_truncation_warns_once_with_the_count(embedder):
    long = "the quick brown fox " * 40
    with pytest.warns(TruncationWarning, match=r"2 of 3 texts were longer than max_length=64") as caught:
        ids = embedder.tokenize([long, "fox", long + "dog"])
    assert len(caught) == 1
    assert [len(row) for row in ids] == [64, 3, 64]
    assert ids[0][-1] == embedder.tokenizer.sep_token_id
    with pytest.warns(TruncationWarning):
        vectors = embedder.encode([long])
    np.testing.assert_allclose(vectors, embedder.encode_tokens(ids[:1]), atol=1e-6)
    with pytest.raises(ValueError, match="1 of 2 texts are longer than max_length=64 tokens .*index 1"):
        embedder.encode(["fox", long], truncate=False)


def test_non_strings_name_the_index(embedder):
    with pytest.raises(TypeError, match=r"texts\[2\] is int"):
        embedder.encode(["a", "b", 3])
    with pytest.raises(TypeError, match=r"texts\[0\] is NoneType"):
        embedder.tokenize([None])


def test_multilingual_unigram_checkpoint(multilingual_model_dir, native_dir):
    texts = ["der schnelle hund", "北京 上海 模型", "le chat est rapide", ""]
    embedder = gte.Embedder(multilingual_model_dir)
    assert embedder.tokenize([""])[0] == [embedder.tokenizer.bos_token_id, embedder.tokenizer.eos_token_id]
    out, _ = native_outputs(native_dir(multilingual_model_dir), texts)
    np.testing.assert_allclose(embedder.encode(texts), cls_vectors(out), atol=1e-5)


def test_loaded_model_instance_without_tokenizer(tiny_model_dir, embedder):
    model = gte.NewModel.from_pretrained(tiny_model_dir)
    bare = gte.Embedder(model)
    ids = embedder.tokenize(TEXTS)
    np.testing.assert_allclose(bare.encode_tokens(ids), embedder.encode(TEXTS), atol=1e-6)
    with pytest.raises(ValueError, match="no tokenizer"):
        bare.encode(["fox"])
    with pytest.raises(ValueError, match=r"token_ids\[1\] is empty"):
        bare.encode_tokens([[2, 3], []])
    with pytest.raises(ValueError, match=r"token_ids\[1\] holds ids outside this model's vocabulary \(0..319\)"):
        bare.encode_tokens([[2, 3], [2, 320, 3]])


def test_bfloat16_is_close_to_float32(tiny_model_dir, embedder):
    low = gte.Embedder(tiny_model_dir, dtype="bfloat16")
    assert low.dtype == torch.bfloat16
    vectors = low.encode(TEXTS)
    assert vectors.dtype == np.float32
    assert (vectors * embedder.encode(TEXTS)).sum(-1).min() >= 0.999  # the cosine BENCHMARKS.md claims for bf16


def test_progress_bar_when_asked(embedder, capsys):
    embedder.encode(TEXTS * 10, batch_tokens=16, show_progress=True)
    assert "70/70" in capsys.readouterr().err
    embedder.encode(TEXTS * 10, batch_tokens=16)  # stderr is not a terminal here: no bar
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("name", ["p01", "p02", "p11", "p12"])  # every case whose token types are all 0
def test_vectors_match_the_golden_fixtures(name, pooling):
    """The original's float64 last_hidden_state pooled by hand (the first token; the mean of the valid ones), against
    encode_tokens on the fixture's token ids, the checkpoint directory loaded as a user loads one."""
    case = golden_case(name)
    hidden = golden_tensors(case, "expected")["last_hidden_state"]  # [B, L, H], zero at padding
    lengths = golden_tensors(case, "inputs")["attention_mask"].sum(1, keepdim=True)  # [B, 1]
    expected = hidden[:, 0] if pooling == "cls" else hidden.sum(1) / lengths
    embedder = gte.Embedder(case["dir"], tokenizer=golden_tokenizer(case), pooling=pooling, normalize=False)
    vectors = embedder.encode_tokens(valid_tokens(case), batch_tokens=40)
    np.testing.assert_allclose(vectors, expected.numpy(), atol=GOLDEN_ATOL, rtol=0)


# ------------------------------------------------------------------------------ sparse
def sparse_by_hand(
    rows: list[list[int]], logits: list[list[float]], special: set[int], name: Callable[[int], str]
) -> list[dict[str, float]]:
    """Sparse weights written out the long way from each row's token ids and token logits: relu, the max over the
    repeats of a token (named by `name(token_id)`), special tokens, blank names and zero weights left out."""
    result = []
    for ids, row in zip(rows, logits):
        weights: dict[str, float] = {}
        for token_id, logit in zip(ids, row):
            token = name(token_id)
            if token_id not in special and logit > 0 and token.strip():
                weights[token] = max(weights.get(token, 0.0), logit)
        result.append(weights)
    return result


def test_sparse_weights(sparse_model_dir, native_dir):
    """Against transformers' native GteForTokenClassification on the same weights."""
    texts = ["der hund der hund ist schnell", "北京 上海", "", "le chat le chat"]
    embedder = gte.Embedder(sparse_model_dir)
    assert embedder.has_sparse and embedder.model.architecture == "NewForTokenClassification"
    sparse = embedder.encode_sparse(texts)
    out, batch = native_outputs(native_dir(sparse_model_dir), texts, "GteForTokenClassification")
    masks = batch["attention_mask"].bool()
    rows = [ids[m].tolist() for ids, m in zip(batch["input_ids"], masks)]
    logits = [row[m].tolist() for row, m in zip(out.logits[..., 0], masks)]
    tokenizer = AutoTokenizer.from_pretrained(sparse_model_dir)
    expected = sparse_by_hand(rows, logits, set(tokenizer.all_special_ids), lambda i: tokenizer.decode([i]))
    assert [set(s) for s in sparse] == [set(e) for e in expected]
    assert sparse[0] and sparse[2] == {}
    for got, want in zip(sparse, expected):
        assert got == pytest.approx(want, abs=1e-5)
    # the dense vectors of a sparse checkpoint: CLS of the inner model
    np.testing.assert_allclose(embedder.encode(texts), cls_vectors(out), atol=1e-5)


@pytest.mark.parametrize("label", range(3))
def test_sparse_weights_match_a_golden_token_classification_case(label, tmp_path):
    """p12 (NTK mixed_b, RMSNorm, logn, longer than its positions, repeated token ids) with its classifier cut to
    output `label`: the weights are the original's float64 logits[..., label], written out by hand."""
    case = golden_case("p12")
    tokenizer = golden_tokenizer(case)
    embedder = gte.Embedder(one_label_copy(case, label, tmp_path / "one-label"), tokenizer=tokenizer, pooling="cls")
    assert embedder.has_sparse
    rows = valid_tokens(case)
    logits = golden_tensors(case, "expected")["logits"][..., label].tolist()
    expected = sparse_by_hand(rows, logits, set(tokenizer.all_special_ids), lambda i: f"w{i}")
    sparse = embedder.sparse_tokens(rows, batch_tokens=40)
    assert sum(map(len, sparse)) > 50 and not {"[CLS]", "[SEP]"} & {token for row in sparse for token in row}
    # a token absent on one side has weight 0 (a logit within the tolerance of 0 may fall on either side of it)
    for got, want in zip(sparse, expected, strict=True):
        diffs = {token: abs(got.get(token, 0.0) - want.get(token, 0.0)) for token in got.keys() | want.keys()}
        assert max(diffs.values(), default=0.0) <= GOLDEN_ATOL, diffs


def test_sparse_needs_the_token_weight_head(embedder):
    with pytest.raises(ValueError, match="no token-weight head"):
        embedder.encode_sparse(["fox"])
    with pytest.raises(ValueError, match="no token-weight head"):
        embedder.encode(["fox"], sparse=True)


def test_dense_and_sparse_from_one_pass_equal_the_two_apart(sparse_model_dir, monkeypatch):
    texts = ["der hund der hund ist schnell", "北京 上海", "le chat le chat " * 30, "a"]
    embedder = gte.Embedder(sparse_model_dir, max_length=32)
    passes = []
    monkeypatch.setattr(embedder.encoder, "run", lambda *a, run=embedder.encoder.run, **k: passes.append(1) or run(*a, **k))
    with pytest.warns(UserWarning, match="truncated"):
        vectors, weights = embedder.encode(texts, sparse=True, dim=16, batch_tokens=40)
        one_pass = len(passes)
        np.testing.assert_allclose(vectors, embedder.encode(texts, dim=16, batch_tokens=40), atol=1e-6)
        apart = embedder.encode_sparse(texts, batch_tokens=40)
    assert one_pass > 1 and len(passes) == 3 * one_pass  # both from the encoder passes that either takes alone
    assert [set(w) for w in weights] == [set(a) for a in apart]
    for got, want in zip(weights, apart):
        assert got == pytest.approx(want, abs=1e-6)
    binary, again = embedder.encode(texts[:2], sparse=True, precision="binary")
    np.testing.assert_array_equal(binary, embedder.encode(texts[:2], precision="binary"))
    with pytest.raises(ValueError, match="take no prompt"):
        embedder.encode(texts, sparse=True, prompt="query: ")


# ------------------------------------------------------------------------------ loading errors
def test_reranker_checkpoint_is_refused(reranker_model_dir):
    with pytest.raises(ValueError, match="gte.Reranker"):
        gte.Embedder(reranker_model_dir)


def test_missing_model_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a checkpoint directory"):
        gte.Embedder(tmp_path / "nowhere")
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        gte.Embedder(tmp_path)
    with pytest.raises(ModelNotFoundError, match="pass a local checkpoint directory"):
        gte.Embedder("Alibaba-NLP/not-in-the-cache")


# ------------------------------------------------------------------------------ checkpoints checked before they load
def copy_checkpoint(source: Path, target: Path, *, without: tuple[str, ...] = ()) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*without))
    return target


def edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.mark.parametrize(
    ("removed", "written", "reason"),
    [
        (("tokenizer.json", "tokenizer_config.json"), {}, "no tokenizer files"),
        (("tokenizer.json",), {}, "no tokenizer files"),  # tokenizer_config.json alone
        (("tokenizer.json",), {"vocab.json": '{"the": 0}'}, "its BertTokenizer knows only 5 tokens, the 5 special ones"),
        ((), {"tokenizer.json": "{"}, "transformers: Expecting property name enclosed in double quotes"),
    ],
)
def test_a_checkpoint_without_a_usable_tokenizer_is_refused(removed, written, reason, bert_family, tmp_path):
    """Without its tokenizer files, transformers gave a BERT checkpoint a tokenizer of special tokens only:
    every word became [UNK], exit 0."""
    source = bert_family("BertModel")
    model = copy_checkpoint(source, tmp_path / "m", without=removed)
    for name, text in written.items():
        (model / name).write_text(text)
    with pytest.raises(ModelNotFoundError) as error:
        gte.Embedder(model)
    message = str(error.value)
    assert message.startswith(f"{model} has no usable tokenizer ({reason}")
    assert "): a checkpoint needs tokenizer.json, or vocab.txt" in message and "\n" not in message
    given = AutoTokenizer.from_pretrained(source)
    assert gte.Embedder(model, tokenizer=given).encode(["the fox"]).shape == (1, 32)  # a tokenizer passed in is used


def test_truncated_weights_are_refused(tiny_model_dir, tmp_path):
    model = copy_checkpoint(tiny_model_dir, tmp_path / "m")
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    for size in (0, 7, 100, len(data) // 2, len(data) - 1):
        weights.write_bytes(data[:size])
        with pytest.raises(CheckpointError, match=f"^{weights} is damaged or incomplete .*: download or copy"):
            gte.Embedder(model)
    weights.write_bytes(data + b"\0")  # more bytes than the header accounts for
    with pytest.raises(CheckpointError, match="file not fully covered"):
        gte.Embedder(model)


def test_weights_lacking_a_parameter_are_refused(tiny_model_dir, reranker_model_dir, tmp_path):
    """A tensor missing from the file would be randomly initialised by from_pretrained: refused, naming it."""
    from safetensors.torch import load_file, save_file

    for source, load in ((tiny_model_dir, gte.Embedder), (reranker_model_dir, gte.Reranker)):
        model = copy_checkpoint(source, tmp_path / source.name)
        weights = load_file(str(model / "model.safetensors"))
        name = next(key for key in weights if "layer.1.attention.o_proj.weight" in key)
        save_file({k: v for k, v in weights.items() if k != name}, str(model / "model.safetensors"), {"format": "pt"})
        with pytest.raises(CheckpointError, match=f"the weights lack {name}, which would be random numbers"):
            load(model)


@pytest.mark.parametrize(
    ("source", "key", "given", "found"),
    [
        ("tiny", "hidden_size", 64, 32),
        ("tiny", "num_hidden_layers", 3, 2),  # a layer the weights lack was initialised at random, exit 0
        ("tiny", "num_hidden_layers", 1, 2),  # a layer of the weights was dropped, exit 0
        ("tiny", "intermediate_size", 128, 64),
        ("tiny", "vocab_size", 1024, 320),
        ("tiny", "type_vocab_size", 2, 0),
        ("xlmr", "max_position_embeddings", 130, 66),  # in config.json's terms: XLM-R counts from padding_idx + 1
    ],
)
def test_a_config_that_disagrees_with_the_weights_is_refused(source, key, given, found, tiny_model_dir, bert_family, tmp_path):
    model = copy_checkpoint(tiny_model_dir if source == "tiny" else bert_family("XLMRobertaModel"), tmp_path / "m")
    edit_config(model, **{key: given})
    with pytest.raises(CheckpointError) as error:
        gte.Embedder(model)
    assert str(error.value) == (
        f"{model}/config.json has {key}={given} but the weights have {key}={found}: the config and the weights are from "
        "different models; put the checkpoint's own config.json beside its weights"
    )


def test_a_reranker_config_with_more_labels_than_its_weights(reranker_model_dir, tmp_path):
    model = copy_checkpoint(reranker_model_dir, tmp_path / "m")
    edit_config(model, id2label={"0": "LABEL_0", "1": "LABEL_1"}, label2id={"LABEL_0": 0, "LABEL_1": 1})
    with pytest.raises(CheckpointError, match="has num_labels=2 but the weights have num_labels=1"):
        gte.Reranker(model)


def test_sharded_checkpoints_are_checked(tiny_model_dir, embedder, tmp_path):
    sharded = copy_checkpoint(tiny_model_dir, tmp_path / "sharded", without=("model.safetensors",))
    gte.NewModel.from_pretrained(tiny_model_dir).save_pretrained(sharded, max_shard_size="40KB")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1
    np.testing.assert_allclose(gte.Embedder(sharded).encode(TEXTS), embedder.encode(TEXTS), atol=1e-6)

    index_file = sharded / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    index_file.write_text(json.dumps(index | {"weight_map": index["weight_map"] | {"encoder.layer.9.extra": shards[0].name}}))
    with pytest.raises(CheckpointError, match="1 tensors that model.safetensors.index.json names are in none of its shards"):
        gte.Embedder(sharded)
    index_file.write_text(json.dumps(index))
    data = shards[-1].read_bytes()
    shards[-1].write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"^{shards[-1]} is damaged or incomplete"):
        gte.Embedder(sharded)
    shards[-1].unlink()
    with pytest.raises(ModelNotFoundError, match=f"^{shards[-1]} is missing"):
        gte.Embedder(sharded)
