"""The `gte` command's entry point: arguments, help and the process's end (signals, a closed stdout).

It sits beside the `gte` package, not in it: importing anything under `gte` runs the package's __init__,
which imports torch and transformers (seconds) to register model_type "new" with the transformers Auto
classes. `gte --help`, `gte embed --help` and argument errors need neither, so this module imports no
part of `gte`, only the shared defaults (gte_defaults, beside it for the same reason); a command's code
(`gte.cli`) is imported once its arguments are parsed. The imports run one way: gte_cli -> gte.cli.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import gte_defaults as defaults

RERANK_FORMATS = ("text", "jsonl")
API_KEY_ENV = "GTE_API_KEY"  # `gte serve --api-key`'s default
REVISION_HELP = "the commit hash, branch or tag to load a hub model at (default: main)"
THREADS_HELP = ("CPU threads the model computes with (default: $OMP_NUM_THREADS if set, else the CPUs this process may "
                "use: its CPU affinity and cgroup CPU quota; `gte info` shows the count and why)")
DTYPES = ("float32", "float16", "bfloat16", "int8")
DTYPE_HELP = ("default: float16 on GPU, float32 on CPU; int8 (CPU only): the encoder's projections in int8, its cosine "
              "to float32 checked as it loads")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command, the process's own (sys.argv) when `argv` is None; Ctrl-C and SIGTERM end it through
    `finally` blocks (exit 130 / 143), a closed stdout (`gte embed ... | head -1`) quietly (exit 141)."""
    own = argv is None
    argv = list(sys.argv[1:] if own else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # a corpus job prints the command that resumes it
    with _terminate_as_interrupt() as received:
        try:
            from gte.cli import run_command  # torch and transformers: seconds

            code = run_command(args)
            sys.stdout.flush()  # a reader that went away shows here, not at exit
            return code
        except KeyboardInterrupt as interrupt:
            print(f"gte {args.command}: {str(interrupt) or _SIGNAL_WORDS[received.signum]}", file=sys.stderr)
            return 128 + received.signum
        except BrokenPipeError:
            _discard_stdout()
            return 128 + signal.SIGPIPE
        finally:
            if own:
                _spare_the_exit_collections()


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="gte", description="GTE v1.5 embeddings, reranking and classification, fast and exact.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    embed = commands.add_parser("embed", help="embed texts (arguments, stdin or a file)", description=EMBED_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    embed.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed (default: --input, else stdin lines)")
    _add_model_arguments(embed, defaults.DEFAULT_MODEL)
    _add_input_arguments(embed)
    embed.add_argument("--output", "-o", type=Path, help="output file: .parquet, .jsonl or .npy (default: JSON lines on stdout)")
    embed.add_argument("--dim", type=int, help="Matryoshka: keep the first DIM values of each vector (re-normalised)")
    embed.add_argument("--no-normalize", dest="normalize", action="store_false", help="skip L2 normalisation")
    embed.add_argument("--sparse", action="store_true", help="token weights instead of dense vectors (gte-multilingual-base)")
    embed.add_argument("--dense", action="store_true", help="with --sparse: the dense vectors too (columns embedding and "
                       "sparse), from the same encoder pass")  # fmt: skip
    embed.add_argument("--precision", choices=defaults.PRECISIONS, default=defaults.PRECISIONS[0], help="quantize the "
                       "vectors as sentence-transformers' quantize_embeddings does: int8 / uint8 (one byte per dimension, "
                       "needs --ranges), binary / ubinary (one bit per dimension, packed) (default: %(default)s)")  # fmt: skip
    embed.add_argument("--ranges", type=Path, metavar="FILE.npy", help="int8 / uint8: each dimension's low and high value, "
                       "a [2, dim] .npy (numpy.save of gte.quantize.calibration_ranges(vectors) of representative texts)")  # fmt: skip
    prompts = embed.add_mutually_exclusive_group()
    prompts.add_argument("--prompt-name", metavar="NAME", help="put the checkpoint's prompt NAME (e.g. query) before each "
                         "text (default: the checkpoint's default prompt, if it names one)")  # fmt: skip
    prompts.add_argument("--prompt", metavar="TEXT", help="put TEXT before each text (e.g. 'query: ')")
    embed.add_argument("--pooling", metavar="MODE", help="cls, mean, max, mean_sqrt_len_tokens, weightedmean, lasttoken, "
                       "or several joined by + (default: the checkpoint's Pooling module, else cls)")  # fmt: skip
    _add_truncation_side(embed, "text")
    chunks = embed.add_argument_group("long documents: a row per chunk (id, chunk, start, end, [text], embedding)")
    chunks.add_argument("--chunk-tokens", type=positive_int, metavar="N", help="cut each text into chunks of at most N "
                        "of the model's tokens (never a part of a token); start and end are the chunk's characters")  # fmt: skip
    chunks.add_argument("--chunk-overlap", type=int, default=0, metavar="M", help="tokens consecutive chunks share "
                        "(default: %(default)s)")  # fmt: skip
    chunks.add_argument("--chunk-by", choices=defaults.CHUNK_BY, default=defaults.CHUNK_BY[0], help="cut on tokens, or "
                        "pack whole sentences (. ! ? and line breaks end one) into each chunk, a longer sentence cut "
                        "on tokens; the overlap repeats the last sentences that fit in M tokens (default: %(default)s)")  # fmt: skip
    chunks.add_argument("--late-chunking", action="store_true", help="embed each document once and pool each chunk "
                        "from its tokens' states (mean), so every chunk sees its document (arXiv 2409.04701)")  # fmt: skip
    chunks.add_argument("--keep-text", action="store_true", help="write each chunk's text too")
    job = embed.add_argument_group("corpus jobs")
    job.add_argument("--id-field", help="carry this id field / column to the output (default: the row number, as 'id')")
    job.add_argument("--keep-columns", type=_names, default=(), metavar="A,B", help="copy these fields / columns to the output")
    job.add_argument("--resume", action="store_true", help="continue an interrupted job from its last finished part")
    job.add_argument("--overwrite", action="store_true", help="replace an existing output (and drop an unfinished job)")
    job.add_argument("--window", type=positive_int, default=defaults.WINDOW_ROWS, metavar="ROWS",
                     help="rows sorted by length and embedded together; each is one resumable part (default: %(default)s)")
    ray = embed.add_argument_group("Ray Data (pip install 'gte-engine[ray]')")
    ray.add_argument("--ray", action="store_true", help="run on a Ray cluster: --input a dataset, --output a directory of parquet files")
    ray.add_argument("--ray-address", metavar="ADDR", help="the cluster to join (default: start a local one)")
    ray.add_argument("--ray-workers", type=positive_int, metavar="N", help="model actors (default: from the cluster's CPUs and GPUs)")
    ray.add_argument("--ray-cpus-per-worker", type=float, metavar="C", help="CPUs per actor (default: up to 4, one in eight kept for I/O)")
    ray.add_argument("--ray-gpus-per-worker", type=float, metavar="G", help="GPUs per actor (default: 1 when the cluster has GPUs)")
    embed.set_defaults(run="gte.cli:run_embed")

    rerank = commands.add_parser("rerank", help="score documents against a query, best first")
    rerank.add_argument("documents", nargs="*", metavar="DOC", help="documents (default: --input, else stdin lines)")
    rerank.add_argument("--query", "-q", required=True, help="the query")
    _add_model_arguments(rerank, None, f"reranker checkpoint directory or hub id (default: {defaults.DEFAULT_RERANKER}, "
                         "from the Hugging Face cache or the hub)")
    _add_input_arguments(rerank)
    rerank.add_argument("--top-k", type=positive_int, help="print only the best K documents (K >= 1)")
    rerank.add_argument("--normalize", action="store_true", help="sigmoid of the logit (a score in 0..1)")
    _add_truncation_side(rerank, "query-document pair")
    rerank.add_argument("--format", choices=RERANK_FORMATS, default="text", help="text: score<TAB>index<TAB>document "
                        "per line, tabs, line breaks and backslashes in documents escaped as \\t \\n \\r \\\\; jsonl: "
                        '{"index", "score", "text"} per line (default: %(default)s)')  # fmt: skip
    rerank.set_defaults(run="gte.cli:run_rerank")

    classify = commands.add_parser("classify", help="each label's score for texts (or text pairs), best first")
    classify.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify (default: --input, else stdin lines)")
    _add_model_arguments(classify, None, "sequence classifier checkpoint directory or hub id (required: none ships "
                         "with gte)")  # fmt: skip
    _add_input_arguments(classify)
    classify.add_argument("--pair", metavar="TEXT", help="encode TEXT as the second text of a pair with each text (an "
                          "NLI hypothesis, say)")  # fmt: skip
    classify.add_argument("--top-k", type=positive_int, help="print only the best K labels of each text (K >= 1)")
    classify.add_argument("--activation", choices=defaults.ACTIVATIONS, help="softmax over the labels, sigmoid of each, "
                          "or none (the logits) (default: the checkpoint's: sigmoid for a multi-label or one-label "
                          "checkpoint, else softmax)")  # fmt: skip
    _add_truncation_side(classify, "text (or pair)")
    classify.add_argument("--format", choices=RERANK_FORMATS, default="text", help="text: index, then label<TAB>score "
                          "for each label, tab-separated, one text a line; jsonl: {\"index\", \"text\", \"labels\": "
                          "[{\"label\", \"score\"}, ...]} per line (default: %(default)s)")  # fmt: skip
    classify.set_defaults(run="gte.cli:run_classify")

    _add_eval_parser(commands)
    _add_train_parser(commands)

    info = commands.add_parser("info", help="architecture, size and config of a checkpoint; attention backends here")
    info.add_argument("model", nargs="?", default=defaults.DEFAULT_MODEL,
                      help=f"directory or hub id (default: {defaults.DEFAULT_MODEL}, embedded)")
    info.add_argument("--revision", metavar="REV", help=REVISION_HELP)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.add_argument("--int8", action="store_true", help="also load the model in int8 and report its cosine to float32 "
                      "on gte's probe texts (int8_fidelity)")  # fmt: skip
    info.set_defaults(run="gte.cli:run_info")

    _add_serve_parser(commands)
    _add_export_parser(commands)
    return parser


def _add_serve_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="HTTP embedding, reranking and classification server (OpenAI, TEI and "
                                "Cohere APIs)")  # fmt: skip
    add = serve.add_argument
    add("--model", "-m", action="append", help=f"checkpoint directory or hub id (default: {defaults.DEFAULT_MODEL}); a "
        "sequence classifier with one label (a reranker) serves /rerank and /predict, one with more labels /predict, "
        "any other checkpoint the embedding routes; repeat it to serve several models (requests name theirs in "
        "`model`)")  # fmt: skip
    add("--revision", action="append", metavar="REV", help=f"{REVISION_HELP}; with several --model, one per --model")
    add("--ranges", action="append", metavar="FILE.npy", help="int8 / uint8 calibration of an embedding model: each "
        "dimension's low and high, a [2, dim] .npy (numpy.save of gte.quantize.calibration_ranges(vectors)), for Cohere's "
        "embedding_types; with several --model, one per --model (`none` for a model without)")  # fmt: skip
    add("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0 for every interface)")
    add("--port", type=int, default=8080, help="port to listen on, 0 to 65535 (default: %(default)s; 0 picks a free one)")
    add("--device", help="cpu, cuda, cuda:1, ... (default: cuda when present)")
    add("--dtype", choices=DTYPES, help=DTYPE_HELP)
    add("--threads", type=positive_int, metavar="N", help=THREADS_HELP)
    add("--max-input-length", type=positive_int, help="tokens per input (default: the model's max length)")
    add("--max-batch-tokens", type=positive_int, default=defaults.MAX_BATCH_TOKENS,
        help="token budget of one merged batch; a big request runs in several, taking turns with other requests "
        "(default: %(default)s)")  # fmt: skip
    add("--max-wait-ms", type=float, default=defaults.MAX_WAIT_MS,
        help="how long a lone request waits for company (default: %(default)s; requests that queue while a batch "
        "runs merge anyway)")  # fmt: skip
    add("--max-concurrent-requests", type=positive_int, default=defaults.MAX_CONCURRENT_REQUESTS,
        help="inference requests in flight per model; beyond it the server answers 429 with Retry-After "
        "(default: %(default)s)")  # fmt: skip
    add("--max-client-batch-size", type=positive_int, default=defaults.MAX_CLIENT_BATCH_SIZE,
        help="inputs per request, cut into batches inside the server; beyond it the server answers 413 "
        "(default: %(default)s, OpenAI's limit)")  # fmt: skip
    add("--api-key", default=os.environ.get(API_KEY_ENV),
        help=f"require `Authorization: Bearer <key>` on every route but /health (default: ${API_KEY_ENV})")  # fmt: skip
    add("--served-model-name", action="append",
        help="the name clients send as `model`, one per --model (default: the checkpoint directory's name, "
        "or the hub id)")  # fmt: skip
    add("--payload-limit", type=positive_int, default=defaults.PAYLOAD_LIMIT,
        help="bytes per request body; larger bodies get 413 before they are read (default: %(default)s)")  # fmt: skip
    add("--body-timeout", type=float, default=defaults.BODY_TIMEOUT_S,
        help="seconds a request body may take to arrive; slower ones get 408 (default: %(default)s)")  # fmt: skip
    add("--graceful-shutdown-timeout", type=float, default=30.0,
        help="seconds to finish the requests in flight after SIGTERM before cancelling them (default: %(default)s)")  # fmt: skip
    prompts = serve.add_mutually_exclusive_group()
    prompts.add_argument("--default-prompt-name", metavar="NAME", help="put the checkpoint's prompt NAME before the "
                         "texts of requests without prompt_name (default: the checkpoint's default prompt, if any)")  # fmt: skip
    prompts.add_argument("--default-prompt", metavar="TEXT", help="put TEXT before the texts of requests without "
                         "prompt_name")  # fmt: skip
    add("--no-batching", action="store_true", help="run every request as its own batch (a benchmark baseline)")
    add("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    serve.set_defaults(run="gte.server:serve")


def _add_export_parser(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="export a checkpoint to another format (ONNX)")
    formats = export.add_subparsers(dest="format", required=True, metavar="FORMAT")
    onnx = formats.add_parser("onnx", help="ONNX graph + config, tokenizer and sentence-transformers files",
                              description=EXPORT_ONNX_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    onnx.add_argument("model", metavar="MODEL", help="checkpoint directory or hub id (any gte head, BERT, XLM-R)")
    onnx.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="output directory (the graph goes to OUT_DIR/onnx/model.onnx)")
    onnx.add_argument("--revision", metavar="REV", help=REVISION_HELP)
    onnx.add_argument("--opset", type=int, default=20, help="ONNX opset, 18 to 22 (default: %(default)s)")
    onnx.add_argument("--quantize", choices=("int8",), help="also write onnx/model_quantized.onnx (int8 weights)")
    onnx.add_argument("--force", action="store_true", help="write into a non-empty OUT_DIR")
    onnx.add_argument("--pooling", metavar="MODE", help="the pooling of the sentence_embedding output, as gte embed's "
                      "(default: the checkpoint's Pooling module, else cls)")  # fmt: skip
    onnx.set_defaults(run="gte.cli:run_export_onnx")


EXPORT_ONNX_HELP = """Export a checkpoint to ONNX: OUT_DIR/onnx/model.onnx (inputs input_ids, attention_mask [+ token_type_ids];
outputs last_hidden_state [+ the head's] [+ sentence_embedding: the checkpoint's Pooling, Dense and Normalize])
with the checkpoint's config, tokenizer and sentence-transformers files, the layout fastembed, TEI's ORT backend,
transformers.js and optimum read. What the graph leaves to the consumer (prompts, tokenizer settings) is printed.
The graph is checked against PyTorch with ONNX Runtime. Needs the onnx extra: pip install '.[onnx]'.

examples:
  gte export onnx Alibaba-NLP/gte-base-en-v1.5 ./gte-base-onnx
  gte export onnx ./my-checkpoint ./my-onnx --quantize int8 --force
"""


class CommandParser(argparse.ArgumentParser):
    """argparse, with errors as one line (exit 2) and arguments checked to be UTF-8 text."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        self._check_utf8(namespace)
        return namespace, extras

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    def _check_utf8(self, namespace: argparse.Namespace) -> None:
        """Bytes that are not UTF-8 reach sys.argv as lone surrogates (surrogateescape): refuse them here."""
        for action in self._actions:
            value = getattr(namespace, action.dest, None)
            if any(isinstance(v, str) and not _is_utf8(v) for v in (value if isinstance(value, list) else [value])):
                name = "/".join(action.option_strings) or action.metavar or action.dest
                self.error(f"argument {name}: not UTF-8 text (pass UTF-8; iconv converts other encodings)")


EMBED_HELP = f"""Embed texts with a GTE v1.5 or BERT-family checkpoint (default: {defaults.DEFAULT_MODEL}, which ships
with gte and works offline).

examples:
  gte embed "what is the capital of China?" "how to implement quick sort in python?"
  gte embed --model Alibaba-NLP/gte-base-en-v1.5 "what is the capital of China?"
  gte embed --input docs.jsonl --field body --id-field doc_id --output vectors.parquet
  gte embed --input docs/ --output vectors.parquet --resume      (a parquet dataset; continue where it stopped)
  gte embed --model ./gte-base-en-v1.5 --input lines.txt --output vectors.npy --dim 256
  cat lines.txt | gte embed > vectors.jsonl
"""


def _add_eval_parser(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("eval", help="measure a model's quality on your data: retrieval (nDCG, MRR, "
                                   "Recall, MAP, P at k) or STS (Spearman, Pearson)")  # fmt: skip
    kinds = evaluate.add_subparsers(dest="eval_kind", required=True, metavar="KIND")
    retrieval = kinds.add_parser("retrieval", help="retrieval metrics with trec_eval's definitions", description=(
        "Embed the corpus (cached: a second run re-uses the vectors) and the queries, search exactly, and print nDCG, "
        "MRR, Recall, MAP and Precision at each cutoff. Inputs in BEIR's layout (corpus.jsonl with _id, title, text; "
        "queries.jsonl with _id, text; a qrels TSV with the header query-id corpus-id score), .csv or parquet with "
        "the same columns, or one --pairs file of query (or anchor), positive."))  # fmt: skip
    data = retrieval.add_argument_group("the retrieval set")
    data.add_argument("--corpus", help="documents: .jsonl, .csv or parquet with an id and a text (and a title)")
    data.add_argument("--queries", help="queries: .jsonl, .csv or parquet with an id and a text")
    data.add_argument("--qrels", help="relevance judgements: TSV query-id, corpus-id, score (graded allowed)")
    data.add_argument("--pairs", help="instead of the three: (query, positive) pairs, .jsonl, .csv or parquet")
    data.add_argument("--id-field", default="_id", help="the id field / column (default: %(default)s)")
    data.add_argument("--field", default="text", help="the text field / column (default: %(default)s)")
    data.add_argument("--title-field", default="title", help="a document title put before its text, where the "
                      "corpus has it (default: %(default)s)")  # fmt: skip
    data.add_argument("--ignore-missing", action="store_true", help="evaluate without the judgements that name "
                      "queries or documents the files lack (default: stop, saying how many)")  # fmt: skip
    _add_model_arguments(retrieval, defaults.DEFAULT_MODEL)
    retrieval.add_argument("--k", type=_cutoffs, default=(1, 10, 100), metavar="K,K", help="cutoffs (default: 1,10,100)")
    retrieval.add_argument("--dims", type=_cutoffs, default=(), metavar="D,D", help="also score these Matryoshka "
                           "dimensions (first D values, re-normalised), from the same vectors")  # fmt: skip
    retrieval.add_argument("--precision", nargs="+", choices=("int8", "binary"), default=(), metavar="P",
                           help="also score the vectors quantized: int8 (each dimension in 256 buckets of its range over "
                           "the corpus), binary (sign bits, Hamming distance); with each --dims")  # fmt: skip
    retrieval.add_argument("--plot", type=Path, metavar="FILE.png", help="plot nDCG@10 (else at the largest cutoff) "
                           "against the dimensions, a line per precision (needs matplotlib: the eval extra)")  # fmt: skip
    retrieval.add_argument("--rerank", metavar="MODEL", help="rerank the first stage's top hits with this cross-encoder")
    retrieval.add_argument("--rerank-top-k", type=positive_int, default=100, metavar="K",
                           help="hits per query to rerank (default: %(default)s)")
    retrieval.add_argument("--cache", type=Path, metavar="DIR", help="where corpus vectors are kept between runs "
                           "(default: gte-eval-cache beside --output, else $GTE_EVAL_CACHE, else ~/.cache/gte/eval)")  # fmt: skip
    retrieval.add_argument("--output", "-o", type=Path, help="also write the report as JSON here")
    retrieval.set_defaults(run="gte.cli:run_eval_retrieval")
    sts = kinds.add_parser("sts", help="Spearman and Pearson correlation of cosine similarity with gold scores")
    sts.add_argument("--pairs", required=True, help="a .jsonl, .csv or parquet file of sentence1, sentence2, score")
    _add_model_arguments(sts, defaults.DEFAULT_MODEL)
    sts.add_argument("--output", "-o", type=Path, help="also write the report as JSON here")
    sts.set_defaults(run="gte.cli:run_eval_sts")


def _add_train_parser(commands: argparse._SubParsersAction) -> None:
    training = commands.add_parser("train", help="fine-tune a model on your data (on the unpadded engine)")
    kinds = training.add_subparsers(dest="train_kind", required=True, metavar="KIND")
    embed = kinds.add_parser("embed", help="an embedding model, on (anchor, positive[, negative ...]) rows", description=(
        "Fine-tune an embedding model with in-batch negatives (sentence-transformers' MultipleNegativesRankingLoss, "
        "its cached variant, or Matryoshka) and save it in the layout it came from, with its sentence-transformers "
        "files: gte, sentence-transformers and transformers load it as they loaded the original. Data: .jsonl, .csv "
        "or parquet with columns anchor (or query, question), positive (or document, answer) and any negative* "
        "columns; else its text columns in order. With torchrun, every process takes its share of each batch."))  # fmt: skip
    _add_training_arguments(embed, defaults.DEFAULT_MODEL, defaults.TRAIN_LOSSES, "mnrl: in-batch and hard negatives; "
                            "cached-mnrl: the same loss at one micro-batch's memory (large batches); matryoshka: summed "
                            "over --matryoshka-dims", "rows")  # fmt: skip
    add = embed.add_argument
    add("--scale", type=float, default=defaults.TRAIN_SCALE, help="similarity scale, 1/temperature (default: %(default)s)")
    add("--similarity", choices=("cosine", "dot"), default="cosine", help="(default: %(default)s)")
    add("--directions", type=_names, default=("query_to_doc",), metavar="D,D", help="terms of the softmax: "
        f"{', '.join(defaults.TRAIN_DIRECTIONS)}; all four are GTE's improved contrastive loss (default: query_to_doc)")  # fmt: skip
    add("--matryoshka-dims", type=_cutoffs, default=(), metavar="D,D", help="dimensions for --loss matryoshka")
    add("--matryoshka-weights", type=_floats, metavar="W,W", help="a weight per dimension (default: 1 each)")
    add("--eval", metavar="SET", help="evaluate retrieval before, at each checkpoint and after: a (query, positive) "
        "pairs file, or a BEIR directory (corpus.jsonl, queries.jsonl, qrels/test.tsv)")  # fmt: skip
    embed.set_defaults(run="gte.cli:run_train")
    rerank = kinds.add_parser("rerank", help="a cross-encoder, on labelled (query, document) pairs", description=(
        "Fine-tune a cross-encoder (a one-label sequence classifier: gte-multilingual-reranker-base, BERT-family "
        "cross-encoders) with sentence-transformers' CrossEncoder losses and save it in the layout it came from. "
        "Data: .jsonl, .csv or parquet with a query column, a document column and a label column (label or score, "
        "0..1); or (anchor, positive, negative ...) rows, read as pairs labelled 1 and 0."))  # fmt: skip
    _add_training_arguments(rerank, None, defaults.RERANK_LOSSES, "bce: binary cross-entropy per pair; listnet: "
                            "ListNet over each query's candidates (the pairs sharing its text)", "pairs (listnet: queries)")  # fmt: skip
    rerank.set_defaults(run="gte.cli:run_train")


def _add_training_arguments(parser: argparse.ArgumentParser, model: str | None, losses: tuple[str, ...], loss_help: str,
                            units: str) -> None:  # fmt: skip
    add = parser.add_argument
    add("--data", required=True, help="training data: .jsonl, .csv or parquet")
    add("--output", "-o", required=True, type=Path, help="the fine-tuned model's directory (checkpoints in OUTPUT/checkpoints)")
    add("--model", "-m", default=model, required=model is None,
        help=f"the model to start from (default: {model}, embedded)" if model else "the model to start from (required)")
    add("--loss", choices=losses, default=losses[0], help=f"{loss_help} (default: %(default)s)")
    add("--batch-size", type=positive_int, default=defaults.TRAIN_BATCH_SIZE, help=f"{units} per step (default: %(default)s)")
    add("--epochs", type=positive_int, default=1, help="passes over the data (default: %(default)s)")
    add("--steps", type=positive_int, help="optimizer steps, instead of --epochs")
    add("--lr", type=float, default=defaults.TRAIN_LR, help="peak learning rate (default: %(default)s)")
    add("--warmup", type=float, default=defaults.TRAIN_WARMUP, help="linear warm-up: a fraction of the steps (< 1) or "
        "a number of steps; then linear decay to 0 (default: %(default)s)")  # fmt: skip
    add("--weight-decay", type=float, default=0.0, help="AdamW weight decay, not on biases and norms (default: %(default)s)")
    add("--max-grad-norm", type=float, default=1.0, help="gradients clipped to this norm (default: %(default)s)")
    add("--max-length", type=positive_int, help="truncate texts to this many tokens (default: from the checkpoint)")
    add("--dtype", choices=("auto", "float32", "bf16"), default="auto", help="bf16: bfloat16 autocast, weights and "
        "optimizer in float32; auto: bf16 on a GPU that has it, else float32 (default: %(default)s)")  # fmt: skip
    add("--batch-tokens", type=positive_int, help="tokens per forward micro-batch (default: the device's batch_tokens)")
    add("--gradient-checkpointing", action="store_true", help="recompute activations in the backward pass: less memory")
    add("--save-steps", type=positive_int, metavar="N", help="a checkpoint every N steps, for --resume")
    add("--resume", action="store_true", help="continue from the last checkpoint in OUTPUT/checkpoints")
    add("--seed", type=int, default=0, help="data order and dropout (default: %(default)s)")
    add("--device", help="cpu, cuda, cuda:1, ... (default: cuda when present; torchrun: each rank's GPU)")
    add("--threads", type=positive_int, metavar="N", help=THREADS_HELP)
    add("--progress", action=argparse.BooleanOptionalAction, help="progress bar (default: on a terminal)")


def _floats(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {value!r}") from None


def _cutoffs(value: str) -> tuple[int, ...]:
    try:
        numbers = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a list of integers like 1,10,100") from None
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: give positive integers, like 1,10,100")
    return numbers


def _add_model_arguments(parser: argparse.ArgumentParser, default: str | None, help: str | None = None) -> None:
    help = help or f"checkpoint directory or hub id (default: {default}, embedded: works offline)"
    parser.add_argument("--model", "-m", default=default, help=help)
    parser.add_argument("--revision", metavar="REV", help=REVISION_HELP)
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when present)")
    parser.add_argument("--dtype", choices=DTYPES, help=DTYPE_HELP)
    parser.add_argument("--max-length", type=positive_int, help="truncate inputs to this many tokens (default: from the checkpoint)")
    parser.add_argument("--batch-tokens", type=positive_int, help=f"tokens per batch (default: {defaults.CPU_BATCH_TOKENS} on "
                        f"CPU, {defaults.GPU_BATCH_TOKENS} on GPU)")
    parser.add_argument("--threads", type=positive_int, metavar="N", help=THREADS_HELP)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, help="progress bar (default: on a terminal)")


def _add_truncation_side(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--truncation-side", choices=("right", "left"), help=f"which end of an over-long {what} goes: "
                        "right keeps the start (the default), left keeps the end")  # fmt: skip


def _add_input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", "-i", help="a .txt (one text a line), .jsonl, .csv or .parquet file; or a directory, "
                        "glob or URI (s3://, gs://) of parquet files")  # fmt: skip
    parser.add_argument("--field", default=defaults.DEFAULT_FIELD, help="JSON field or column holding the text (default: %(default)s)")


def _names(value: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",") if name.strip())


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ------------------------------------------------------------------------------ the process's end
_SIGNAL_WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


class _Received:
    signum: int = signal.SIGINT


@contextmanager
def _terminate_as_interrupt() -> Iterator[_Received]:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so that `finally` blocks run (temporary files go)
    and a job can save where it was; `received.signum` says which signal it was. Only in the main thread."""
    received = _Received()
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def interrupt(signum: int, frame) -> None:
        received.signum = signum
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def _spare_the_exit_collections() -> None:
    """The process ends next: keep the interpreter's shutdown from walking, in several garbage collections, every
    object that torch and transformers made (about 0.9 s of a 4 s `gte embed "hello"`). Objects are still freed as
    their references go and atexit handlers run; only cyclic garbage is left to the operating system (gte closes
    its files itself)."""
    gc.freeze()


def _discard_stdout() -> None:
    """Point stdout at /dev/null so that flushing it at exit raises no second BrokenPipeError."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's capture)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
