"""`gte embed | rerank | info | serve | export`.

User errors (a missing model, an unreadable or malformed input, a missing field) end with one line
on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers.utils import logging as hf_logging

from . import convert, hub, io
from .embed import CPU_BATCH_TOKENS, GPU_BATCH_TOKENS, Embedder
from .models import EmbeddedModelError
from .rerank import Reranker
from .server import add_serve_arguments, serve

DEFAULT_RERANKER = "Alibaba-NLP/gte-multilingual-reranker-base"  # from the hub: no reranker ships with gte
RERANKER_HINT = (
    "pass --model with a reranker checkpoint directory (`hf download BAAI/bge-reranker-base --local-dir "
    "./bge-reranker-base` makes one where there is network) or the hub id of a reranker in your Hugging Face cache "
    "(Alibaba-NLP/gte-multilingual-reranker-base, BAAI/bge-reranker-base, cross-encoder/ms-marco-MiniLM-L-6-v2)"
)
USER_ERRORS = (hub.ModelNotFoundError, io.InputError, ValueError, EmbeddedModelError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    hf_logging.disable_progress_bar()  # the CLI's own progress bar is the one that counts
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return args.run(args) or 0
        except USER_ERRORS as error:
            print(f"gte {args.command}: error: {error}", file=sys.stderr)
            return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gte", description="GTE v1.5 embeddings and reranking, fast and exact.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    embed = commands.add_parser("embed", help="embed texts (arguments, stdin or a file)", description=EMBED_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    embed.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed (default: --input, else stdin lines)")
    _add_model_arguments(embed, hub.DEFAULT_MODEL)
    _add_input_arguments(embed)
    embed.add_argument("--output", "-o", type=Path, help="output file: .npy, .parquet or .jsonl (default: JSON lines on stdout)")
    embed.add_argument("--dim", type=int, help="Matryoshka: keep the first DIM values of each vector (re-normalised)")
    embed.add_argument("--no-normalize", dest="normalize", action="store_false", help="skip L2 normalisation")
    embed.add_argument("--sparse", action="store_true", help="token weights instead of dense vectors (gte-multilingual-base)")
    embed.set_defaults(run=run_embed)

    rerank = commands.add_parser("rerank", help="score documents against a query, best first")
    rerank.add_argument("documents", nargs="*", metavar="DOC", help="documents (default: --input, else stdin lines)")
    rerank.add_argument("--query", "-q", required=True, help="the query")
    _add_model_arguments(rerank, None, f"reranker checkpoint directory or hub id (default: {DEFAULT_RERANKER}, "
                         "from the Hugging Face cache or the hub)")
    _add_input_arguments(rerank)
    rerank.add_argument("--top-k", type=int, help="print only the best K documents")
    rerank.add_argument("--normalize", action="store_true", help="sigmoid of the logit (a score in 0..1)")
    rerank.set_defaults(run=run_rerank)

    info = commands.add_parser("info", help="architecture, size and config of a checkpoint; attention backends here")
    info.add_argument("model", nargs="?", default=hub.DEFAULT_MODEL, help=f"directory or hub id (default: {hub.DEFAULT_MODEL}, embedded)")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(run=run_info)

    server = commands.add_parser("serve", help="HTTP embedding server (OpenAI-compatible)")
    add_serve_arguments(server)
    server.set_defaults(run=serve)

    _add_export_parser(commands)
    return parser


EMBED_HELP = f"""Embed texts with a GTE v1.5 or BERT-family checkpoint (default: {hub.DEFAULT_MODEL}, which ships
with gte and works offline).

examples:
  gte embed "what is the capital of China?" "how to implement quick sort in python?"
  gte embed --model Alibaba-NLP/gte-base-en-v1.5 "what is the capital of China?"
  gte embed --input docs.jsonl --field body --output vectors.parquet
  gte embed --model ./gte-base-en-v1.5 --input lines.txt --output vectors.npy --dim 256
  cat lines.txt | gte embed > vectors.jsonl
"""


def _add_model_arguments(parser: argparse.ArgumentParser, default: str | None, help: str | None = None) -> None:
    help = help or f"checkpoint directory or hub id (default: {default}, embedded: works offline)"
    parser.add_argument("--model", "-m", default=default, help=help)
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when present)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), help="default: float16 on GPU, float32 on CPU")
    parser.add_argument("--max-length", type=int, help="truncate inputs to this many tokens (default: from the checkpoint)")
    parser.add_argument("--batch-tokens", type=int, help=f"tokens per batch (default: {CPU_BATCH_TOKENS} on CPU, "
                        f"{GPU_BATCH_TOKENS} on GPU)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, help="progress bar (default: on a terminal)")


def _add_input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", "-i", type=Path, help="a .txt (one text a line), .jsonl, .csv or .parquet file")
    parser.add_argument("--field", default=io.DEFAULT_FIELD, help="JSON field or column holding the text (default: %(default)s)")


def _texts(given: list[str], args: argparse.Namespace) -> list[str]:
    if given and args.input:
        raise io.InputError("pass texts as arguments or with --input, not both")
    if given:
        return given
    if args.input:
        return io.read_texts(args.input, args.field)
    return io.stdin_texts()


def _model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        device=args.device, dtype=args.dtype, max_length=args.max_length, batch_tokens=args.batch_tokens,
        show_progress=args.progress,
    )  # fmt: skip


def run_embed(args: argparse.Namespace) -> None:
    if args.sparse and (args.dim is not None or not args.normalize):
        raise io.InputError("--dim and --no-normalize apply to dense vectors, not to --sparse")
    output = None if args.output is None else io.check_output(args.output, args.sparse)
    texts = _texts(args.texts, args)
    embedder = Embedder(args.model, **_model_kwargs(args))
    if args.sparse:
        vectors = embedder.encode_sparse(texts)
    else:
        vectors = embedder.encode(texts, dim=args.dim, normalize=args.normalize)
    if output is None:
        io.write_jsonl(sys.stdout, vectors)
    else:
        io.write_embeddings(output, vectors)
        print(f"gte embed: wrote {len(texts)} {'sparse ' * args.sparse}embeddings to {output}", file=sys.stderr)


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
    for hit in reranker.rank(args.query, documents, top_k=args.top_k, normalize=args.normalize):
        print(f"{hit['score']:.6f}\t{hit['index']}\t{hit['text']}")


def run_info(args: argparse.Namespace) -> None:
    report = model_info(args.model)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        print(f"{key + ':':<28}{value}")


def model_info(model: str) -> dict[str, Any]:
    """What a checkpoint is, read from its files (the weights are not loaded)."""
    import torch

    from .attention import available_backends

    path = hub.resolve(model)
    name, num_labels = hub.architecture(path)
    raw = hub.read_json(path / "config.json")
    config = convert.new_config(raw).to_dict()
    settings = hub.sentence_transformers_settings(path)
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
            "gated_mlp")  # fmt: skip
    return {
        "model": model,
        "path": str(path),
        "format": raw["model_type"] if raw["model_type"] == "new" else f"{raw['model_type']} (converted as it loads)",
        "architecture": name,
        "num_labels": num_labels if name != "NewModel" else None,
        "parameters": parameter_count(path),
        "sparse_head": name == "NewForTokenClassification" and num_labels == 1,
        "pooling": settings.pooling or "cls",
        "max_seq_length": settings.max_seq_length or config.get("max_position_embeddings"),
        **{key: config.get(key) for key in keys},
        "attention_backends": backends,
    }


def parameter_count(path: Path) -> int:
    """Number of stored parameters, from the safetensors headers."""
    from safetensors import safe_open

    index = hub.read_json(path / "model.safetensors.index.json")
    files = sorted(set(index["weight_map"].values())) if index else ["model.safetensors"]
    total = 0
    for name in files:
        if not (path / name).is_file():
            raise hub.ModelNotFoundError(f"{path} has no {name}: gte reads safetensors checkpoints")
        with safe_open(path / name, "pt") as f:
            for key in f.keys():
                total += math.prod(f.get_slice(key).get_shape())
    return total


# ------------------------------------------------------------------------------ gte export
def _add_export_parser(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="export a checkpoint to another format (ONNX)")
    formats = export.add_subparsers(dest="format", required=True, metavar="FORMAT")
    onnx = formats.add_parser("onnx", help="ONNX graph + config, tokenizer and sentence-transformers files",
                              description=EXPORT_ONNX_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    onnx.add_argument("model", metavar="MODEL", help="checkpoint directory or hub id (any gte head, BERT, XLM-R)")
    onnx.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="output directory (the graph goes to OUT_DIR/onnx/model.onnx)")
    onnx.add_argument("--opset", type=int, default=20, help="ONNX opset, 18 to 22 (default: %(default)s)")
    onnx.add_argument("--quantize", choices=("int8",), help="also write onnx/model_quantized.onnx (int8 weights)")
    onnx.add_argument("--force", action="store_true", help="write into a non-empty OUT_DIR")
    onnx.set_defaults(run=run_export_onnx)


EXPORT_ONNX_HELP = """Export a checkpoint to ONNX: OUT_DIR/onnx/model.onnx (inputs input_ids, attention_mask [+ token_type_ids];
outputs last_hidden_state [+ the head's]) with the checkpoint's config, tokenizer and sentence-transformers files,
the layout fastembed, TEI's ORT backend, transformers.js and optimum read. The graph is checked against PyTorch
with ONNX Runtime. Needs the onnx extra: pip install '.[onnx]'.

examples:
  gte export onnx Alibaba-NLP/gte-base-en-v1.5 ./gte-base-onnx
  gte export onnx ./my-checkpoint ./my-onnx --quantize int8 --force
"""


def run_export_onnx(args: argparse.Namespace) -> None:
    from .export import export_onnx  # torch.onnx and ONNX Runtime load only for this command

    report = export_onnx(args.model, args.out_dir, opset=args.opset, quantize=args.quantize, force=args.force)
    print(f"gte export: wrote {report.model_file} (opset {report.opset}; inputs {', '.join(report.inputs)}; outputs "
          f"{', '.join(report.outputs)}); ONNX Runtime vs PyTorch: max abs diff {report.max_abs_diff:.1e}", file=sys.stderr)  # fmt: skip
    if report.quantized_file is not None:
        print(f"gte export: wrote {report.quantized_file}; int8 vs float32 sentence vectors: lowest cosine "
              f"{report.int8_cosine:.4f}", file=sys.stderr)  # fmt: skip


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"gte: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
