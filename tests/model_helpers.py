"""Helpers shared by the model tests: the golden fixtures and how they are checked, tiny configs, random batches.

The golden fixtures (tests/golden/, see its README.md) are the original implementation's float64 outputs on tiny
checkpoints. A case is loaded through the transformers Auto classes after `import gte`, as a user loads it, run with
the manifest's call keywords, and compared on valid positions with the manifest's absolute tolerance.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import shutil
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from types import ModuleType

import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

import gte
from gte import NewConfig
from gte.convert import native_config, native_state_dict, read_weights, write_back

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"
AUTO_CLASSES = {
    "NewModel": "AutoModel",
    "NewForMaskedLM": "AutoModelForMaskedLM",
    "NewForSequenceClassification": "AutoModelForSequenceClassification",
    "NewForTokenClassification": "AutoModelForTokenClassification",
    "NewForMultipleChoice": "AutoModelForMultipleChoice",
    "NewForQuestionAnswering": "AutoModelForQuestionAnswering",
}


def import_file(path: Path) -> ModuleType:
    """Import a standalone script (benchmarks/gpu_check.py) from its path."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@cache
def golden_manifest(fixtures: Path = GOLDEN) -> dict:
    """manifest.json of a fixtures directory; each case also gets its directory under "dir"."""
    manifest = json.loads((fixtures / "manifest.json").read_text())
    for case in manifest["cases"]:
        case["dir"] = fixtures / case["name"]
    return manifest


def golden_case(name: str) -> dict:
    """The manifest entry of the case whose name starts with `name` (e.g. "p01")."""
    return next(c for c in golden_manifest()["cases"] if c["name"].startswith(name))


def golden_tensors(case: dict, kind: str) -> dict[str, torch.Tensor]:
    """The case's "inputs" (int64) or "expected" (float64) tensors."""
    return load_file(case["dir"] / f"{kind}.safetensors")


def load_golden_model(case: dict, dtype: torch.dtype = torch.float32, **kwargs) -> torch.nn.Module:
    """The case's checkpoint loaded as a user loads it: the transformers Auto class of the case's class, after
    `import gte`, with the case's init keywords (add_pooling_layer); gte's own class, in eval mode."""
    auto = getattr(transformers, AUTO_CLASSES[case["class"]])
    model = auto.from_pretrained(case["dir"], dtype=dtype, **case["init_kwargs"], **kwargs)
    assert type(model) is getattr(gte, case["class"]), f"{case['name']} loaded as {type(model)}, not gte's class"
    return model.eval()


def run_golden(model: torch.nn.Module, case: dict, device: str = "cpu", **call_kwargs) -> dict[str, torch.Tensor]:
    """The model's outputs on the case's inputs (the manifest's call keywords plus these), float64 on the CPU, under
    the manifest's output names. A head's base-model outputs (last_hidden_state, pooler_output) come from its base model."""
    inputs = {k: v.to(device) for k, v in golden_tensors(case, "inputs").items()}
    inner = []
    hook = model.base_model.register_forward_hook(lambda module, args, out: inner.append(out))
    try:
        with torch.no_grad():
            out = model(**inputs, **case["call_kwargs"] | call_kwargs)
    finally:
        hook.remove()
    got = {}
    for key in case["outputs"]:
        value = out.get(key)
        if value is None and inner:
            value = inner[0].get(key)
        if isinstance(value, tuple):  # hidden_states: one tensor per layer
            value = torch.stack(value)
        if value is not None:
            got[key] = value.to("cpu", torch.float64)
    return got


def valid_tokens(case: dict, key: str = "input_ids") -> list[list[int]]:
    """Each input row's `key` (input_ids, token_type_ids) at its valid positions: what the tokenizer-free entry
    points (Embedder.encode_tokens, Reranker.score_tokens) take."""
    inputs = golden_tensors(case, "inputs")
    return [row[mask.bool()].tolist() for row, mask in zip(inputs[key], inputs["attention_mask"])]


def golden_tokenizer(case: dict) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the case's vocabulary (id i is the token "w<i>"), for the Embedder and Reranker,
    which name tokens and need a tokenizer to load a directory. The first row's first and last token ids are its
    special tokens [CLS] and [SEP], so they occur in the inputs (and sparse weights must drop them)."""
    vocab_size = json.loads((case["dir"] / "config.json").read_text())["vocab_size"]
    first_row = valid_tokens(case)[0]
    specials = {first_row[0]: "[CLS]", first_row[-1]: "[SEP]"}
    vocab = {specials.get(i, f"w{i}"): i for i in range(vocab_size)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab)), cls_token="[CLS]", sep_token="[SEP]")


def one_label_copy(case: dict, label: int, out: Path) -> Path:
    """A copy of a classification case's checkpoint whose classifier keeps only output `label`: its logits are the
    case's expected logits[..., label] (a reranker and a token-weight head have one label)."""
    shutil.copytree(case["dir"], out)
    weights = load_file(out / "model.safetensors")
    for name in ("classifier.weight", "classifier.bias"):
        weights[name] = weights[name][label : label + 1].clone()
    save_file(weights, out / "model.safetensors", {"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config |= {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
    (out / "config.json").write_text(json.dumps(config))
    return out


def zero_padding(case: dict, key: str, value: torch.Tensor) -> torch.Tensor:
    """`value` of output `key` with its padded positions (the manifest's mask_axes: row and sequence) set to 0."""
    axes = case["outputs"][key]["mask_axes"]
    if not axes:  # a per-sequence output
        return value
    mask = golden_tensors(case, "inputs")["attention_mask"]
    valid = mask.reshape(-1, mask.shape[-1]).bool()  # multiple choice: rows are batch * choices
    shape = [1] * value.dim()
    shape[axes[0]], shape[axes[1]] = valid.shape
    return torch.where(valid.reshape(shape), value, 0.0)


def golden_diffs(case: dict, got: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max abs diff of every output in the manifest against the expected values, on valid positions (NaN: inf)."""
    expected = golden_tensors(case, "expected")
    missing = set(case["outputs"]) - set(got)
    assert not missing, f"{case['name']}: the model gave no {sorted(missing)}"
    shapes = {key: (tuple(got[key].shape), tuple(expected[key].shape)) for key in case["outputs"]}
    assert all(a == b for a, b in shapes.values()), f"{case['name']}: shapes (got, expected) {shapes}"
    diffs = {key: (zero_padding(case, key, got[key]) - expected[key]).abs().nan_to_num(math.inf) for key in case["outputs"]}
    return {key: float(diff.max()) for key, diff in diffs.items()}


def save_native(config: NewConfig, state_dict: dict[str, torch.Tensor], out: Path) -> Path:
    """Convert to transformers' native `gte` layout with gte.convert and write config.json + model.safetensors."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(native_config(config), indent=2))
    save_file({k: v.contiguous() for k, v in native_state_dict(state_dict, config).items()}, out / "model.safetensors")
    return out


def convert_case(case: dict, out: Path) -> Path:
    """The golden case's checkpoint in the native `gte` layout."""
    return save_native(NewConfig.from_pretrained(case["dir"]), load_file(case["dir"] / "model.safetensors"), out)


def native_copy(model_dir: Path, out: Path) -> Path:
    """A copy of an official-layout checkpoint directory (tokenizer and sentence-transformers files too) with its
    config and weights in the native `gte` layout: transformers' own Gte classes, and sentence-transformers through
    them, load it without any of gte's modeling code, so it is a reference independent of gte's forward pass (the
    conversion itself is checked against the golden fixtures in test_convert)."""
    shutil.copytree(model_dir, out)
    return save_native(NewConfig.from_pretrained(model_dir), load_file(model_dir / "model.safetensors"), out)


def assert_writes_back_unchanged(path: Path, model: torch.nn.Module) -> None:
    """A loaded, unchanged model's parameters written back into the checkpoint's own names and layout
    (gte.convert.write_back) are the stored tensors, exactly."""
    stored = read_weights(str(path), {})
    written = write_back(str(path), model.state_dict())
    assert written.keys() == stored.keys()
    for name, tensor in stored.items():
        torch.testing.assert_close(written[name], tensor, rtol=0, atol=0, msg=name)


def small_config(**overrides) -> NewConfig:
    """Two layers, hidden 32, no dropout; RoPE table of 16 positions (so longer inputs grow it)."""
    base = dict(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        type_vocab_size=2,
        hidden_dropout_prob=0.0,
        initializer_range=0.2,
    )
    return NewConfig(**(base | overrides))


def random_batch(config: NewConfig, lengths: list[int], seqlen: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask (/ token_type_ids) for rows of these lengths; pad id 0."""
    generator = torch.Generator().manual_seed(seed)
    seqlen = seqlen or max(lengths)
    mask = (torch.arange(seqlen) < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(1, config.vocab_size, (len(lengths), seqlen), generator=generator) * mask
    batch = {"input_ids": ids, "attention_mask": mask}
    if config.type_vocab_size > 1:
        batch["token_type_ids"] = torch.randint(0, config.type_vocab_size, ids.shape, generator=generator) * mask
    return batch


class _Collect(logging.Handler):
    def __init__(self, into: list[str]):
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(f"{record.name}: {record.getMessage()}")


@contextmanager
def collected_warnings() -> Iterator[list[str]]:
    """Everything logged at WARNING or above (transformers' logger does not propagate) plus Python warnings."""
    found: list[str] = []
    handler = _Collect(found)
    loggers = [logging.getLogger("transformers"), logging.getLogger()]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield found
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        found.extend(f"{w.category.__name__}: {w.message}" for w in caught)
