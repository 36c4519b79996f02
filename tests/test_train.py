"""gte.training: losses and gradients equal to sentence-transformers', checkpoints in the source layout, resume
after SIGKILL, torchrun, sentence-transformers' own trainer over gte's classes, and a real gain in nDCG@10."""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import fixtures
import gte
from fixtures import (
    ENGLISH_WORDS, MULTILINGUAL_WORDS, build_reranker_model, build_sentence_transformer, build_tiny_model, generate_corpus,
)
from gte.embed import Embedder, TruncationWarning
from gte.sources import InputError
from gte.training import checkpoint, data, forward, losses
from gte.training.distributed import World
from gte.training.embedding import make_loss, tokenize
from gte.training.reranking import RerankTask, read_pairs
from gte.engine import checkpointing
from gte.training.trainer import Options

GTE = [sys.executable, "-m", "gte_cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


# ------------------------------------------------------------------------------------ fixtures
def without_dropout(out: Path) -> Path:
    """The checkpoint at `out` with dropout 0: two implementations draw no random masks to disagree on."""
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(config | {"hidden_dropout_prob": 0.0}, indent=2))
    return out


@pytest.fixture(scope="module")
def still_model(tmp_path_factory) -> Path:
    """The tiny GTE checkpoint, without dropout."""
    return without_dropout(build_tiny_model(tmp_path_factory.mktemp("still")))


@pytest.fixture(scope="module")
def dense_model(tmp_path_factory, still_model) -> Path:
    """Saved by sentence-transformers: mean pooling, a Dense 32 -> 24 (Tanh), Normalize."""
    return build_sentence_transformer(tmp_path_factory.mktemp("dense"), still_model, pooling="mean",
                                      dense=((24, "Tanh"),), normalize=True)  # fmt: skip


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory) -> Path:
    texts = generate_corpus(list(ENGLISH_WORDS), n=120, seed=3)
    rows = [{"anchor": t[:30], "positive": t, "negative": texts[(i + 7) % len(texts)]} for i, t in enumerate(texts)]
    path = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def columns(count: int = 3, rows: int = 8) -> list[list[str]]:
    texts = generate_corpus(list(ENGLISH_WORDS), n=count * rows, seed=11)
    return [texts[i * rows : (i + 1) * rows] for i in range(count)]


def gradients(model: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The gradients of the parameters under `prefix`, by their names below it."""
    named = model.named_parameters()
    return {n.removeprefix(prefix): p.grad.clone() for n, p in named if p.grad is not None and n.startswith(prefix)}


def assert_same_gradients(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == theirs.keys() and ours
    for name in ours:
        scale = max(1.0, float(theirs[name].abs().max()))
        torch.testing.assert_close(ours[name] / scale, theirs[name] / scale, rtol=0, atol=1e-5, msg=name)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


# ------------------------------------------------------------------------------------ losses
def st_losses(model, case: str):
    from sentence_transformers.sentence_transformer import losses as st
    from sentence_transformers.util import dot_score

    return {
        "mnrl": st.MultipleNegativesRankingLoss(model),
        "dot": st.MultipleNegativesRankingLoss(model, scale=1.0, similarity_fct=dot_score),
        "gte-improved": st.MultipleNegativesRankingLoss(model, directions=losses.DIRECTIONS),
        "symmetric": st.MultipleNegativesRankingLoss(model, directions=("query_to_doc", "doc_to_query"),
                                                     partition_mode="per_direction"),  # fmt: skip
        "cached-mnrl": st.CachedMultipleNegativesRankingLoss(model, mini_batch_size=3),
        "matryoshka": st.MatryoshkaLoss(model, st.MultipleNegativesRankingLoss(model), [32, 16, 8], [1.0, 0.5, 0.25]),
    }[case]


OURS = {
    "mnrl": losses.RankingLoss(),
    "dot": losses.RankingLoss(scale=1.0, similarity="dot"),
    "gte-improved": losses.RankingLoss(directions=losses.DIRECTIONS),
    "symmetric": losses.RankingLoss(directions=("query_to_doc", "doc_to_query"), partition="per_direction"),
    "cached-mnrl": losses.RankingLoss(),
    "matryoshka": losses.Matryoshka(losses.RankingLoss(), (32, 16, 8), (1.0, 0.5, 0.25)),
}


@pytest.mark.parametrize("negatives", [0, 1, 2])
@pytest.mark.parametrize("case", list(OURS))
def test_loss_and_gradients_equal_sentence_transformers(still_model, case, negatives):
    from sentence_transformers import SentenceTransformer

    texts = columns(2 + negatives)
    ours = Embedder(str(still_model), device="cpu", trainable=True)
    ids = [[np.asarray(r, dtype=np.int32) for r in ours.tokenize(c)] for c in texts]
    value = forward.step(ours, OURS[case], ids, [0] * len(ids), budget=40, cached=case == "cached-mnrl")

    model = SentenceTransformer(str(still_model), device="cpu").train()
    theirs = st_losses(model, case)([model.preprocess(c) for c in texts], None)
    theirs.backward()
    assert value == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)
    assert_same_gradients(gradients(ours.model), gradients(model, "0.model."))


def test_the_head_trains_as_sentence_transformers_does(dense_model):
    """Mean pooling, a Dense layer and Normalize: the Dense weights get sentence-transformers' gradients too."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import losses as st

    texts = columns(3)
    ours = Embedder(str(dense_model), device="cpu", trainable=True)
    ids = [[np.asarray(r, dtype=np.int32) for r in ours.tokenize(c)] for c in texts]
    value = forward.step(ours, losses.RankingLoss(), ids, [0, 0, 0], budget=4096)
    model = SentenceTransformer(str(dense_model), device="cpu").train()
    theirs = st.MultipleNegativesRankingLoss(model)([model.preprocess(c) for c in texts], None)
    theirs.backward()
    assert value == pytest.approx(theirs.item(), rel=1e-5)
    ours_head, their_head = gradients(ours.head, "steps.0."), gradients(model, "2.")
    assert ours_head.keys() == {"linear.weight", "linear.bias"}
    assert_same_gradients(gradients(ours.model) | ours_head, gradients(model, "0.model.") | their_head)


def test_the_cache_replays_dropout(tiny_model_dir):
    """With dropout, cached-mnrl's second pass draws the first pass's masks: the same gradients as one pass."""
    texts = columns(2)
    runs = []
    for cached in (False, True):
        ours = Embedder(str(tiny_model_dir), device="cpu", trainable=True)
        ids = [[np.asarray(r, dtype=np.int32) for r in ours.tokenize(c)] for c in texts]
        torch.manual_seed(0)
        # one micro-batch per column: both paths draw the same masks in the same order
        value = forward.step(ours, losses.RankingLoss(), ids, [0, 0], budget=4096, cached=cached)
        runs.append((value, gradients(ours.model)))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-6)
    assert_same_gradients(runs[1][1], runs[0][1])


def test_gradient_checkpointing_changes_memory_not_gradients(still_model):
    texts = columns(3)
    runs = []
    for recompute in (False, True):
        ours = Embedder(str(still_model), device="cpu", trainable=True)
        if recompute:
            checkpointing(ours.model)
        ids = [[np.asarray(r, dtype=np.int32) for r in ours.tokenize(c)] for c in texts]
        runs.append((forward.step(ours, losses.RankingLoss(), ids, [0, 0, 0], budget=40), gradients(ours.model)))
    assert runs[1][0] == pytest.approx(runs[0][0], rel=1e-6)
    assert_same_gradients(runs[1][1], runs[0][1])


def test_loss_settings_are_checked():
    with pytest.raises(ValueError, match="query_to_doc always"):
        losses.RankingLoss(directions=("doc_to_query",))
    with pytest.raises(ValueError, match="per_direction"):
        losses.RankingLoss(directions=("query_to_doc", "doc_to_doc"), partition="per_direction")
    with pytest.raises(ValueError, match="needs its dimensions"):
        make_loss("matryoshka", 20.0, "cosine", ("query_to_doc",), (), None, 32)
    with pytest.raises(ValueError, match="exceeds the model's 32"):
        make_loss("matryoshka", 20.0, "cosine", ("query_to_doc",), (64, 32), None, 32)
    with pytest.raises(ValueError, match="one per dimension"):
        make_loss("matryoshka", 20.0, "cosine", ("query_to_doc",), (32, 16), (1.0,), 32)


# ------------------------------------------------------------------------------------ data
def test_columns_by_name_and_by_order(tmp_path):
    named = tmp_path / "named.jsonl"
    named.write_text(json.dumps({"id": 1, "negative_2": "n2", "positive": "p", "query": "q", "negative_1": "n1"}) + "\n")
    assert data.read_rows(named).names == ["query", "positive", "negative_2", "negative_1"]
    ordered = tmp_path / "ordered.csv"
    ordered.write_text("s1,s2,s3\na,b,c\n")
    rows = data.read_rows(ordered)
    assert rows.names == ["s1", "s2", "s3"] and rows.columns == [["a"], ["b"], ["c"]]


@pytest.mark.parametrize(("content", "message"), [
    ('{"anchor": "a", "positive": ""}', "row 1: column 'positive' is empty"),
    ('{"anchor": "a", "positive": null}', "row 1: column 'positive' is empty"),
    ('{"anchor": "a", "score": 1}', "needs an anchor and a positive"),
])  # fmt: skip
def test_bad_rows_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content + "\n")
    with pytest.raises(InputError, match=message):
        data.read_rows(path)


def test_prompts_as_the_checkpoint_defines_them(tmp_path, still_model):
    prompted = build_sentence_transformer(tmp_path / "prompted", still_model, include_prompt=False,
                                          prompts={"query": "query: ", "document": "passage: "})  # fmt: skip
    embedder = Embedder(str(prompted), device="cpu", trainable=True)
    rows = data.Rows(["anchor", "positive", "negative"], [["a b"], ["c d"], ["e f"]])
    prompts, skips, tokens = tokenize(embedder, rows)
    assert prompts == ["query: ", "passage: ", "passage: "]
    assert skips == [embedder.prompt_length("query: "), *[embedder.prompt_length("passage: ")] * 2] and skips[0] > 0
    assert list(tokens[0].take([0])[0]) == embedder.tokenize("a b", prompt="query: ")[0]


def test_tokenized_in_slices_with_one_truncation_warning(monkeypatch):
    monkeypatch.setattr(data, "TOKENIZE_ROWS", 3)
    texts = ["ab", "abcdef", "c", "defg", "e", "fgh", "hij"]

    def tokenize(chunk: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        cut = sum(len(t) > 3 for t in chunk)
        if cut:
            warnings.warn(TruncationWarning("one slice", cut))
        return [[ord(c) for c in t[:3]] for t in chunk], [[0] * len(t[:3]) for t in chunk]

    with pytest.warns(TruncationWarning) as caught:
        ids, types = data.Tokens.tokenized(texts, tokenize, 3)
    assert [str(w.message) for w in caught] == ["2 of 7 training inputs were longer than max_length=3 tokens and were truncated"]
    assert [r.tolist() for r in ids.take(list(range(7)))] == [[ord(c) for c in t[:3]] for t in texts]
    assert ids.lengths().tolist() == types.lengths().tolist() == [len(t[:3]) for t in texts]


def test_epoch_order_is_fixed_by_seed_and_epoch():
    assert data.epoch_order(10, 0, 1) == data.epoch_order(10, 0, 1)
    assert data.epoch_order(10, 0, 1) != data.epoch_order(10, 1, 1)
    assert sorted(data.epoch_order(10, 3, 1)) == list(range(10))


# ------------------------------------------------------------------------------------ saving
def test_gte_checkpoint_saved_in_the_official_layout(tmp_path, still_model, rows_file):
    from transformers import AutoModel

    out = tmp_path / "out"
    result = gte.train(rows_file, out, model=still_model, batch_size=16, steps=3, save_steps=2, show_progress=False)
    assert len(result.losses) == 3 and not (out / "checkpoints").exists()
    before, after = weights(still_model), weights(out)
    assert {k: v.shape for k, v in before.items()} == {k: v.shape for k, v in after.items()}
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert json.loads((out / "config.json").read_text()) == json.loads((still_model / "config.json").read_text())
    report = json.loads((out / "training.json").read_text())
    assert report["steps"] == 3 and report["settings"]["loss"] == "mnrl"
    auto = AutoModel.from_pretrained(str(out))  # the Auto classes, as a user (and the golden loader) would
    assert all(torch.equal(auto.state_dict()[k], after[k]) for k in after)


def test_default_model_saved_in_bert_layout_loads_everywhere(tmp_path, rows_file):
    from sentence_transformers import SentenceTransformer

    source = gte.hub.resolve(gte.embed.DEFAULT_MODEL)
    out = tmp_path / "minilm"
    gte.train(rows_file, out, batch_size=8, steps=2, lr=1e-3, show_progress=False)
    assert json.loads((out / "config.json").read_text())["model_type"] == "bert"
    assert weights(out).keys() == weights(source).keys()
    texts = ["a query about things", "another, longer text about other things entirely"]
    ours = Embedder(str(out)).encode(texts)
    theirs = SentenceTransformer(str(out), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert np.abs(ours - Embedder().encode(texts)).max() > 1e-3  # it did train


@pytest.mark.parametrize("family", ["nomic_bert", "modernbert"])
def test_other_families_fine_tune_into_their_own_layout(tmp_path, rows_file, family):
    """Fine-tuned nomic-bert and ModernBERT checkpoints keep their layout: transformers' own class loads them and
    gives the numbers gte gives."""
    from transformers import AutoModel

    build = fixtures.build_nomic_bert_model if family == "nomic_bert" else fixtures.build_modernbert_model
    source = build(tmp_path / family)
    out = tmp_path / "tuned"
    gte.train(rows_file, out, model=source, batch_size=8, steps=2, lr=1e-3, show_progress=False)
    before, after = weights(source), weights(out)
    assert before.keys() == after.keys() and any(not torch.equal(before[k].float(), after[k]) for k in before)
    assert json.loads((out / "config.json").read_text())["model_type"] == family
    theirs = AutoModel.from_pretrained(str(out)).eval()
    assert type(theirs).__module__.startswith("transformers.models.")
    ids = torch.randint(5, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1] * 12, [1] * 7 + [0] * 5])
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
        got = gte.NewModel.from_pretrained(str(out)).eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], rtol=0, atol=1e-5)


def test_dense_weights_saved_in_their_folder(tmp_path, dense_model, rows_file):
    out = tmp_path / "dense-out"
    gte.train(rows_file, out, model=dense_model, batch_size=8, steps=2, lr=1e-2, show_progress=False)
    folder = next(p for p in out.iterdir() if p.name.endswith("Dense"))
    saved, source = load_file(str(folder / "model.safetensors")), load_file(str(dense_model / folder.name / "model.safetensors"))
    assert saved.keys() == source.keys() and not torch.equal(saved["linear.weight"], source["linear.weight"])
    trained = Embedder(str(out), device="cpu")
    np.testing.assert_array_equal(trained.head.steps[0].linear.weight.numpy(), saved["linear.weight"].numpy())


def test_write_back_keeps_what_the_conversion_leaves_behind(tmp_path):
    """XLM-R's unused position rows and BERT's pooler stay as stored; every value our model has is written."""
    source = gte.hub.resolve(gte.embed.DEFAULT_MODEL)
    embedder = Embedder(source, trainable=True)
    with torch.no_grad():
        for p in embedder.model.parameters():
            p.add_(1.0)
    stored = weights(source)
    written = gte.convert.write_back(str(source), dict(embedder.model.named_parameters()))
    changed = {k for k in stored if not torch.equal(stored[k].float(), written[k])}
    assert changed == set(stored) - {k for k in stored if k.startswith("pooler.") or k.endswith("position_ids")}


# ------------------------------------------------------------------------------------ resume, torchrun
def run_cli(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([*GTE, "train", "embed", *args, "--no-progress"], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)  # fmt: skip


def test_resume_after_sigkill_ends_at_the_uninterrupted_weights(tmp_path, tiny_model_dir, rows_file):
    """With dropout on (tiny_model_dir's 0.1): data order, random state and optimizer all come back."""
    common = ["--data", str(rows_file), "--model", str(tiny_model_dir), "--batch-size", "4", "--epochs", "2",
              "--save-steps", "5", "--lr", "1e-3"]  # fmt: skip
    whole = run_cli([*common, "-o", str(tmp_path / "whole")])
    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    killed = run_cli([*common, "-o", str(tmp_path / "killed")])
    deadline = time.monotonic() + 300
    while checkpoint.latest_checkpoint(tmp_path / "killed") is None and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    resumed = run_cli([*common, "-o", str(tmp_path / "killed"), "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    whole_report = json.loads((tmp_path / "whole" / "training.json").read_text())
    resumed_report = json.loads((tmp_path / "killed" / "training.json").read_text())
    assert resumed_report["losses"] == whole_report["losses"]


def test_resume_refuses_other_settings(tmp_path, still_model, rows_file):
    out = tmp_path / "out"
    shutil.copytree(still_model, out / "checkpoints" / "step-1")
    torch.save({"settings": {"batch_size": 99}, "step": 1}, out / "checkpoints" / "step-1" / "trainer.pt")
    with pytest.raises(ValueError, match="other settings .*batch_size 99 -> 16"):
        gte.train(rows_file, out, model=still_model, batch_size=16, steps=2, resume=True, show_progress=False)


RANK_STEP = """
import sys, numpy as np, torch
from gte.embed import Embedder, TruncationWarning
from gte.training import data, forward, losses
from gte.training.distributed import join
model, rows_file, out, loss_name, cached = sys.argv[1:6]
world, device = join("cpu")
embedder = Embedder(model, device="cpu", trainable=True)
rows = data.read_rows(rows_file)
share = 8 // world.size
ids = [[np.asarray(r, np.int32) for r in embedder.tokenize(c[world.rank * share:(world.rank + 1) * share])] for c in rows.columns]
loss = {"mnrl": losses.RankingLoss(directions=losses.DIRECTIONS), "matryoshka": losses.Matryoshka(losses.RankingLoss(), (32, 8), (1.0, 0.3))}[loss_name]
value = forward.step(embedder, loss, ids, [0] * len(ids), 40, cached=cached == "1", gather=world.gather)
world.average(embedder.model.parameters())
value = world.mean(value)
if world.main:
    torch.save({"loss": value, "grads": {n: p.grad for n, p in embedder.model.named_parameters()}}, out)
world.close()
"""


@pytest.mark.parametrize(("loss", "cached"), [("mnrl", "0"), ("mnrl", "1"), ("matryoshka", "0")])
def test_torchrun_gradients_equal_one_process(tmp_path, still_model, rows_file, loss, cached):
    """gloo, two ranks of 4 rows against one process of 8: the step's loss and averaged gradients are one process's
    (in-batch negatives gathered across the ranks, with gradients), for every direction of the loss, cached or not."""
    script = tmp_path / "rank_step.py"
    script.write_text(RANK_STEP)
    results = []
    for processes in (1, 2):
        out = tmp_path / f"{processes}.pt"
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                               str(processes), str(script), str(still_model), str(rows_file), str(out), loss, cached],
                              env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        results.append(torch.load(out))
    one, two = results
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
    assert_same_gradients(two["grads"], one["grads"])


def test_torchrun_training_equals_one_process(tmp_path, still_model, rows_file):
    """`torchrun ... gte train embed` takes the steps one process takes: the same loss at every step. (Final
    weights agree to rounding except where a gradient is rounding noise itself, like attention's key bias, whose
    true gradient is zero: Adam scales such noise up to full-size steps, in either run.)"""
    common = ["--data", str(rows_file), "--model", str(still_model), "--batch-size", "8", "--steps", "4", "--lr", "1e-3",
              "--device", "cpu"]  # fmt: skip
    one = run_cli([*common, "-o", str(tmp_path / "one")])
    assert one.wait(timeout=300) == 0, one.stderr.read()
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "gte_cli",
         "train", "embed", *common, "-o", str(tmp_path / "two"), "--no-progress"],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr
    losses_one = json.loads((tmp_path / "one" / "training.json").read_text())["losses"]
    losses_two = json.loads((tmp_path / "two" / "training.json").read_text())["losses"]
    assert losses_two == pytest.approx(losses_one, rel=1e-5)


# ------------------------------------------------------------------------------------ interop and quality
def test_sentence_transformers_trainer_over_gte_classes(tmp_path, still_model):
    """After `import gte`, sentence-transformers' own trainer fine-tunes a GTE directory: no trust_remote_code."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = SentenceTransformer(str(still_model), device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    texts = columns(2, rows=8)
    dataset = Dataset.from_dict({"anchor": texts[0], "positive": texts[1]})
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "st"), max_steps=2, per_device_train_batch_size=4,
                                                report_to=[], use_cpu=True, save_strategy="no")  # fmt: skip
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=MultipleNegativesRankingLoss(model))
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.save(str(tmp_path / "saved"))
    np.testing.assert_allclose(Embedder(str(tmp_path / "saved"), normalize=False).encode(texts[0]),
                               model.encode(texts[0]), atol=1e-5)  # fmt: skip


def synonym_domain(folder: Path) -> tuple[Path, Path]:
    """A domain whose queries name things with words its documents never use: 24 made-up query terms, each
    with its own made-up document term. A query names two things; its document holds their two document
    terms among filler words. Training pairs and held-out pairs use different couples of things, so only a
    model that learned the term pairs (not the couples) finds the held-out documents."""
    rng = random.Random(0)

    def word() -> str:
        return "".join(rng.choice("bcdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3))

    queries, documents = [word() for _ in range(24)], [word() for _ in range(24)]
    filler = "the a report notes that system part unit shows with for under over new old".split()
    couples = list(itertools.combinations(range(24), 2))
    rng.shuffle(couples)

    def row(i: int, j: int) -> dict[str, str]:
        text = " ".join([documents[i], *rng.sample(filler, 4), documents[j], *rng.sample(filler, 3)])
        return {"anchor": f"{queries[i]} {queries[j]}", "positive": text}

    train, held_out = folder / "train.jsonl", folder / "held-out.jsonl"
    train.write_text("\n".join(json.dumps(row(i, j)) for i, j in couples[:200]) + "\n")
    held_out.write_text("\n".join(json.dumps(row(i, j)) for i, j in couples[200:276]) + "\n")
    return train, held_out


def test_fine_tuning_the_default_model_raises_held_out_ndcg(tmp_path):
    train, held_out = synonym_domain(tmp_path)
    result = gte.train(train, tmp_path / "tuned", batch_size=32, epochs=2, lr=1e-4, eval=held_out, show_progress=False)
    assert result.before["ndcg@10"] < 0.2
    assert result.after["ndcg@10"] > result.before["ndcg@10"] + 0.3
    report = gte.evaluate_retrieval(pairs=held_out, model=str(tmp_path / "tuned"), cache_dir=tmp_path / "cache")
    assert report.variants[0].scores["ndcg"][10] == pytest.approx(result.after["ndcg@10"], abs=1e-6)


def test_cli_trains_and_prints_before_during_and_after(tmp_path, still_model, rows_file):
    pairs = tmp_path / "pairs.jsonl"
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()][:40]
    pairs.write_text("\n".join(json.dumps({"query": r["anchor"], "positive": r["positive"]}) for r in rows) + "\n")
    done = run_cli(["--data", str(rows_file), "--model", str(still_model), "-o", str(tmp_path / "out"), "--batch-size",
                    "16", "--loss", "matryoshka", "--matryoshka-dims", "32,16", "--eval", str(pairs), "--save-steps", "3"])  # fmt: skip
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    assert "| metric | before | step 3 | step 6 | after | change |" in out and "| ndcg@10 |" in out
    assert "gte train: 7 steps" in err
    report = json.loads((tmp_path / "out" / "training.json").read_text())
    assert list(report["during"]) == ["3", "6"] and report["after"]["ndcg@10"] >= 0


def test_cli_errors_are_one_line(tmp_path, still_model, rows_file):
    done = run_cli(["--data", str(rows_file), "--model", str(still_model), "-o", str(tmp_path / "out"), "--batch-size", "500"])
    _, err = done.communicate(timeout=300)
    assert done.returncode == 2 and "fewer than one batch of 500: lower --batch-size" in err


# ------------------------------------------------------------------------------------ cross-encoders
@pytest.fixture(scope="module")
def still_reranker(tmp_path_factory) -> Path:
    """The tiny gte-multilingual-reranker-base, without dropout."""
    return without_dropout(build_reranker_model(tmp_path_factory.mktemp("still-reranker")))


def labelled_file(folder: Path, queries: int = 6, per_query: int = 3) -> tuple[Path, list[dict]]:
    texts = generate_corpus(list(MULTILINGUAL_WORDS), n=queries * (per_query + 1), seed=5)
    rows = [{"query": texts[q], "document": texts[queries + q * per_query + d], "label": [1.0, 0.0, 0.5][d % 3]}
            for q in range(queries) for d in range(per_query)]  # fmt: skip
    path = folder / "labelled.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path, rows


@pytest.mark.parametrize("loss", ["bce", "listnet"])
def test_reranker_losses_equal_sentence_transformers(tmp_path, still_reranker, loss):
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder import losses as st

    path, rows = labelled_file(tmp_path)
    task = RerankTask(still_reranker, path, Options(loss=loss), "cpu")
    value, _ = task.step(list(range(task.units)), World(), nullcontext(), 40)

    model = CrossEncoder(str(still_reranker), device="cpu")
    model.train()
    if loss == "bce":
        theirs = st.BinaryCrossEntropyLoss(model)([[r["query"] for r in rows], [r["document"] for r in rows]],
                                                  torch.tensor([r["label"] for r in rows]))  # fmt: skip
    else:
        groups = [rows[i : i + 3] for i in range(0, len(rows), 3)]
        theirs = st.ListNetLoss(model)([[g[0]["query"] for g in groups], [[r["document"] for r in g] for g in groups]],
                                       [torch.tensor([r["label"] for r in g]) for g in groups])  # fmt: skip
    theirs.backward()
    assert value == pytest.approx(theirs.item(), rel=1e-5)
    assert_same_gradients(gradients(task.model), gradients(model.model))


def test_pairs_from_labels_and_from_triplets(tmp_path):
    path, rows = labelled_file(tmp_path, queries=2, per_query=2)
    pairs = read_pairs(path)
    assert pairs.labels == [r["label"] for r in rows] and pairs.groups() == [[0, 1], [2, 3]]
    triplets = tmp_path / "triplets.jsonl"
    triplets.write_text(json.dumps({"anchor": "q", "positive": "p", "negative_1": "n1", "negative_2": "n2"}) + "\n")
    pairs = read_pairs(triplets)
    assert (pairs.queries, pairs.documents, pairs.labels) == (["q"] * 3, ["p", "n1", "n2"], [1.0, 0.0, 0.0])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "document": "d", "label": None}) + "\n")
    with pytest.raises(InputError, match="must hold a number"):
        read_pairs(bad)


@pytest.mark.parametrize("loss", ["bce", "listnet"])
def test_train_rerank_saves_a_cross_encoder_sentence_transformers_loads(tmp_path, reranker_model_dir, loss):
    from sentence_transformers import CrossEncoder

    path, rows = labelled_file(tmp_path)
    out = tmp_path / "tuned"
    result = gte.train_rerank(path, out, model=reranker_model_dir, loss=loss, batch_size=2, epochs=2, lr=1e-3,
                              show_progress=False)  # fmt: skip
    assert len(result.losses) == (18 if loss == "bce" else 6)
    assert weights(out).keys() == weights(reranker_model_dir).keys()
    pairs = [(r["query"], r["document"]) for r in rows[:4]]
    ours = gte.Reranker(str(out)).score(pairs[0][0], [d for _, d in pairs])
    theirs = CrossEncoder(str(out), device="cpu").predict([(pairs[0][0], d) for _, d in pairs], activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert not np.allclose(ours, gte.Reranker(str(reranker_model_dir)).score(pairs[0][0], [d for _, d in pairs]))


def test_cli_train_rerank(tmp_path, reranker_model_dir):
    path, _ = labelled_file(tmp_path)
    done = subprocess.run([*GTE, "train", "rerank", "--data", str(path), "--model", str(reranker_model_dir), "-o",
                           str(tmp_path / "out"), "--loss", "listnet", "--batch-size", "2", "--no-progress"],
                          env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "gte train: 3 steps" in done.stderr and (tmp_path / "out" / "model.safetensors").is_file()
    refused = subprocess.run([*GTE, "train", "rerank", "--data", str(path), "--model", str(reranker_model_dir), "-o",
                              str(tmp_path / "out"), "--loss", "mnrl"], env=ENV, capture_output=True, text=True)  # fmt: skip
    assert refused.returncode == 2 and "invalid choice: 'mnrl'" in refused.stderr


def test_train_rerank_refuses_an_embedding_evaluation(tmp_path, reranker_model_dir):
    path, _ = labelled_file(tmp_path)
    with pytest.raises(ValueError, match="--eval measures embedding models"):
        gte.train_rerank(path, tmp_path / "out", model=reranker_model_dir, eval=path)
