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
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from types import ModuleType

import torch
import transformers
from safetensors.torch import load_file

import gte
from gte import NewConfig

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
