"""Activation functions by the names configs give them (`hidden_act`, `head_act`), as transformers' ACT2FN names them.

The names the supported families use map here to the torch modules that transformers' own classes for those names
compute with (the same kernels, so the same numbers); any other name is looked up in transformers' ACT2FN. Its
module is not imported for the common names because it costs 0.6 s at start-up (its hub-kernels integration imports
torch.distributed.tensor), more than a one-text `gte embed` spends computing.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

TORCH: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,  # transformers' GELUActivation: torch's erf GELU
    "gelu_pytorch_tanh": partial(nn.GELU, approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def activation(name: str) -> nn.Module:
    """A fresh module computing the activation `name` (a name `known` accepts)."""
    if name in TORCH:
        return TORCH[name]()
    from transformers.activations import ACT2FN

    return ACT2FN[name]


def known(name: object) -> bool:
    """Whether `name` names an activation (ours or transformers')."""
    if not isinstance(name, str):
        return False
    if name in TORCH:
        return True
    from transformers.activations import ACT2FN

    return name in ACT2FN


def names() -> list[str]:
    """Every name `known` accepts, for error messages."""
    from transformers.activations import ACT2FN

    return sorted({*TORCH, *ACT2FN})
