"""int8 on the CPU, and how close it stays to float32, measured on the model as it loads.

`Embedder(dtype="int8")` / `Reranker(dtype="int8")` load the checkpoint in float32, embed the few fixed
PROBE_TEXTS, quantize the encoder layers' projections (`prepack.quantize`: int8 weights, activations quantized
on each call), embed the texts again and keep the cosines of the two sets of vectors (`Int8Fidelity`). The
embeddings, the pooler, the norms and the heads stay float32. A lowest cosine under MIN_COSINE warns
(`Int8Warning`): the int8 model's vectors then differ from float32's enough to change rankings.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .prepack import quantize

INT8 = "int8"  # the dtype name that asks for it
MIN_COSINE = 0.999  # the bar bfloat16 meets (BENCHMARKS.md)
# Short texts of several kinds (questions, facts, code words, numbers, other languages): one small batch each way.
PROBE_TEXTS = (
    "what is the capital of China?",
    "how to implement quick sort in python?",
    "The giant panda is a bear native to south central China.",
    "Beijing is the capital of the People's Republic of China.",
    "Quicksort picks a pivot and partitions the array around it, then sorts each part.",
    "Revenue grew 12% to $4.3M in Q1 2024, up from $3.8M a year earlier.",
    "le chat dort sur le canapé pendant que la pluie tombe",
    "Wie spät ist es in Berlin?",
)
PROBE_QUERY = "what is a panda?"  # a reranker's probe: (PROBE_QUERY, text) pairs


class Int8Warning(UserWarning):
    """The int8 model's vectors are further from float32's than MIN_COSINE on the probe texts."""


@dataclass(frozen=True)
class Int8Fidelity:
    """Cosines between the int8 model's and the float32 model's vectors for the same probe texts (an Embedder's
    embeddings; a Reranker's pooled pair vectors, what its classifier scores)."""

    mean_cosine: float
    min_cosine: float
    probes: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def quantize_measured(model: nn.Module, vectors: Callable[[], torch.Tensor], name: str) -> Int8Fidelity:
    """Quantize `model` in place, measuring `vectors()` ([n, d], the probe's) before and after; warn when the
    lowest cosine is under MIN_COSINE."""
    before = vectors()
    quantize(model)
    cosines = F.cosine_similarity(vectors().double(), before.double(), dim=-1)  # [n]
    fidelity = Int8Fidelity(float(cosines.mean()), float(cosines.min()), len(cosines))
    if fidelity.min_cosine < MIN_COSINE:
        warnings.warn(Int8Warning(
            f"{name} in int8 stays close to float32 only down to cosine {fidelity.min_cosine:.4f} on gte's probe texts "
            f"(under {MIN_COSINE}): its results can rank differently from float32's; where that matters, use dtype "
            "float32, or bfloat16 on a CPU with AVX512-BF16"
        ), stacklevel=3)  # fmt: skip
    return fidelity


def probe_tokens(
    tokenizer: Any, vocab_size: int, max_length: int, *, pairs: bool = False, type_ids: bool = False
) -> tuple[list[list[int]], list[list[int]] | None]:
    """Token ids of PROBE_TEXTS (after PROBE_QUERY as pairs when `pairs`; token type ids too when `type_ids`), cut
    to max_length. Without a tokenizer: fixed pseudo-random ids of the vocabulary, 6 to 27 tokens long."""
    if tokenizer is None:
        generator = torch.Generator().manual_seed(0)
        lengths = [min(6 + 3 * i, max_length) for i in range(len(PROBE_TEXTS))]
        return [torch.randint(vocab_size, (n,), generator=generator).tolist() for n in lengths], None
    texts = list(PROBE_TEXTS)
    first, second = ([PROBE_QUERY] * len(texts), texts) if pairs else (texts, None)
    encoded = tokenizer(first, second, truncation=True, max_length=max_length, return_attention_mask=False,
                        return_token_type_ids=type_ids)  # fmt: skip
    return encoded["input_ids"], encoded["token_type_ids"] if type_ids else None


def dtype_name(dtype: torch.dtype, fidelity: Int8Fidelity | None) -> str:
    """"int8" for a model quantized here, else the dtype's name ("float32", "bfloat16", ...)."""
    return INT8 if fidelity is not None else str(dtype).removeprefix("torch.")
