"""The encoder layers' projections swapped, once, for CPU modules that hold their weights ready for the kernel:
float32 or bfloat16 weights packed for oneDNN (`prepack`), or int8 weights for dynamic quantization (`quantize`).

nn.Linear on CPU passes its weight to a GEMM that lays it out for the kernel again on every call. For the
few rows of a query that copy is most of the work: at gte-base size a 24-token query took 77 ms, and 39 ms
with the weights laid out once, up front, as torch.compile's CPU backend does; batches of mixed texts ran
1.2x faster (benchmarks/prepack_bench.py, BENCHMARKS.md). bfloat16 weights are packed too where oneDNN has
bfloat16 kernels for this CPU. Results differ from nn.Linear's by rounding only. Only models that gte loads
itself are packed (never a model object a user passes in), and only where a probe shows that this torch build
runs the packed kernel correctly.

int8 (`Embedder(dtype="int8")`) replaces the same projections with `Int8Linear` instead: its weights are int8
from the start, packed by torch's quantized engine, so there is nothing left for `prepack` to do.
"""

from __future__ import annotations

import functools
import platform
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .layers import NewAttention, NewGatedMLP, NewMLP

PACKED_LAYERS = (NewAttention, NewGatedMLP, NewMLP)  # their projections hold nearly all of a forward's FLOPs
# CPU flags with which x86 int8 kernels add 8-bit products straight into 32 bits (VNNI, AMX). Without them they
# add pairs of products in 16 bits, which full 8-bit activations can overflow: activations then get 7 bits, as
# torch's own dynamic quantization always does. 8 bits measured on all-MiniLM-L6-v2 (probe texts): lowest cosine
# to float32 0.993 instead of 0.974.
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


class PackedLinear(nn.Module):
    """An inference-only nn.Linear whose weight is held in oneDNN's blocked layout (float32 or bfloat16, CPU).

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


class Int8Linear(nn.Module):
    """An inference-only nn.Linear with int8 weights (symmetric, one scale per output row) whose float32 input is
    quantized to int8 on every call, with the scale of that call's values (dynamic quantization); float32 out,
    CPU. The weights live in torch's quantized engine (fbgemm or oneDNN): the module has no parameters, and its
    state dict no weight."""

    def __init__(self, linear: nn.Linear | PackedLinear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127  # [out]
        zeros = torch.zeros(len(scales), dtype=torch.long)
        with warnings.catch_warnings():  # torch 2.13 deprecates quantized tensors; its int8 kernels still take them
            warnings.filterwarnings("ignore", "torch.quantize_per_tensor, torch.quantize_per_channel", UserWarning)
            qweight = torch.quantize_per_channel(weight, scales.double(), zeros, 0, torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.packed = torch.ops.quantized.linear_prepack(qweight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        return torch.ops.quantized.linear_dynamic(x, self.packed, reduce_range())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights per channel"


def prepack(model: nn.Module) -> int:
    """Pack the float32 and bfloat16 CPU projections of `model`'s encoder layers in place; how many were packed
    (0 where this machine or torch build cannot run the packed kernel for their type)."""

    def pack(child: nn.Module) -> nn.Module | None:
        if type(child) is nn.Linear and child.weight.device.type == "cpu" and supported(child.weight.dtype):
            return PackedLinear(child)
        return None

    return _swap_projections(model, pack)


def quantize(model: nn.Module) -> int:
    """Make the projections of `model`'s encoder layers (on the CPU, nn.Linear or packed) `Int8Linear` in place;
    how many were quantized. ValueError where this torch build has no int8 kernels."""
    if not int8_supported():
        raise ValueError(f"this torch build has no working int8 kernels (quantized engine "
                         f"{torch.backends.quantized.engine!r}): use dtype float32 or bfloat16")  # fmt: skip

    def int8(child: nn.Module) -> nn.Module | None:
        if isinstance(child, (nn.Linear, PackedLinear)) and child.weight.device.type == "cpu":
            return Int8Linear(child)
        return None

    return _swap_projections(model, int8)


def _swap_projections(model: nn.Module, swap: Callable[[nn.Module], nn.Module | None]) -> int:
    """Replace each child of the encoder layers for which `swap` gives a module; how many were replaced."""
    swapped = 0
    for layer in model.modules():
        if not isinstance(layer, PACKED_LAYERS):
            continue
        for name, child in list(layer.named_children()):
            if (replacement := swap(child)) is not None:
                setattr(layer, name, replacement)
                swapped += 1
    if swapped:
        _own_the_rest(model)
    return swapped


@torch.no_grad()
def _own_the_rest(model: nn.Module) -> None:
    """Copy the tensors left unswapped into the process's own memory. The loader maps the checkpoint file,
    and every tensor read from it keeps the whole mapping alive: its pages of the swapped projections
    would stay in the resident set beside their packed copies (gte-base: RSS 1.33 GB instead of 0.98)."""
    for tensor in (*model.parameters(), *model.buffers()):
        tensor.data = tensor.data.clone()


@functools.cache
def supported(dtype: torch.dtype) -> bool:
    """x86 (where it was measured), a torch with oneDNN (with bfloat16 kernels for this CPU, for bfloat16), and
    the packed kernel giving nn.Linear's numbers in `dtype`."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported() and _probe(PackedLinear, tolerance=1e-2, dtype=dtype)
    return dtype == torch.float32 and _probe(PackedLinear, tolerance=1e-5)


@functools.cache
def reduce_range() -> bool:
    """Whether activations get 7 bits, not 8: on CPUs without VNNI (and where the CPU flags cannot be read)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return True
    return not flags & VNNI_FLAGS


@functools.cache
def int8_supported() -> bool:
    """A quantized engine in this torch build, and its int8 kernel close to nn.Linear's numbers."""
    return torch.backends.quantized.engine != "none" and _probe(Int8Linear, tolerance=0.05)


def _probe(make: Callable[[nn.Linear], nn.Module], tolerance: float, dtype: torch.dtype = torch.float32) -> bool:
    """Whether `make(linear)` runs and gives a small random nn.Linear's outputs in `dtype`, off by at most
    `tolerance` times their largest magnitude."""
    generator = torch.Generator().manual_seed(0)  # the caller's random state stays untouched
    with torch.random.fork_rng(devices=[]):
        probe = nn.Linear(64, 48, dtype=dtype)  # (skip_init would build it on "meta": torch.fx's import, 0.3 s)
    with torch.no_grad():
        probe.weight.copy_(torch.randn(48, 64, generator=generator))
        probe.bias.copy_(torch.randn(48, generator=generator))
    x = torch.randn(5, 64, generator=generator, dtype=dtype)
    try:
        with torch.inference_mode():
            expected = probe(x)
            return bool((make(probe)(x) - expected).abs().max() <= tolerance * expected.abs().max())
    except (AttributeError, RuntimeError):  # an op this torch lacks, or a build without the kernel
        return False
