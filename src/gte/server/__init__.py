"""`gte serve`: an embedding / reranking / classification server speaking the OpenAI, TEI and Cohere APIs (FastAPI +
uvicorn).

    gte serve --model Alibaba-NLP/gte-base-en-v1.5 --port 8080
    gte serve --model Alibaba-NLP/gte-base-en-v1.5 --model Alibaba-NLP/gte-multilingual-reranker-base

The `gte` command (gte_cli) parses the arguments and calls `serve(args)`. `create_app({name: model},
settings)` builds the same app for tests and for embedding the server elsewhere.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket

import uvicorn

from gte_defaults import DEFAULT_MODEL

from .. import hub
from ..classify import Classifier
from ..embed import Embedder
from ..quantize import load_ranges
from ..rerank import Reranker
from .app import create_app, served_name
from .protocol import Http11
from .served import Model
from .settings import ServerSettings

__all__ = ["Http11", "ServerSettings", "create_app", "load_model", "serve", "served_name"]

CLASSIFIER_ARCHITECTURE = "NewForSequenceClassification"


def load_model(
    model: str, *, device: str | None, dtype: str | None, max_length: int | None, revision: str | None = None
) -> Model:
    """By the checkpoint's architecture: a sequence classifier with one label is a Reranker, one with more a
    Classifier; any other checkpoint an Embedder."""
    name, num_labels = hub.architecture(hub.resolve(model, revision))
    cls = Embedder if name != CLASSIFIER_ARCHITECTURE else Reranker if num_labels == 1 else Classifier
    return cls(model, device=device, dtype=dtype, max_length=max_length, revision=revision)


def serve(args: argparse.Namespace) -> int:
    """Load the models, then serve until SIGTERM / SIGINT: stop accepting, finish in-flight requests (for at most
    --graceful-shutdown-timeout seconds), return 0. Bad arguments raise ValueError before the model loads."""
    # torch's intra-op threads already use every core for the model: a tokenizer thread pool beside them would
    # only take cores from it (the server tokenizes short requests inline, long ones on one thread)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port} is not a port number: give one from 0 to 65535 (0 picks a free one)")
    if args.graceful_shutdown_timeout < 0:
        raise ValueError(f"--graceful-shutdown-timeout must be >= 0, got {args.graceful_shutdown_timeout}")
    settings = ServerSettings(
        max_batch_tokens=args.max_batch_tokens,
        max_wait_ms=args.max_wait_ms,
        max_concurrent_requests=args.max_concurrent_requests,
        max_client_batch_size=args.max_client_batch_size,
        api_key=args.api_key,
        batching=not args.no_batching,
        payload_limit=args.payload_limit,
        body_timeout_s=args.body_timeout,
        default_prompt_name=args.default_prompt_name,
        default_prompt=args.default_prompt,
    )
    _check_port(args.host, args.port)  # before the models load: a busy port fails at once, not a minute later
    checkpoints = args.model or [DEFAULT_MODEL]
    names = _served_names(checkpoints, args.served_model_name)
    revisions = _per_model("--revision", args.revision, checkpoints)
    ranges = {
        name: load_ranges(path)
        for name, path in zip(names, _per_model("--ranges", args.ranges, checkpoints))
        if path not in (None, "none")
    }
    models = {
        name: load_model(model, device=args.device, dtype=args.dtype, max_length=args.max_input_length, revision=revision)
        for (name, model), revision in zip(names.items(), revisions)
    }
    app = create_app(models, settings, ranges)
    _exit_cleanly_after_shutdown()
    uvicorn.run(
        app, host=args.host, port=args.port, log_level=args.log_level, http=Http11,
        timeout_graceful_shutdown=args.graceful_shutdown_timeout,  # type: ignore[arg-type]  (a float works)
    )  # fmt: skip
    return 0


def _check_port(host: str, port: int) -> None:
    """Bind host:port and let it go again (uvicorn binds it once the models are loaded), or a ValueError saying why
    it cannot be bound."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind, proto)
    except OSError as error:
        raise ValueError(f"cannot listen on {host}:{port} ({error.strerror or error}): give an address of this "
                         "machine with --host") from None  # fmt: skip
    with listener:
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no obstacle
            listener.bind(address)
        except OSError as error:
            raise ValueError(f"cannot listen on {host}:{port} ({error.strerror or error}): stop what holds the port, "
                             "or give another with --port (0 picks a free one)") from None  # fmt: skip


def _served_names(models: list[str], names: list[str] | None) -> dict[str, str]:
    """{served name: --model}, the names from --served-model-name or the checkpoints' own."""
    chosen = _per_model("--served-model-name", names, models) if names is not None else [served_name(m) for m in models]
    if len(set(chosen)) < len(chosen):
        raise ValueError(f"two models would be served as the same name ({', '.join(chosen)}): set --served-model-name")
    return dict(zip(chosen, models))


def _per_model(option: str, values: list[str] | None, models: list[str]) -> list[str | None]:
    """An option given once per --model (None for each when it is not given)."""
    if values is None:
        return [None] * len(models)
    if len(values) != len(models):
        raise ValueError(f"{len(values)} {option} for {len(models)} --model: give one {option} per --model")
    return values


def _exit_cleanly_after_shutdown() -> None:
    """uvicorn shuts down gracefully on SIGTERM / SIGINT, then re-raises the signal to the handler it
    found; make that handler a no-op so a graceful shutdown ends in a normal exit (status 0)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
