"""Interop: sentence-transformers and transformers load official-layout directories offline without
trust_remote_code once `gte` is imported, and they and Embedder give the vectors of an independent reference:
sentence-transformers on the checkpoint converted to transformers' native `gte` layout (transformers' own GteModel
under sentence-transformers' own pooling). Hub ids resolve from the Hugging Face cache (a fake one holding the tiny
model as Alibaba-NLP/gte-base-en-v1.5), at a revision when one is given."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import transformers
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

import fixtures
import gte
from fixtures import OFFICIAL_ID, OLD_REVISION
from gte.hub import ModelNotFoundError

pytestmark = pytest.mark.filterwarnings("ignore::gte.embed.TruncationWarning")  # "search " * 100 is cut, as ST cuts it
TEXTS = ["the quick brown fox jumps over the lazy dog", "", "paris", "北京 der hund le chat", "search " * 100]


def native_reference(native: Path) -> SentenceTransformer:
    """sentence-transformers on a native-layout copy (the native_dir fixture): transformers' GteModel, none of gte."""
    model = SentenceTransformer(str(native), device="cpu")
    assert type(model[0].model) is transformers.GteModel
    return model


def test_sentence_transformers_gives_the_same_vectors(tiny_model_dir, native_dir):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    assert isinstance(model[0].model, gte.NewModel)  # our class, found without trust_remote_code
    assert model.max_seq_length == 64
    expected = native_reference(native_dir(tiny_model_dir)).encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(model.encode(TEXTS, normalize_embeddings=True), expected, atol=1e-5)
    np.testing.assert_allclose(gte.Embedder(tiny_model_dir).encode(TEXTS), expected, atol=1e-5)


def test_token_vectors_and_similarity_are_sentence_transformers(tiny_model_dir, native_dir):
    """encode_all is ST's token_embeddings (no padding), Embedder.similarity is ST's cosine similarity."""
    reference = native_reference(native_dir(tiny_model_dir))
    expected = reference.encode(TEXTS, output_value="token_embeddings")
    embedder = gte.Embedder(tiny_model_dir)
    got = embedder.encode_all(TEXTS)
    assert [vectors.shape for vectors in got] == [tuple(e.shape) for e in expected]
    for vectors, e in zip(got, expected):
        np.testing.assert_allclose(vectors, e.numpy(), atol=1e-5)
    a, b = embedder.encode(TEXTS[:2], normalize=False), embedder.encode(TEXTS[2:], normalize=False)
    np.testing.assert_allclose(embedder.similarity(a, b), reference.similarity(a, b).numpy(), atol=1e-6)
    assert embedder.encode_all([]) == []


def test_sentence_transformers_on_the_sparse_checkpoint(sparse_model_dir, native_dir):
    model = SentenceTransformer(str(sparse_model_dir), device="cpu")  # modules: Transformer, Pooling, Normalize
    expected = native_reference(native_dir(sparse_model_dir)).encode(TEXTS)
    np.testing.assert_allclose(model.encode(TEXTS), expected, atol=1e-5)
    np.testing.assert_allclose(gte.Embedder(sparse_model_dir).encode(TEXTS), expected, atol=1e-5)


def test_sentence_transformers_default_mean_pooling(multilingual_model_dir, native_dir):
    """Without sentence-transformers files ST builds mean pooling; Embedder(pooling="mean") agrees."""
    model = SentenceTransformer(str(multilingual_model_dir), device="cpu")
    expected = native_reference(native_dir(multilingual_model_dir)).encode(TEXTS)
    np.testing.assert_allclose(model.encode(TEXTS), expected, atol=1e-5)
    embedder = gte.Embedder(multilingual_model_dir, pooling="mean", normalize=False, max_length=model.max_seq_length)
    np.testing.assert_allclose(embedder.encode(TEXTS), expected, atol=1e-5)


def test_transformers_auto_classes_use_gte(tiny_model_dir):
    """config.json carries the official auto_map; after `import gte` no remote code is needed."""
    assert isinstance(AutoModel.from_pretrained(tiny_model_dir), gte.NewModel)
    assert AutoTokenizer.from_pretrained(tiny_model_dir)("fox")["input_ids"][0] == 2  # [CLS]


def test_import_gte_registers_and_imports_the_rest_on_first_use(tiny_model_dir):
    """`import gte` is enough for AutoModel, and imports nothing that embedding does not need first: not the model
    classes (transformers' PreTrainedModel, torch._dynamo), attention kernels, the export, the server or pyarrow."""
    code = f"""import sys, gte
heavy = ["gte.modeling", "torch._dynamo", "transformers.modeling_utils", "gte.attention", "gte.export", "gte.job",
         "gte.server", "pyarrow", "fastapi", "uvicorn", "onnx", "ray"]
print([name for name in heavy if name in sys.modules])
from transformers import AutoModel
print(type(AutoModel.from_pretrained({str(tiny_model_dir)!r})).__name__, type(gte.Embedder).__name__)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.splitlines() == ["[]", "NewModel type"], done.stderr


def test_embedding_and_reranking_import_no_transformers_model_classes(tiny_model_dir, reranker_model_dir):
    """The engine builds the models the Embedder and Reranker run from plain torch modules: transformers'
    PreTrainedModel machinery (torch._dynamo, torch.distributed.tensor, its activations) is never imported, and
    the Auto classes still find gte's classes afterwards."""
    code = f"""import sys, gte
gte.Embedder({str(tiny_model_dir)!r}).encode(["the quick fox"])
gte.Reranker({str(reranker_model_dir)!r}).score("fox", ["the quick fox"])
heavy = ["gte.modeling", "transformers.modeling_utils", "transformers.activations", "torch._dynamo",
         "torch.distributed.tensor", "torch.fx.experimental.symbolic_shapes"]
print([name for name in heavy if name in sys.modules])
from transformers import AutoModel
print(type(AutoModel.from_pretrained({str(tiny_model_dir)!r})).__name__)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.splitlines() == ["[]", "NewModel"], done.stderr


def test_hub_id_from_the_cache(hub_cache_env, tiny_model_dir):
    expected = gte.Embedder(tiny_model_dir).encode(TEXTS)
    by_id = gte.Embedder(OFFICIAL_ID)
    assert by_id.model_name == OFFICIAL_ID and by_id.max_length == 64
    np.testing.assert_allclose(by_id.encode(TEXTS), expected, atol=1e-6)


def test_sentence_transformers_by_hub_id_from_the_cache(hub_cache_env, tiny_model_dir):
    model = SentenceTransformer(OFFICIAL_ID, device="cpu")
    expected = gte.Embedder(OFFICIAL_ID).encode(TEXTS)
    np.testing.assert_allclose(model.encode(TEXTS, normalize_embeddings=True), expected, atol=1e-5)


def test_uncached_hub_id_offline(hub_cache_env):
    with pytest.raises(ModelNotFoundError) as error:
        gte.Embedder("Alibaba-NLP/gte-large-en-v1.5")
    message = str(error.value)
    assert "not in the Hugging Face cache" in message
    assert "hf download Alibaba-NLP/gte-large-en-v1.5" in message and "/path/to/gte-large-en-v1.5" in message


# ------------------------------------------------------------------------------ revisions
def test_revision_pins_a_hub_commit(two_revisions_hub_cache, tiny_model_dir, monkeypatch):
    fixtures.use_hub_cache(two_revisions_hub_cache, monkeypatch)
    pinned = gte.Embedder(tiny_model_dir).encode(TEXTS)
    latest = gte.Embedder(OFFICIAL_ID)
    assert latest.model_name == OFFICIAL_ID and np.abs(latest.encode(TEXTS) - pinned).max() > 0.1
    for revision in (OLD_REVISION, "v1"):  # a commit hash, a tag
        embedder = gte.Embedder(OFFICIAL_ID, revision=revision)
        assert embedder.model_name == f"{OFFICIAL_ID}@{revision}"  # what a corpus job's manifest records
        np.testing.assert_allclose(embedder.encode(TEXTS), pinned, atol=1e-6)
    np.testing.assert_allclose(gte.Embedder(OFFICIAL_ID, revision="main").encode(TEXTS), latest.encode(TEXTS), atol=1e-6)


@pytest.mark.parametrize("revision", ["2" * 40, "v2"])
def test_a_revision_not_in_the_cache_offline(two_revisions_hub_cache, monkeypatch, revision):
    fixtures.use_hub_cache(two_revisions_hub_cache, monkeypatch)
    with pytest.raises(ModelNotFoundError) as error:
        gte.Embedder(OFFICIAL_ID, revision=revision)
    message = str(error.value)
    assert f"hub model {OFFICIAL_ID!r} at revision {revision!r} is not in the Hugging Face cache" in message
    assert f"`hf download {OFFICIAL_ID} --revision {revision}`" in message
    with pytest.raises(ModelNotFoundError, match="at revision"):  # the embedded model is one commit: not this one
        gte.Embedder(gte.models.DEFAULT_MODEL, revision=revision)


def test_a_revision_needs_a_hub_id(tiny_model_dir, reranker_model_dir):
    with pytest.raises(ValueError, match=f"revision 'main' pins a hub commit, and {tiny_model_dir} is a local directory"):
        gte.Embedder(tiny_model_dir, revision="main")
    with pytest.raises(ValueError, match="is a local directory: drop the revision, or pass a hub id"):
        gte.Reranker(reranker_model_dir, revision="main")
    with pytest.raises(ValueError, match="this model is loaded already"):
        gte.Embedder(gte.NewModel.from_pretrained(tiny_model_dir), revision="main")
