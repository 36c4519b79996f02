"""Tiny GTE checkpoints in the official layout, built from scratch (no network).

Each `build_*` function writes one checkpoint directory the way the official hub repos look:
config.json (model_type "new", an `auto_map` pointing at Alibaba-NLP/new-impl), model.safetensors
written by our classes' save_pretrained, tokenizer files (a tokenizer trained here with the
`tokenizers` library on generated text) and, for the embedding models, the sentence-transformers
files. conftest.py builds each one once per session; benchmarks can call them too.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from gte import NewConfig, NewForSequenceClassification, NewForTokenClassification, NewModel

ENGLISH_WORDS = (
    "the a an of to in on for with by from about model text query document search vector embedding "
    "retrieval rank score fast slow small large token sentence word language paris london berlin city "
    "river mountain music science history computer network learning deep neural data set cat dog house "
    "tree water light book read write run walk think know good new old first last long short quick brown "
    "fox jumps over lazy is are was were be been has have had do does did not and or but if then"
).split()
MULTILINGUAL_WORDS = ENGLISH_WORDS[:40] + (
    "der die das und ist nicht eine schnelle hund katze haus le la les et est une rapide chien chat maison "
    "el los las es una perro gato casa 北京 上海 模型 文本 检索 向量 東京 日本語 кошка собака дом"
).split()

OFFICIAL_ID = "Alibaba-NLP/gte-base-en-v1.5"  # the default model; the fake hub cache holds the tiny one under it
NEW_IMPL = "Alibaba-NLP/new-impl"
AUTO_MAP = {
    "AutoConfig": f"{NEW_IMPL}--configuration.NewConfig",
    "AutoModel": f"{NEW_IMPL}--modeling.NewModel",
    "AutoModelForMaskedLM": f"{NEW_IMPL}--modeling.NewForMaskedLM",
    "AutoModelForMultipleChoice": f"{NEW_IMPL}--modeling.NewForMultipleChoice",
    "AutoModelForQuestionAnswering": f"{NEW_IMPL}--modeling.NewForQuestionAnswering",
    "AutoModelForSequenceClassification": f"{NEW_IMPL}--modeling.NewForSequenceClassification",
    "AutoModelForTokenClassification": f"{NEW_IMPL}--modeling.NewForTokenClassification",
}
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
# Revision ids for the fake hub caches (any 40 hex digits).
FAKE_REVISION = "0123456789abcdef0123456789abcdef01234567"
OLD_REVISION = "1111111111111111111111111111111111111111"


def generate_corpus(words: list[str], n: int = 2000, seed: int = 0) -> list[str]:
    """`n` random sentences of 3-20 words."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 20))) for _ in range(n)]


def train_wordpiece(corpus: list[str], vocab_size: int = 500) -> Tokenizer:
    """A BERT-style uncased WordPiece tokenizer: [CLS] A [SEP] (pairs: [CLS] A [SEP] B [SEP])."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS, show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tok


def train_unigram(corpus: list[str], vocab_size: int = 400) -> Tokenizer:
    """An XLM-R-style sentencepiece (unigram, metaspace) tokenizer: <s> A </s> (pairs: <s> A </s></s> B </s>)."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=XLMR_SPECIALS, unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    return tok


def save_tokenizer(tok: Tokenizer, out: Path, *, multilingual: bool, max_length: int) -> None:
    """tokenizer.json + tokenizer_config.json naming the official tokenizer class."""
    if multilingual:
        names = dict(bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>", pad_token="<pad>",
                     unk_token="<unk>", mask_token="<mask>")  # fmt: skip
    else:
        names = dict(cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, **names)
    fast.save_pretrained(out)
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "XLMRobertaTokenizer" if multilingual else "BertTokenizer"
    path.write_text(json.dumps(config, indent=2))


# The size of every tiny checkpoint built here, ours and transformers' BERT-family ones alike.
TINY_SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, initializer_range=0.2)


def round_up(n: int, multiple: int = 64) -> int:
    return -(-n // multiple) * multiple


def tiny_config(tokenizer: Tokenizer, *, architecture: str, multilingual: bool, **overrides) -> NewConfig:
    """A 2-layer, hidden-32 config shaped like the official one it imitates."""
    base = dict(
        **TINY_SHAPE, vocab_size=round_up(tokenizer.get_vocab_size()), max_position_embeddings=128, architectures=[architecture]
    )
    if multilingual:  # like gte-multilingual-base / gte-multilingual-reranker-base
        base |= dict(type_vocab_size=1, pad_token_id=1, rope_theta=20000.0, rope_scaling={"type": "ntk", "factor": 8.0})
    else:  # like gte-base-en-v1.5
        base |= dict(type_vocab_size=0, pad_token_id=0, rope_theta=500000.0, rope_scaling={"type": "ntk", "factor": 2.0})
    return NewConfig(**(base | overrides))


def save_model(model: torch.nn.Module, out: Path) -> None:
    """save_pretrained, then give config.json the official `auto_map`."""
    model.save_pretrained(out)
    path = out / "config.json"
    config = json.loads(path.read_text())
    config["auto_map"] = AUTO_MAP
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def save_sentence_transformers_files(
    out: Path, *, max_seq_length: int, hidden_size: int, normalize: bool, pooling: str = "cls"
) -> None:
    """modules.json, sentence_bert_config.json and 1_Pooling/config.json (CLS or mean pooling)."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out / "2_Normalize").mkdir(exist_ok=True)
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}))
    pooling = {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))


def _english_tokenizer() -> Tokenizer:
    return train_wordpiece(generate_corpus(ENGLISH_WORDS, seed=1))


def _multilingual_tokenizer() -> Tokenizer:
    return train_unigram(generate_corpus(MULTILINGUAL_WORDS, seed=2))


def build_tiny_model(out: Path, *, seed: int = 0, max_seq_length: int = 64) -> Path:
    """Like gte-base-en-v1.5: NewModel, English WordPiece tokenizer, sentence-transformers files (CLS)."""
    tok = _english_tokenizer()
    torch.manual_seed(seed)
    model = NewModel(tiny_config(tok, architecture="NewModel", multilingual=False))
    save_model(model, out)
    save_tokenizer(tok, out, multilingual=False, max_length=model.config.max_position_embeddings)
    save_sentence_transformers_files(out, max_seq_length=max_seq_length, hidden_size=32, normalize=False)
    return out


def build_multilingual_model(out: Path, *, seed: int = 1) -> Path:
    """A NewModel with an XLM-R-style unigram tokenizer, type_vocab_size 1, no sentence-transformers files."""
    tok = _multilingual_tokenizer()
    torch.manual_seed(seed)
    model = NewModel(tiny_config(tok, architecture="NewModel", multilingual=True))
    save_model(model, out)
    save_tokenizer(tok, out, multilingual=True, max_length=model.config.max_position_embeddings)
    return out


def build_sparse_model(out: Path, *, seed: int = 2) -> Path:
    """Like gte-multilingual-base: NewForTokenClassification with one label (the token-weight head)."""
    tok = _multilingual_tokenizer()
    torch.manual_seed(seed)
    config = tiny_config(tok, architecture="NewForTokenClassification", multilingual=True, num_labels=1)
    model = NewForTokenClassification(config)
    with torch.no_grad():
        model.classifier.bias.fill_(1.0)  # most tokens get a positive weight
    save_model(model, out)
    save_tokenizer(tok, out, multilingual=True, max_length=config.max_position_embeddings)
    save_sentence_transformers_files(out, max_seq_length=config.max_position_embeddings, hidden_size=32, normalize=True)
    return out


def build_reranker_model(out: Path, *, seed: int = 3) -> Path:
    """Like gte-multilingual-reranker-base: NewForSequenceClassification with one label."""
    tok = _multilingual_tokenizer()
    torch.manual_seed(seed)
    config = tiny_config(tok, architecture="NewForSequenceClassification", multilingual=True, num_labels=1)
    model = NewForSequenceClassification(config)
    save_model(model, out)
    save_tokenizer(tok, out, multilingual=True, max_length=config.max_position_embeddings)
    return out


CLASSIFIER_LABELS = {0: "contradiction", 1: "neutral", 2: "entailment"}


def build_classifier_model(out: Path, *, seed: int = 5) -> Path:
    """An NLI-style NewForSequenceClassification: three named labels, token types for pairs, English tokenizer."""
    tok = _english_tokenizer()
    torch.manual_seed(seed)
    config = tiny_config(tok, architecture="NewForSequenceClassification", multilingual=False, type_vocab_size=2,
                         id2label=CLASSIFIER_LABELS, label2id={v: k for k, v in CLASSIFIER_LABELS.items()})  # fmt: skip
    save_model(NewForSequenceClassification(config), out)
    save_tokenizer(tok, out, multilingual=False, max_length=config.max_position_embeddings)
    return out


def build_hub_cache(cache: Path, repo_id: str, source: Path, revision: str = FAKE_REVISION, ref: str = "main") -> Path:
    """A huggingface_hub cache holding `source` as `repo_id` at `revision` (the branch or tag `ref` points at it);
    call it again with another revision to add one."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(revision)
    return cache


def use_hub_cache(cache: Path, monkeypatch) -> Path:
    """Point huggingface_hub at `cache`, offline, for one test: HF_HUB_CACHE in the environment and its constants."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


# ------------------------------------------------------------------------------ BERT-family checkpoints
BERT_FAMILY = {
    # name: (transformers class, multilingual tokenizer)
    "BertModel": ("BertModel", False),
    "BertForSequenceClassification": ("BertForSequenceClassification", False),
    "XLMRobertaModel": ("XLMRobertaModel", True),
    "XLMRobertaForSequenceClassification": ("XLMRobertaForSequenceClassification", True),
}


def bert_family_config(architecture: str, tokenizer: Tokenizer, **overrides):
    """A 2-layer, hidden-32 transformers BertConfig / XLMRobertaConfig (XLM-R: pad id 1, positions offset by 2)."""
    import transformers

    multilingual = BERT_FAMILY[architecture][1]
    base = dict(**TINY_SHAPE, vocab_size=tokenizer.get_vocab_size(), num_labels=1, architectures=[architecture])
    if multilingual:
        config = transformers.XLMRobertaConfig(**base, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1)
    else:
        config = transformers.BertConfig(**base, max_position_embeddings=64, type_vocab_size=2, pad_token_id=0)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def build_bert_family_model(out: Path, architecture: str, *, seed: int = 4, pooling: str | None = None) -> Path:
    """A tiny random checkpoint saved by transformers' own class, with its tokenizer; with `pooling`
    ("mean" or "cls"), also the sentence-transformers files (max_seq_length 48, Normalize)."""
    import transformers

    class_name, multilingual = BERT_FAMILY[architecture]
    tok = _multilingual_tokenizer() if multilingual else _english_tokenizer()
    torch.manual_seed(seed)
    model = getattr(transformers, class_name)(bert_family_config(architecture, tok))
    model.save_pretrained(out)
    save_tokenizer(tok, out, multilingual=multilingual, max_length=64)
    if pooling is not None:
        save_sentence_transformers_files(out, max_seq_length=48, hidden_size=32, normalize=True, pooling=pooling)
    return out


# ------------------------------------------------------------------------------ sentence-transformers directories
def build_sentence_transformer(
    out: Path,
    base: Path,
    *,
    pooling: str | tuple[str, ...] = "cls",
    include_prompt: bool = True,
    dense: tuple[tuple[int, str], ...] = (),
    normalize: bool = False,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    seed: int = 5,
) -> Path:
    """A directory saved by sentence-transformers itself: `base`'s Transformer, Pooling(pooling, include_prompt),
    one Dense per (out_features, torch.nn activation class name) with random weights, Normalize, prompts."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as st

    torch.manual_seed(seed)
    transformer = st.Transformer(str(base))
    width = transformer.get_embedding_dimension()
    modules = [transformer, st.Pooling(width, pooling_mode=pooling, include_prompt=include_prompt)]
    width *= 1 if isinstance(pooling, str) else len(pooling)
    for size, activation in dense:
        modules.append(st.Dense(width, size, activation_function=getattr(torch.nn, activation)()))
        width = size
    if normalize:
        modules.append(st.Normalize())
    model = SentenceTransformer(modules=modules, device="cpu", prompts=prompts, default_prompt_name=default_prompt_name)
    model.save(str(out))
    return out


# ------------------------------------------------------------------------------ nomic-bert checkpoints
NOMIC_PROMPTS = {"query": "search_query: ", "document": "search_document: ", "classification": "classification: ",
                 "clustering": "clustering: "}  # fmt: skip  # nomic-embed-text-v1.5's config_sentence_transformers.json
NOMIC_AUTO_MAP = {"AutoConfig": "nomic-ai/nomic-bert-2048--configuration_hf_nomic_bert.NomicBertConfig",
                  "AutoModel": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicBertModel"}  # fmt: skip


def nomic_bert_config(tokenizer: Tokenizer, architecture: str = "NomicBertModel", **overrides):
    """A 2-layer, hidden-32 transformers NomicBertConfig shaped like nomic-embed-text-v1.5 (SwiGLU, no biases, rope
    theta 1000, two token types, LayerNorm eps 1e-12); 64 positions, so longer inputs test RoPE past them."""
    import transformers

    return transformers.NomicBertConfig(**TINY_SHAPE, vocab_size=round_up(tokenizer.get_vocab_size()),
                                        num_labels=1, architectures=[architecture],
                                        **({"max_position_embeddings": 64} | overrides))  # fmt: skip


def remote_nomic_config(config) -> dict:
    """`config` (a transformers NomicBertConfig) as the hub checkpoints spell it for nomic's remote code (dynamic
    rope_parameters: rotary_scaling_factor past max_trained_positions)."""
    rope = config.rope_parameters
    return {
        "model_type": "nomic_bert", "architectures": config.architectures, "auto_map": NOMIC_AUTO_MAP,
        "activation_function": "swiglu", "n_embd": config.hidden_size, "n_head": config.num_attention_heads,
        "n_layer": config.num_hidden_layers, "n_inner": config.intermediate_size, "n_positions": 8192,
        "max_trained_positions": config.max_position_embeddings, "vocab_size": config.vocab_size,
        "pad_vocab_size_multiple": 64, "layer_norm_epsilon": config.layer_norm_eps, "type_vocab_size": 2,
        "rotary_emb_base": rope["rope_theta"], "rotary_emb_fraction": 1.0,
        "rotary_emb_interleaved": False, "rotary_emb_scale_base": None,
        "rotary_scaling_factor": rope["factor"] if rope["rope_type"] == "dynamic" else None,
        "qkv_proj_bias": False, "mlp_fc1_bias": False, "mlp_fc2_bias": False, "prenorm": False, "parallel_block": False,
        "parallel_block_tied_norm": False, "causal": False, "use_rms_norm": False, "fused_bias_fc": True,
        "fused_dropout_add_ln": True, "use_flash_attn": True, "dense_seq_output": True, "embd_pdrop": 0.0,
        "resid_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": config.initializer_range,
    }  # fmt: skip


def build_nomic_bert_model(out: Path, architecture: str = "NomicBertModel", *, remote: bool = False, seed: int = 6,
                           **overrides) -> Path:  # fmt: skip
    """A tiny random checkpoint saved by transformers' own NomicBert class (the hub's weight names), with the English
    tokenizer; `remote`: its config.json in the hub's spelling (nomic's remote code) instead of transformers'."""
    import transformers

    tok = _english_tokenizer()
    torch.manual_seed(seed)
    config = nomic_bert_config(tok, architecture, **overrides)
    getattr(transformers, architecture)(config).save_pretrained(out)
    save_tokenizer(tok, out, multilingual=False, max_length=128)
    if remote:
        (out / "config.json").write_text(json.dumps(remote_nomic_config(config), indent=2))
    return out


# ------------------------------------------------------------------------------ ModernBERT checkpoints
def modernbert_config(tokenizer: Tokenizer, architecture: str = "ModernBertModel", **overrides):
    """A 4-layer, hidden-32 transformers ModernBertConfig in ModernBERT-base's family: global attention every 3rd
    layer (0 and 3), the others local with local_attention 8 (a query sees 4 positions each way), global / local
    RoPE bases 160000 / 10000, LayerNorms without biases; 128 positions."""
    import transformers

    shape = TINY_SHAPE | {"num_hidden_layers": 4}
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    return transformers.ModernBertConfig(**shape, vocab_size=round_up(tokenizer.get_vocab_size()),
                                         max_position_embeddings=128, local_attention=8, global_attn_every_n_layers=3,
                                         pad_token_id=tokenizer.token_to_id("[PAD]"), bos_token_id=cls, cls_token_id=cls,
                                         eos_token_id=sep, sep_token_id=sep, architectures=[architecture],
                                         **({"num_labels": 1} | overrides))  # fmt: skip


def build_modernbert_model(out: Path, architecture: str = "ModernBertModel", *, seed: int = 7, **overrides) -> Path:
    """A tiny random checkpoint saved by transformers' own ModernBert class, with the English tokenizer; every
    parameter (norms and biases too) moved off its initial value, so that each one's place is tested."""
    import transformers

    tok = _english_tokenizer()
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(modernbert_config(tok, architecture, **overrides))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    model.save_pretrained(out)
    save_tokenizer(tok, out, multilingual=False, max_length=128)
    return out
