"""ONNX export: `gte export onnx MODEL OUT_DIR` and `gte.export_onnx`.

The graph is the model's own padded forward (`unpad_inputs=False`: padding stays in the batch and is
masked as a key), traced by torch.export and written by torch.onnx's exporter; the model code knows
when it is being exported (value checks skipped, RoPE angles computed from the positions so any
length works, no CPU row chunking). The output directory gets the layout that fastembed, TEI's ORT
backend, transformers.js and optimum read:

    OUT_DIR/onnx/model.onnx             inputs  input_ids, attention_mask [batch, sequence] (int64)
                                                (+ token_type_ids where the model has several types)
                                        outputs last_hidden_state [batch, sequence, hidden] (zeros at padding)
                                                + the head's: logits, token_weights, start/end_logits
    OUT_DIR/onnx/model_quantized.onnx   with quantize="int8" (dynamic int8 weights, ONNX Runtime)
    OUT_DIR/config.json, tokenizer and sentence-transformers files, copied from the checkpoint

Every export is checked: ONNX Runtime against our PyTorch path on a fixed text set.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import hub, modeling, st_files
from .modeling import NewModel, NewPreTrainedModel

MIN_OPSET = 18  # torch.onnx's exporter writes opset 18 and newer
# From opset 23 SDPA becomes ONNX's Attention operator, which ONNX Runtime 1.32 refuses with a key mask.
MAX_OPSET = 22
DEFAULT_OPSET = 20
# SDPA on the padded grid with a key mask: in ONNX Runtime 1.5x (batches) to 2.7x (one query) faster than eager.
ATTENTION = "sdpa"
QUANTIZATIONS = ("int8",)
TOLERANCE = 1e-4  # float32 max abs diff on last_hidden_state, ONNX Runtime vs PyTorch
MIN_INT8_COSINE = 0.99
COPIED_FILES = ("*.json", "*.txt", "*.model")  # config, tokenizer, sentence-transformers files
SKIPPED_FILES = ("*.safetensors.index.json",)
REQUIRED_MODULES = ("onnx", "onnxscript", "onnxruntime")
EXTRA_HINT = "pip install '.[onnx]' (from PyPI: pip install 'gte[onnx]')"
CHECK_TEXTS = (
    "what is the capital of China?",
    "how to implement quick sort in python?",
    "Beijing is the capital of the People's Republic of China and its political and cultural centre.",
    "The giant panda is a bear native to south central China.",
    "Quicksort picks a pivot, partitions the other elements around it and sorts both parts recursively.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le chat dort sur le canapé pendant que la pluie tombe.",
    "北京是中华人民共和国的首都。",
    "ok",
    "A longer document about search: embeddings map each text to a vector, similar texts land close to each "
    "other, and a vector index returns the nearest neighbours of a query in milliseconds, even over millions "
    "of documents, which is why dense retrieval became the first stage of most modern search systems.",
)  # fmt: skip


class ExportError(ValueError):
    """The export cannot run as asked (missing packages, opset, output directory)."""


@dataclass(frozen=True)
class ExportReport:
    out_dir: Path
    model_file: Path  # OUT_DIR/onnx/model.onnx
    inputs: list[str]
    outputs: list[str]
    opset: int
    max_abs_diff: float  # ONNX Runtime vs PyTorch, float32 last_hidden_state at valid positions, CHECK_TEXTS
    quantized_file: Path | None = None
    int8_cosine: float | None = None  # lowest cosine of int8 to float32 sentence vectors over CHECK_TEXTS


class OnnxGraph(nn.Module):
    """The model's padded forward with the ONNX inputs and outputs (a view of the model, no copy of its code)."""

    def __init__(self, model: NewPreTrainedModel):
        super().__init__()
        self.model = model
        self.output_names = ["last_hidden_state", *_head_outputs(model)]

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, L] (multiple choice: [B, C, L])
        attention_mask: torch.Tensor,  # like input_ids
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        base = isinstance(self.model, NewModel)
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            unpad_inputs=False, output_hidden_states=not base, return_dict=True,
        )  # fmt: skip
        valid = attention_mask.unsqueeze(-1).to(torch.float32)  # [..., L, 1]
        hidden = out.last_hidden_state if base else out.hidden_states[-1]
        hidden = hidden.view(*input_ids.shape, -1) * valid  # [..., L, H], zeros at padding
        if self.output_names[1:] == ["token_weights"]:
            return hidden, torch.relu(out.logits).squeeze(-1) * valid.squeeze(-1)  # [B, L]
        return hidden, *(getattr(out, name) for name in self.output_names[1:])

    def feed(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A [B, L] batch shaped for this graph's inputs (multiple choice: one choice each, [B, 1, L])."""
        if isinstance(self.model, modeling.NewForMultipleChoice):
            return {k: v[:, None] for k, v in batch.items()}
        return batch


def _head_outputs(model: NewPreTrainedModel) -> list[str]:
    if isinstance(model, NewModel):
        return []
    if isinstance(model, modeling.NewForQuestionAnswering):
        return ["start_logits", "end_logits"]
    if isinstance(model, modeling.NewForTokenClassification) and model.config.num_labels == 1:
        return ["token_weights"]  # gte-multilingual-base's sparse head: relu(logit) per token
    return ["logits"]


def export_onnx(
    model: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    force: bool = False,
    revision: str | None = None,
) -> ExportReport:
    """Export a checkpoint (directory, or hub id at `revision`; any head) to OUT_DIR/onnx/model.onnx plus its
    config, tokenizer and sentence-transformers files, and check it against PyTorch with ONNX Runtime.

    quantize="int8" also writes onnx/model_quantized.onnx and reports its cosine to float32 (a warning
    when under 0.99). An existing non-empty OUT_DIR needs force=True (our files are replaced, others kept).
    """
    _check_requirements()
    _check_options(opset, quantize)
    out = _check_out_dir(Path(out_dir), force)
    path = hub.resolve(model, revision)  # OUT_DIR is made once the model is found
    loaded = _load(path)
    tokenizer = _tokenizer(path)
    graph = OnnxGraph(loaded).eval()
    model_file = _make_dir(out / "onnx") / "model.onnx"
    inputs = _write(graph, model_file, opset)
    _copy_files(path, out, tokenizer)

    batch = check_batch(loaded.config, tokenizer)
    fp32 = run_onnx(model_file, graph.feed(batch))
    diff = _max_abs_diff(fp32["last_hidden_state"], _torch_hidden(loaded, batch), batch["attention_mask"])
    if diff > TOLERANCE:
        warnings.warn(f"ONNX Runtime differs from PyTorch by {diff:.2e} (more than {TOLERANCE:g}) on {model_file}", stacklevel=2)
    report = ExportReport(out, model_file, inputs, graph.output_names, opset, diff)
    if quantize is None:
        return report
    quantized = _quantize(model_file)
    cosine = _cosine(run_onnx(quantized, graph.feed(batch)), fp32, batch, _pooling_name(path))
    if cosine < MIN_INT8_COSINE:
        warnings.warn(f"int8 vectors are close to float32 ones only down to cosine {cosine:.4f} (< {MIN_INT8_COSINE}): "
                      f"prefer {model_file.name} where quality matters", stacklevel=2)  # fmt: skip
    return replace(report, quantized_file=quantized, int8_cosine=cosine)


# ------------------------------------------------------------------------------ checks
def _check_requirements() -> None:
    import importlib.util

    missing = [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}, not installed here: {EXTRA_HINT}")
    if not hasattr(torch.compiler, "is_exporting"):
        raise ExportError(f"ONNX export needs torch >= 2.6 (this is {torch.__version__}): {EXTRA_HINT}")


def _check_options(opset: int, quantize: str | None) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported: choose one from {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ExportError(f"quantization {quantize!r} is not supported: choose one of {', '.join(QUANTIZATIONS)}")


def _check_out_dir(out: Path, force: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory: choose another output directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} exists and is not empty: pass --force (force=True) to write into it, or choose another directory")
    return out


def _make_dir(directory: Path) -> Path:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # under /proc or a regular file, a read-only file system, no permission
        raise ExportError(f"cannot create {directory} ({error.strerror}): choose an output directory that can be "
                          "created and written") from None  # fmt: skip
    return directory


# ------------------------------------------------------------------------------ loading and writing
def _load(path: Path) -> NewPreTrainedModel:
    name, _ = hub.architecture(path)
    cls = getattr(modeling, name, None)
    if not (isinstance(cls, type) and issubclass(cls, NewPreTrainedModel)):
        raise ExportError(f"{path}: architecture {name!r} is not one gte runs")
    return cls.from_pretrained(str(path), dtype=torch.float32, attn_implementation=ATTENTION).eval()


def _tokenizer(path: Path) -> Any:
    """The checkpoint's tokenizer, or None for a directory without one."""
    try:
        return hub.load_tokenizer(path)
    except hub.ModelNotFoundError:
        return None


def example_inputs(config: Any, shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Token ids of this shape with a padded row, to trace with (the exported axes are symbolic)."""
    ids = torch.arange(int(np.prod(shape))).reshape(shape) % (config.vocab_size - 1) + 1
    mask = torch.ones(shape, dtype=torch.long)
    mask.view(-1, shape[-1])[-1, shape[-1] // 2 :] = 0
    inputs = {"input_ids": ids * mask, "attention_mask": mask}
    if config.type_vocab_size > 1:
        inputs["token_type_ids"] = torch.zeros(shape, dtype=torch.long)
    return inputs


def _write(graph: OnnxGraph, model_file: Path, opset: int) -> list[str]:
    choices = isinstance(graph.model, modeling.NewForMultipleChoice)
    shape = (2, 3, 8) if choices else (2, 8)  # no axis of size 1: torch.export would specialise it
    inputs = example_inputs(graph.model.config, shape)
    dims = ("batch", "num_choices", "sequence") if choices else ("batch", "sequence")
    axes = {i: torch.export.Dim(name) for i, name in enumerate(dims)}
    dynamic = {name: axes for name in inputs}
    large = sum(p.numel() * p.element_size() for p in graph.parameters()) >= 2**31 - 2**24  # protobuf's 2 GiB
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            graph, (), kwargs=inputs, dynamo=True, dynamic_shapes=dynamic, input_names=list(inputs),
            output_names=graph.output_names, opset_version=opset, verbose=False,
        )  # fmt: skip
        program.save(str(model_file), external_data=large)
    return list(inputs)


class _quiet:
    """The exporter's and the quantizer's notes (optional torchvision operators, pre-processing advice) stay out
    of the user's output; errors still show."""

    LOGGERS = ("torch.onnx", "")  # ONNX Runtime's quantizer logs to the root logger

    def __enter__(self) -> None:
        self.levels = {name: logging.getLogger(name).level for name in self.LOGGERS}
        for name in self.LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        self.filters = warnings.catch_warnings()
        self.filters.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc: object) -> None:
        self.filters.__exit__(*exc)
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)


def _copy_files(path: Path, out: Path, tokenizer: Any) -> None:
    """config.json, tokenizer and sentence-transformers files (never weights); tokenizer.json written when missing."""
    for file in sorted(path.rglob("*")):
        relative = file.relative_to(path)
        if relative.parts[0].startswith(".") or relative.parts[0] == "onnx":
            continue
        if file.is_dir():
            (out / relative).mkdir(parents=True, exist_ok=True)  # 2_Normalize holds no file but must exist
        elif _matches(file.name, COPIED_FILES) and not _matches(file.name, SKIPPED_FILES):
            shutil.copyfile(file, out / relative)
    if tokenizer is not None and not (out / "tokenizer.json").is_file():
        tokenizer.save_pretrained(str(out))


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _quantize(model_file: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = model_file.with_name("model_quantized.onnx")
    with _quiet():
        # int8 weights per output channel (measured closer to float32 than per tensor), activations quantized on the fly
        quantize_dynamic(str(model_file), str(quantized), per_channel=True, weight_type=QuantType.QInt8)
    return quantized


# ------------------------------------------------------------------------------ checking the graph
def check_batch(config: Any, tokenizer: Any) -> dict[str, torch.Tensor]:
    """CHECK_TEXTS tokenized and padded (random token ids of the same lengths without a tokenizer)."""
    limit = config.max_position_embeddings if config.position_embedding_type == "absolute" else 512
    if tokenizer is None:
        generator = torch.Generator().manual_seed(0)
        lengths = torch.tensor([min(len(t.split()) + 2, limit) for t in CHECK_TEXTS])
        mask = (torch.arange(int(lengths.max())) < lengths[:, None]).long()
        ids = torch.randint(1, config.vocab_size, mask.shape, generator=generator) * mask
        batch = {"input_ids": ids, "attention_mask": mask}
    else:
        batch = dict(tokenizer(list(CHECK_TEXTS), padding=True, truncation=True, max_length=limit, return_tensors="pt"))
    if config.type_vocab_size > 1:
        batch["token_type_ids"] = batch.get("token_type_ids", torch.zeros_like(batch["input_ids"]))
    else:
        batch.pop("token_type_ids", None)
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def run_onnx(model_file: Path, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The graph's outputs by name, on ONNX Runtime's CPU provider."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {k: v.numpy() for k, v in batch.items()})))


@torch.inference_mode()
def _torch_hidden(model: NewPreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """last_hidden_state [B, L, H] on our PyTorch path (unpadded)."""
    base = model if isinstance(model, NewModel) else model.new
    return base(**batch, unpad_inputs=True).last_hidden_state


def _pooling_name(path: Path) -> str:
    pooling = st_files.read_settings(path).pooling
    return "cls" if pooling is None else pooling.name


def _max_abs_diff(onnx_hidden: np.ndarray, torch_hidden: torch.Tensor, mask: torch.Tensor) -> float:
    valid = mask.bool()
    return float((torch.from_numpy(onnx_hidden).view(torch_hidden.shape)[valid] - torch_hidden[valid]).abs().max())


def _cosine(quantized: dict[str, np.ndarray], fp32: dict[str, np.ndarray], batch: dict[str, torch.Tensor], pooling: str) -> float:
    """The lowest cosine between int8 and float32 sentence vectors (the checkpoint's pooling)."""
    mask = batch["attention_mask"].numpy()[..., None]  # [B, L, 1]

    def pool(hidden: np.ndarray) -> np.ndarray:
        hidden = hidden.reshape(*mask.shape[:2], -1)  # [B, L, H] (multiple choice: from [B, 1, L, H])
        vectors = hidden[:, 0] if pooling == "cls" else (hidden * mask).sum(1) / mask.sum(1)
        return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)

    return float((pool(quantized["last_hidden_state"]) * pool(fp32["last_hidden_state"])).sum(-1).min())
