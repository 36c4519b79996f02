"""Shared fixtures: tiny official-layout checkpoints (built once per session) and a fake hub cache.

Tests never touch the network: HF_HUB_OFFLINE is set before anything imports huggingface_hub.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import fixtures  # noqa: E402

OFFICIAL_ID = fixtures.OFFICIAL_ID


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """gte-base-en-v1.5 in miniature: NewModel, WordPiece tokenizer, sentence-transformers files (CLS, max_seq_length 64)."""
    return fixtures.build_tiny_model(tmp_path_factory.mktemp("tiny-en"))


@pytest.fixture(scope="session")
def multilingual_model_dir(tmp_path_factory) -> Path:
    """NewModel with an XLM-R-style unigram tokenizer and type_vocab_size 1 (no sentence-transformers files)."""
    return fixtures.build_multilingual_model(tmp_path_factory.mktemp("tiny-multilingual"))


@pytest.fixture(scope="session")
def sparse_model_dir(tmp_path_factory) -> Path:
    """gte-multilingual-base in miniature: NewForTokenClassification with one label (token weights)."""
    return fixtures.build_sparse_model(tmp_path_factory.mktemp("tiny-sparse"))


@pytest.fixture(scope="session")
def reranker_model_dir(tmp_path_factory) -> Path:
    """gte-multilingual-reranker-base in miniature: NewForSequenceClassification with one label."""
    return fixtures.build_reranker_model(tmp_path_factory.mktemp("tiny-reranker"))


@pytest.fixture(scope="session")
def classifier_model_dir(tmp_path_factory) -> Path:
    """An NLI-style sequence classifier: three named labels (contradiction, neutral, entailment), token types."""
    return fixtures.build_classifier_model(tmp_path_factory.mktemp("tiny-classifier"))


@pytest.fixture(scope="session")
def fake_hub_cache(tmp_path_factory, tiny_model_dir) -> Path:
    """A huggingface_hub cache directory holding the tiny English model as Alibaba-NLP/gte-base-en-v1.5.

    Point the hub at it with `hub_cache_env` (in-process) or HF_HUB_CACHE=<path> (subprocesses).
    """
    return fixtures.build_hub_cache(tmp_path_factory.mktemp("hf-cache"), OFFICIAL_ID, tiny_model_dir)


@pytest.fixture(scope="session")
def two_revisions_hub_cache(tmp_path_factory, tiny_model_dir) -> Path:
    """A hub cache holding Alibaba-NLP/gte-base-en-v1.5 at two commits: fixtures.OLD_REVISION (the tiny English
    model, tagged v1) and main (the same model with other weights). Use it with fixtures.use_hub_cache."""
    cache = tmp_path_factory.mktemp("hf-cache-revisions")
    fixtures.build_hub_cache(cache, OFFICIAL_ID, tiny_model_dir, fixtures.OLD_REVISION, ref="v1")
    newer = fixtures.build_tiny_model(tmp_path_factory.mktemp("tiny-en-newer"), seed=5)
    return fixtures.build_hub_cache(cache, OFFICIAL_ID, newer)


@pytest.fixture
def hub_cache_env(fake_hub_cache, monkeypatch) -> Path:
    """Use the fake cache for this test: HF_HUB_CACHE in the environment and huggingface_hub's constants."""
    return fixtures.use_hub_cache(fake_hub_cache, monkeypatch)


@pytest.fixture(scope="session")
def bert_family(tmp_path_factory):
    """bert_family(architecture, pooling=None) -> a tiny checkpoint saved by transformers' own class (see
    fixtures.BERT_FAMILY), built on first use; `pooling` adds sentence-transformers files."""
    built: dict[tuple[str, str | None], Path] = {}

    def get(architecture: str, pooling: str | None = None) -> Path:
        if (architecture, pooling) not in built:
            out = tmp_path_factory.mktemp(f"{architecture}-{pooling}")
            built[architecture, pooling] = fixtures.build_bert_family_model(out, architecture, pooling=pooling)
        return built[architecture, pooling]

    return get


@pytest.fixture
def backends_used(monkeypatch) -> list[str]:
    """Names of the attention backends the models actually ran during the test, one per attention call site."""
    import gte.attention

    used, select = [], gte.attention.select

    def recording_select(*args, **kwargs):
        backend = select(*args, **kwargs)
        used.append(backend.name)
        return backend

    monkeypatch.setattr(gte.attention, "select", recording_select)
    return used


@pytest.fixture(scope="session")
def native_dir(tmp_path_factory):
    """native_dir(model_dir) -> a copy of that official-layout checkpoint in transformers' native `gte` layout
    (model_helpers.native_copy): the independent reference transformers' own Gte classes run. Made once per session."""
    from model_helpers import native_copy

    built: dict[Path, Path] = {}

    def get(model_dir: Path) -> Path:
        if model_dir not in built:
            built[model_dir] = native_copy(model_dir, tmp_path_factory.mktemp(f"native-{model_dir.name}") / "model")
        return built[model_dir]

    return get


@pytest.fixture(scope="session")
def st_dir(tmp_path_factory, tiny_model_dir):
    """st_dir(**options) -> the tiny English model saved by sentence-transformers itself with these modules and
    prompts (see fixtures.build_sentence_transformer), built once per set of options."""
    import json

    built: dict[str, Path] = {}

    def get(**options) -> Path:
        key = json.dumps(options, sort_keys=True)
        if key not in built:
            built[key] = fixtures.build_sentence_transformer(tmp_path_factory.mktemp("st"), tiny_model_dir, **options)
        return built[key]

    return get
