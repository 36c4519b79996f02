"""Weights packed once for oneDNN: the encoder layers' projections, for float32 inference on x86 CPUs.

nn.Linear on CPU passes its weight to a GEMM that lays it out for the kernel again on every call. For the
few rows of a query that copy is most of the work: at gte-base size a 24-token query took 77 ms, and 39 ms
with the weights laid out once, up front, as torch.compile's CPU backend does; batches of mixed texts ran
1.2x faster (benchmarks/prepack_bench.py, BENCHMARKS.md). Results differ from nn.Linear's by float32
rounding only.

`prepack(model)` swaps the layers' nn.Linear modules for `PackedLinear` in place. Only models that gte
loads itself are packed (never a model object a user passes in), and only where a probe shows that this
torch build runs the packed kernel correctly.
"""

from __future__ import annotations

import functools
import platform

import torch
from torch import nn

from .layers import NewAttention, NewGatedMLP, NewMLP

PACKED_LAYERS = (NewAttention, NewGatedMLP, NewMLP)  # their projections hold nearly all of a forward's FLOPs


class PackedLinear(nn.Module):
    """An inference-only nn.Linear whose weight is held in oneDNN's blocked layout (float32, CPU).

    `weight` and the state dict give the plain [out, in] weight back, so saving the model loses nothing."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)  # not a buffer: .to() skips it
        self.bias = linear.bias

    @property
    def weight(self) -> torch.Tensor:
        return self.packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        destination[prefix + "weight"] = self.weight
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def prepack(model: nn.Module) -> int:
    """Pack the float32 CPU projections of `model`'s encoder layers in place; how many were packed
    (0 where this machine or torch build cannot run the packed kernel)."""
    if not supported():
        return 0
    packed = 0
    for layer in model.modules():
        if not isinstance(layer, PACKED_LAYERS):
            continue
        for name, child in list(layer.named_children()):
            if type(child) is nn.Linear and child.weight.device.type == "cpu" and child.weight.dtype == torch.float32:
                setattr(layer, name, PackedLinear(child))
                packed += 1
    if packed:
        _own_the_rest(model)
    return packed


@torch.no_grad()
def _own_the_rest(model: nn.Module) -> None:
    """Copy the tensors left unpacked into the process's own memory. The loader maps the checkpoint file,
    and every tensor read from it keeps the whole mapping alive: its pages of the packed projections
    would stay in the resident set beside their packed copies (gte-base: RSS 1.33 GB instead of 0.98)."""
    for tensor in (*model.parameters(), *model.buffers()):
        tensor.data = tensor.data.clone()


@functools.cache
def supported() -> bool:
    """x86 (where it was measured), a torch with oneDNN, and the packed kernel giving nn.Linear's numbers."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return False
    generator = torch.Generator().manual_seed(0)  # the caller's random state stays untouched
    probe = nn.utils.skip_init(nn.Linear, 64, 48)
    with torch.no_grad():
        probe.weight.copy_(torch.randn(48, 64, generator=generator))
        probe.bias.copy_(torch.randn(48, generator=generator))
    x = torch.randn(5, 64, generator=generator)
    try:
        with torch.inference_mode():
            return torch.allclose(PackedLinear(probe)(x), probe(x), atol=1e-5)
    except (AttributeError, RuntimeError):  # an op this torch lacks, or a build without the kernel
        return False
