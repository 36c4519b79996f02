"""The commands of `gte embed | rerank | info | export` (`gte_cli` parses their arguments, then calls `run_command`).

User errors (a missing model, an unreadable or malformed input, a missing field) end with one line
on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers.utils import logging as hf_logging

from gte_defaults import DEFAULT_RERANKER

from . import convert, hub, sources, st_files, threads
from .classify import Classifier
from .embed import Embedder, TruncationWarning
from .job import EmbedJob, Options
from .models import EmbeddedModelError
from .rerank import Reranker

RERANKER_HINT = (
    "pass --model with a reranker checkpoint directory (`hf download BAAI/bge-reranker-base --local-dir "
    "./bge-reranker-base` makes one where there is network) or the hub id of a reranker in your Hugging Face cache "
    "(Alibaba-NLP/gte-multilingual-reranker-base, BAAI/bge-reranker-base, cross-encoder/ms-marco-MiniLM-L-6-v2)"
)
USER_ERRORS = (hub.ModelNotFoundError, sources.InputError, ValueError, EmbeddedModelError)
RERANK_TEXT_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def run_command(args: argparse.Namespace) -> int:
    """Run the command `gte_cli` parsed (args.run names its function): a user error is one line, exit 2."""
    hf_logging.disable_progress_bar()  # the CLI's own progress bar is the one that counts
    if getattr(args, "threads", None) is not None:
        threads.configure(threads.Threads(args.threads, "--threads"))
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        warnings.simplefilter("default", TruncationWarning)  # once per command, even when a process runs several
        try:
            if getattr(args, "device", None) is not None:
                hub.resolve_device(args.device)  # a bad --device stops the command before any work
            return load(args.run)(args) or 0
        except USER_ERRORS as error:
            print(f"gte {args.command}: error: {error}", file=sys.stderr)
            return 2


def load(reference: str) -> Callable:
    """The function a "module:name" reference names (imported now)."""
    module, name = reference.split(":")
    return getattr(importlib.import_module(module), name)


def _source(given: list[str], args: argparse.Namespace) -> sources.Source:
    if given and args.input:
        raise sources.InputError("pass texts as arguments or with --input, not both")
    if given:
        return sources.ListSource(given, args.field)
    return sources.open_source(args.input, args.field)


def _texts(given: list[str], args: argparse.Namespace) -> list[str]:
    if given and args.input:
        raise sources.InputError("pass texts as arguments or with --input, not both")
    return given or sources.read_texts(args.input, args.field)


def _model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        device=args.device, dtype=args.dtype, max_length=args.max_length, batch_tokens=args.batch_tokens,
        show_progress=args.progress, revision=args.revision,
    )  # fmt: skip


def run_embed(args: argparse.Namespace) -> None:
    options = Options(args.field, args.id_field, args.keep_columns, args.dim, args.normalize, args.sparse, args.window,
                      prompt_name=args.prompt_name, prompt=args.prompt, truncation_side=args.truncation_side,
                      precision=args.precision, ranges=_ranges(args.ranges), dense=args.dense,
                      chunk_tokens=args.chunk_tokens, chunk_overlap=args.chunk_overlap, late_chunking=args.late_chunking,
                      keep_text=args.keep_text, chunk_by=args.chunk_by)  # fmt: skip
    if args.ray:
        return run_ray(args, options)
    job = EmbedJob(_source(args.texts, args), args.output, options, resume=args.resume, overwrite=args.overwrite,
                   resume_hint=_resume_command(args.argv))  # fmt: skip
    if job.complete:
        print(f"gte embed: {args.output} is complete; nothing to resume", file=sys.stderr)
        return
    summary = job.run(Embedder(args.model, pooling=args.pooling, **_model_kwargs(args)), show_progress=args.progress)
    if args.output is not None or sys.stderr.isatty():
        print(f"gte embed: {summary.line(options)}", file=sys.stderr)


def _ranges(path: Path | None) -> tuple[tuple[float, ...], ...] | None:
    """--ranges: a [2, dim] float .npy, as nested tuples."""
    if path is None:
        return None
    from .quantize import load_ranges

    return tuple(map(tuple, load_ranges(path).tolist()))


def run_ray(args: argparse.Namespace, options: Options) -> None:
    if args.texts or not args.input or not args.output:
        raise sources.InputError("--ray embeds a dataset: pass --input and --output (a directory), not texts")
    from . import ray

    kwargs = {k: v for k, v in _model_kwargs(args).items() if k != "show_progress" and v is not None}
    kwargs |= {"pooling": args.pooling} if args.pooling else {}
    rows, pool = ray.run(args.input, str(args.output), options, model=args.model, address=args.ray_address,
                         workers=args.ray_workers, cpus_per_worker=args.ray_cpus_per_worker,
                         gpus_per_worker=args.ray_gpus_per_worker, overwrite=args.overwrite, show_progress=args.progress,
                         threads=args.threads, embedder_kwargs=kwargs)  # fmt: skip
    print(f"gte embed: wrote {rows} embeddings to {args.output} ({pool.describe()})", file=sys.stderr)


def _resume_command(argv: list[str]) -> str:
    import shlex

    return shlex.join(["gte", *argv, *(["--resume"] if "--resume" not in argv else [])])


def run_rerank(args: argparse.Namespace) -> None:
    documents = _texts(args.documents, args)
    try:
        reranker = Reranker(args.model or DEFAULT_RERANKER, **_model_kwargs(args))
    except hub.ModelNotFoundError as error:
        if args.model is not None:
            raise
        raise hub.ModelNotFoundError(
            f"gte rerank needs a reranker model and none ships with gte; the default, {DEFAULT_RERANKER}, is not in the "
            f"Hugging Face cache and cannot be downloaded now: {RERANKER_HINT}"
        ) from error
    for hit in reranker.rank(args.query, documents, top_k=args.top_k, normalize=args.normalize,
                             truncation_side=args.truncation_side):  # fmt: skip
        if args.format == "jsonl":
            print(json.dumps(hit, ensure_ascii=False))
        else:
            print(f"{hit['score']:.6f}\t{hit['index']}\t{hit['text'].translate(RERANK_TEXT_ESCAPES)}")


def run_classify(args: argparse.Namespace) -> None:
    if args.model is None:
        raise ValueError("gte classify needs --model: a sequence classifier checkpoint directory or hub id (none ships "
                         "with gte)")  # fmt: skip
    texts = _texts(args.texts, args)
    classifier = Classifier(args.model, **_model_kwargs(args))
    inputs = texts if args.pair is None else [(text, args.pair) for text in texts]
    predictions = classifier.predict(inputs, activation=args.activation, top_k=args.top_k,
                                     truncation_side=args.truncation_side)  # fmt: skip
    for index, (text, labels) in enumerate(zip(texts, predictions)):
        if args.format == "jsonl":
            print(json.dumps({"index": index, "text": text, "labels": labels}, ensure_ascii=False))
        else:
            print("\t".join([str(index), *(f"{p['label']}\t{p['score']:.6f}" for p in labels)]))


EVAL_CACHE = "gte-eval-cache"  # beside a --output report: where its corpus vectors are kept


def run_eval_retrieval(args: argparse.Namespace) -> None:
    from .evaluation import evaluate_retrieval

    report = evaluate_retrieval(
        args.corpus, args.queries, args.qrels, pairs=args.pairs, embedder=Embedder(args.model, **_model_kwargs(args)),
        k=args.k, dims=args.dims, precisions=args.precision, rerank=args.rerank, rerank_top_k=args.rerank_top_k, ignore_missing=args.ignore_missing,
        cache_dir=args.cache or (args.output.parent / EVAL_CACHE if args.output else None), show_progress=args.progress, id_field=args.id_field, text_field=args.field,
        title_field=args.title_field,
    )  # fmt: skip
    for note in report.notes:
        print(f"gte eval: {note}", file=sys.stderr)
    print(f"{report.model}: {report.queries} queries, {report.documents} documents; seconds: "
          + ", ".join(f"{name} {value:.2f}" for name, value in report.seconds.items()))  # fmt: skip
    print(report.table())
    if args.output is not None:
        args.output.write_text(report.to_json() + "\n")
    if args.plot is not None:
        print(f"gte eval: plot written to {report.plot(args.plot)}", file=sys.stderr)


def run_eval_sts(args: argparse.Namespace) -> None:
    from .evaluation import evaluate_sts

    report = evaluate_sts(args.pairs, embedder=Embedder(args.model, **_model_kwargs(args)), show_progress=args.progress)
    print(f"{report.model}: {report.pairs} pairs, {report.seconds:.2f} s")
    print(report.table())
    if args.output is not None:
        args.output.write_text(json.dumps(report.to_dict(), indent=2) + "\n")


TRAIN_OPTIONS = ("model", "loss", "batch_size", "epochs", "steps", "lr", "warmup", "weight_decay", "max_grad_norm",
                 "max_length", "dtype", "batch_tokens", "gradient_checkpointing", "save_steps", "seed", "resume", "device")  # fmt: skip
EMBED_TRAIN_OPTIONS = ("scale", "similarity", "directions", "matryoshka_dims", "matryoshka_weights", "eval")


def run_train(args: argparse.Namespace) -> None:
    from .training import train, train_rerank

    names = TRAIN_OPTIONS + (EMBED_TRAIN_OPTIONS if args.train_kind == "embed" else ())
    fine_tune = train if args.train_kind == "embed" else train_rerank
    result = fine_tune(args.data, args.output, **{name: getattr(args, name) for name in names}, show_progress=args.progress)
    if result.losses:
        print(f"gte train: {result.steps} steps, {result.seconds:.1f} s, {result.rows_per_second:.1f} rows/s, "
              f"{result.tokens_per_second:.0f} tokens/s; loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}; "
              f"saved to {result.output}", file=sys.stderr)  # fmt: skip
    if result.table():
        print(result.table())


def run_info(args: argparse.Namespace) -> None:
    report = model_info(args.model, args.revision, args.int8)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        print(f"{key + ':':<28}{value}")


def model_info(model: str, revision: str | None = None, int8: bool = False) -> dict[str, Any]:
    """What a checkpoint is, read from its files, and how this machine would run it (attention backends, CPU threads).
    The weights are not loaded, unless `int8` asks to measure the int8 model's fidelity to float32."""
    import torch

    from .attention import available_backends

    path = hub.resolve(model, revision)
    name, num_labels = hub.architecture(path)
    raw = hub.read_json(path / "config.json")
    config = convert.new_config(raw).to_dict()
    settings = st_files.read_settings(path)
    pooling = settings.pooling
    devices = ["cpu"] + (["cuda"] * torch.cuda.is_available())
    backends = {
        f"{device} {dtype}": available_backends(device, getattr(torch, dtype))
        for device in devices
        for dtype in (("float32",) if device == "cpu" else ("float16", "bfloat16", "float32"))
    }
    rope = ("rope_theta", "rope_scaling") if config["position_embedding_type"] == "rope" else ()
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
            "max_position_embeddings", "type_vocab_size", "hidden_act", "position_embedding_type", *rope,
            "layer_norm_type", "logn_attention_scale", "logn_attention_clip1", "pack_qkv",
            "gated_mlp", "attention_bias", "mlp_bias")  # fmt: skip
    return {
        "model": model,
        "path": str(path),
        "format": raw["model_type"] if raw["model_type"] == "new" else f"{raw['model_type']} (converted as it loads)",
        "architecture": name,
        "num_labels": num_labels if name != "NewModel" else None,
        "parameters": parameter_count(path),
        "sparse_head": name == "NewForTokenClassification" and num_labels == 1,
        "sentence_transformers_modules": [kind for kind, _ in settings.modules] or None,
        "pooling": pooling.name if pooling else "cls (no sentence-transformers files: the official GTE models' pooling; "
                   "sentence-transformers would take the mean; --pooling changes it)",
        "prompts": {name: text for name, text in settings.prompts.items() if text} or None,
        "default_prompt_name": settings.default_prompt_name,
        "max_seq_length": settings.max_seq_length or config.get("max_position_embeddings"),
        **{key: config.get(key) for key in keys},
        "attention_backends": backends,
        **threads.choose().report(),
        **({"int8_fidelity": int8_fidelity(model, revision)} if int8 else {}),
    }


def int8_fidelity(model: str, revision: str | None) -> dict[str, float | int]:
    """The model loaded in int8 (an Embedder, or a Reranker for a reranker): its cosines to float32 on the probe
    texts."""
    from .server import load_model

    loaded = load_model(model, device="cpu", dtype="int8", max_length=None, revision=revision)
    return loaded.int8_fidelity.as_dict()


def parameter_count(path: Path) -> int:
    """Number of stored parameters, from the safetensors headers."""
    return sum(math.prod(shape) for shape in hub.weight_shapes(path).values())


# ------------------------------------------------------------------------------ gte export
def run_export_onnx(args: argparse.Namespace) -> None:
    from .export import export_onnx  # torch.onnx and ONNX Runtime load only for this command

    report = export_onnx(args.model, args.out_dir, opset=args.opset, quantize=args.quantize, force=args.force,
                         revision=args.revision, pooling=args.pooling)  # fmt: skip
    print(f"gte export: wrote {report.model_file} (opset {report.opset}; inputs {', '.join(report.inputs)}; outputs "
          f"{', '.join(report.outputs)}); ONNX Runtime vs PyTorch: max abs diff {report.max_abs_diff:.1e}", file=sys.stderr)  # fmt: skip
    if report.head is not None:
        print(f"gte export: sentence_embedding: {report.head}", file=sys.stderr)
    for note in report.left_out:
        print(f"gte export: left out of the graph: {note}", file=sys.stderr)
    if report.quantized_file is not None:
        vectors = "sentence" if report.head is not None else "token"
        print(f"gte export: wrote {report.quantized_file}; int8 vs float32 {vectors} vectors: lowest cosine "
              f"{report.int8_cosine:.4f}", file=sys.stderr)  # fmt: skip


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"gte: warning: {message}", file=sys.stderr)

