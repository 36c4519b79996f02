"""Helpers shared by the model tests: the golden fixtures and their checker, tiny configs, random batches."""

from __future__ import annotations

import importlib.util
import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from types import ModuleType

import torch

from gte import NewConfig

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"
TOOLS = GOLDEN.parent / "tools"


def import_file(path: Path) -> ModuleType:
    """Import a standalone script (check_golden.py, benchmarks/gpu_check.py) from its path."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@cache
def check_golden() -> ModuleType:
    return import_file(TOOLS / "check_golden.py")


@cache
def golden_manifest() -> dict:
    return check_golden().load_manifest(GOLDEN)


def golden_case(name: str) -> dict:
    """The manifest entry of the case whose name starts with `name` (e.g. "p01")."""
    return next(c for c in golden_manifest()["cases"] if c["name"].startswith(name))


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
