"""ONNX export: `gte export onnx MODEL OUT_DIR` and `gte.export_onnx`.

The graph is the model's own padded forward (`unpad_inputs=False`: padding stays in the batch and is
masked as a key), traced by torch.export and written by torch.onnx's exporter; the model code knows
when it is being exported (value checks skipped, RoPE angles computed from the positions so any
length works, no CPU row chunking). The output directory gets the layout that fastembed, TEI's ORT
backend, transformers.js and optimum read:

    OUT_DIR/onnx/model.onnx             inputs  input_ids, attention_mask [batch, sequence] (int64, right-padded)
                                                (+ token_type_ids where the model has several types)
                                                (+ prompt_length [], optional, where Pooling leaves the prompt out)
                                        outputs last_hidden_state [batch, sequence, hidden] (zeros at padding)
                                                + the head's: logits, token_weights, start/end_logits
                                                + sentence_embedding [batch, dimension] for embedding checkpoints
    OUT_DIR/onnx/model_quantized.onnx   with quantize="int8" (dynamic int8 weights, ONNX Runtime)
    OUT_DIR/config.json, tokenizer and sentence-transformers files, copied from the checkpoint

sentence_embedding is the Embedder's own Head (the checkpoint's Pooling, Dense and Normalize modules) on the
padded batch: SentenceTransformer.encode's vectors. What the graph cannot carry (prompts are text; lower-casing
is the tokenizer's) is listed in the report's `left_out`. Every export is checked: ONNX Runtime against our
PyTorch path on a fixed text set.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import hub, modeling, st_files
from .embed import checkpoint_head
from .modeling import NewModel, NewPreTrainedModel
from .padding import Packing
from .pooling import Head

MIN_OPSET = 18  # torch.onnx's exporter writes opset 18 and newer
# From opset 23 SDPA becomes ONNX's Attention operator, which ONNX Runtime 1.32 refuses with a key mask.
MAX_OPSET = 22
DEFAULT_OPSET = 20
# SDPA on the padded grid with a key mask: in ONNX Runtime 1.5x (batches) to 2.7x (one query) faster than eager.
ATTENTION = "sdpa"
QUANTIZATIONS = ("int8",)
TOLERANCE = 1e-4  # float32 max abs diff on last_hidden_state and sentence_embedding, ONNX Runtime vs PyTorch
MIN_INT8_COSINE = 0.99
COPIED_FILES = ("*.json", "*.txt", "*.model")  # config, tokenizer, sentence-transformers files
SKIPPED_FILES = ("*.safetensors.index.json",)
REQUIRED_MODULES = ("onnx", "onnxscript", "onnxruntime")
EXTRA_HINT = "pip install 'gte-engine[onnx]' (in a checkout: pip install -e '.[onnx]')"
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
    max_abs_diff: float  # ONNX Runtime vs PyTorch, float32 last_hidden_state at valid positions and
    #                      sentence_embedding, CHECK_TEXTS
    head: str | None = None  # what sentence_embedding applies ("mean, Dense 384->64, Normalize"); None without it
    left_out: list[str] = field(default_factory=list)  # what the consumer does that the graph cannot, one line each
    quantized_file: Path | None = None
    int8_cosine: float | None = None  # lowest cosine of int8 to float32 sentence_embedding rows (without that
    #                                   output: token vectors of last_hidden_state) over CHECK_TEXTS


class OnnxGraph(nn.Module):
    """The model's padded forward with the ONNX inputs and outputs (a view of the model, no copy of its code),
    and with a `head` (embedding checkpoints) the sentence vectors it makes of the padded batch."""

    def __init__(self, model: NewPreTrainedModel, head: Head | None = None):
        super().__init__()
        self.model, self.head = model, head
        self.head_outputs = _head_outputs(model)
        self.output_names = ["last_hidden_state", *self.head_outputs, *(["sentence_embedding"] if head else [])]
        # optional inputs and their defaults: the prompt's tokens, which Pooling leaves out with include_prompt false
        skips_prompt = head is not None and not head.pooling.include_prompt
        self.optional_inputs = {"prompt_length": torch.tensor(0)} if skips_prompt else {}

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, L] (multiple choice: [B, C, L])
        attention_mask: torch.Tensor,  # like input_ids, right-padded
        token_type_ids: torch.Tensor | None = None,
        prompt_length: torch.Tensor | None = None,  # [] int64: tokens at the start of every row that pooling skips
    ) -> tuple[torch.Tensor, ...]:
        base = isinstance(self.model, NewModel)
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            unpad_inputs=False, output_hidden_states=not base, return_dict=True,
        )  # fmt: skip
        valid = attention_mask.unsqueeze(-1).to(torch.float32)  # [..., L, 1]
        hidden = out.last_hidden_state if base else out.hidden_states[-1]
        hidden = hidden.view(*input_ids.shape, -1) * valid  # [..., L, H], zeros at padding
        if self.head_outputs == ["token_weights"]:
            outputs = [hidden, torch.relu(out.logits).squeeze(-1) * valid.squeeze(-1)]  # [B, L]
        else:
            outputs = [hidden, *(getattr(out, name) for name in self.head_outputs)]
        if self.head is not None:
            skip = 0 if prompt_length is None else prompt_length
            outputs.append(self.head(hidden.flatten(0, 1), Packing.padded(attention_mask), skip))  # [B, D]
        return tuple(outputs)

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
    pooling: str | None = None,
) -> ExportReport:
    """Export a checkpoint (directory, or hub id at `revision`; any head) to OUT_DIR/onnx/model.onnx plus its
    config, tokenizer and sentence-transformers files, and check it against PyTorch with ONNX Runtime.

    Embedding checkpoints get a sentence_embedding output: the Embedder's Head (the checkpoint's Pooling, Dense
    and Normalize modules; `pooling` replaces its Pooling, as in the Embedder). What the consumer must still do
    (prompts, tokenizer settings) is in the report's `left_out`. quantize="int8" also writes
    onnx/model_quantized.onnx and reports its cosine to float32 (a warning when under 0.99). An existing
    non-empty OUT_DIR needs force=True (our files are replaced, others kept).
    """
    _check_requirements()
    _check_options(opset, quantize)
    out = _check_out_dir(Path(out_dir), force)
    path = hub.resolve(model, revision)  # OUT_DIR is made once the model is found
    loaded = _load(path)
    tokenizer = _tokenizer(path)
    head, left_out = _sentence_head(path, loaded, pooling)
    graph = OnnxGraph(loaded, head).eval()
    model_file = _make_dir(out / "onnx") / "model.onnx"
    inputs = _write(graph, model_file, opset)
    _copy_files(path, out, tokenizer)

    batch = check_batch(loaded.config, tokenizer)
    mask = batch["attention_mask"]
    fp32 = _vectors(run_onnx(model_file, graph.feed(batch)), mask)
    diff = _max_abs_diff(fp32, _vectors(_torch_outputs(graph, batch), mask))
    if diff > TOLERANCE:
        warnings.warn(f"ONNX Runtime differs from PyTorch by {diff:.2e} (more than {TOLERANCE:g}) on {model_file}", stacklevel=2)
    report = ExportReport(out, model_file, inputs, graph.output_names, opset, diff, head.describe() if head else None,
                          left_out)  # fmt: skip
    if quantize is None:
        return report
    quantized = _quantize(model_file)
    cosine = _lowest_cosine(_vectors(run_onnx(quantized, graph.feed(batch)), mask), fp32)
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
    with hub.quiet_transformers():
        return cls.from_pretrained(str(path), dtype=torch.float32, attn_implementation=ATTENTION).eval()


def _sentence_head(path: Path, model: NewPreTrainedModel, pooling: str | None) -> tuple[Head | None, list[str]]:
    """The Embedder's Head for an embedding checkpoint (a NewModel, or the sparse head; None for other heads), and
    what of the sentence-transformers pipeline the graph leaves to the consumer."""
    if not (isinstance(model, NewModel) or _head_outputs(model) == ["token_weights"]):
        if pooling is not None:
            raise ExportError(f"{path} is a {type(model).__name__}, which makes no sentence vectors: leave out pooling= / --pooling")
        return None, []
    try:
        settings = st_files.read_settings(path)
        head = checkpoint_head(settings, model.config.hidden_size, path, pooling)
    except st_files.UnsupportedModuleError as error:  # the encoder still exports; its vectors are the consumer's
        return None, [f"sentence_embedding: {error}"]
    return head, _left_out(settings, head)


def _left_out(settings: st_files.SentenceTransformersSettings, head: Head) -> list[str]:
    """What sentence-transformers does around the graph that a consumer of the export must do itself."""
    notes = []
    prompts = [name for name, text in settings.prompts.items() if text]  # sentence-transformers saves empty ones too
    if prompts:
        default = f", default {settings.default_prompt_name!r}" if settings.default_prompt_name in prompts else ""
        notes.append(f"prompts ({', '.join(map(repr, prompts))}{default}; config_sentence_transformers.json): text "
                     "that the consumer puts before each input")  # fmt: skip
    if not head.pooling.include_prompt:
        notes.append("Pooling leaves the prompt out (include_prompt false): with a prompt, feed the optional input "
                     "prompt_length (int64 scalar, default 0), the prompt's token count without its trailing special token")  # fmt: skip
    tokenizing = [f"truncate to {settings.max_seq_length} tokens"] if settings.max_seq_length else []
    tokenizing += ["lower-case the text"] if settings.do_lower_case else []
    if tokenizing:
        notes.append(f"tokenizing (sentence_bert_config.json): {', '.join(tokenizing)}")
    return notes


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
    dynamic = {name: axes for name in inputs} | {name: {} for name in graph.optional_inputs}
    large = sum(p.numel() * p.element_size() for p in graph.parameters()) >= 2**31 - 2**24  # protobuf's 2 GiB
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            graph, (), kwargs=inputs | graph.optional_inputs, dynamo=True, dynamic_shapes=dynamic,
            input_names=[*inputs, *graph.optional_inputs], output_names=graph.output_names, opset_version=opset,
            verbose=False,
        )  # fmt: skip
        _set_defaults(program.model.graph, graph.optional_inputs)
        program.save(str(model_file), external_data=large)
    return list(inputs)


def _set_defaults(onnx_graph: Any, defaults: dict[str, torch.Tensor]) -> None:
    """Optional inputs: each an ONNX input that is also an initializer, its default unless the consumer feeds it."""
    from onnxscript import ir

    for value in onnx_graph.inputs:
        if value.name in defaults:
            value.const_value = ir.tensor(defaults[value.name].numpy())
            onnx_graph.register_initializer(value)


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
        batch = dict(tokenizer(list(CHECK_TEXTS), padding=True, padding_side="right", truncation=True, max_length=limit,
                               return_tensors="pt"))  # fmt: skip
    if config.type_vocab_size > 1:
        batch["token_type_ids"] = batch.get("token_type_ids", torch.zeros_like(batch["input_ids"]))
    else:
        batch.pop("token_type_ids", None)
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def run_onnx(model_file: Path, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The graph's outputs by name, on ONNX Runtime's CPU provider (its notes, such as that an optional input
    keeps an initializer from being folded, left out)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {k: v.numpy() for k, v in batch.items()})))


@torch.inference_mode()
def _torch_outputs(graph: OnnxGraph, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """last_hidden_state [B, L, H] on our PyTorch path (unpadded) and, with a head, sentence_embedding [B, D] made
    from its packed tokens (the Embedder's path)."""
    base = graph.model if isinstance(graph.model, NewModel) else graph.model.new
    hidden = base(**batch, unpad_inputs=True).last_hidden_state
    if graph.head is None:
        return {"last_hidden_state": hidden}
    valid = batch["attention_mask"].bool()
    vectors = graph.head(hidden[valid], Packing.from_seqlens(valid.sum(1)))
    return {"last_hidden_state": hidden, "sentence_embedding": vectors}


def _vectors(outputs: dict[str, Any], mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The checked outputs as rows of vectors: last_hidden_state at the valid positions [T, H], sentence_embedding [B, D]."""
    rows = {"last_hidden_state": torch.as_tensor(outputs["last_hidden_state"]).reshape(*mask.shape, -1)[mask.bool()]}
    if "sentence_embedding" in outputs:
        rows["sentence_embedding"] = torch.as_tensor(outputs["sentence_embedding"])
    return rows


def _max_abs_diff(onnx_rows: dict[str, torch.Tensor], torch_rows: dict[str, torch.Tensor]) -> float:
    return max(float((onnx_rows[name] - rows).abs().max()) for name, rows in torch_rows.items())


def _lowest_cosine(quantized: dict[str, torch.Tensor], fp32: dict[str, torch.Tensor]) -> float:
    """The lowest cosine between int8 and float32 sentence vectors (token vectors for graphs without them)."""
    name = "sentence_embedding" if "sentence_embedding" in fp32 else "last_hidden_state"
    return float(torch.nn.functional.cosine_similarity(quantized[name], fp32[name], dim=-1).min())
