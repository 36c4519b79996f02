"""gte: the GTE v1.5 "new" encoder family, exact and fast on CPU and GPU, no trust_remote_code.

`import gte` registers model_type "new" with the transformers Auto classes: the config at once, the model
classes with the first NewConfig (`gte.configuration`), since no Auto class looks a model up before it has
the config. Everything else loads on first use (`gte.Embedder`, `gte.export_onnx`, `gte.hub`, ...): the model
classes pull in transformers' PreTrainedModel and with it torch._dynamo (the Embedder never does: it runs
`gte.engine`), the export torch.onnx, the corpus jobs pyarrow, seconds that an import should not cost. Registering needs torch and transformers all the same,
so the `gte` command starts in the module gte_cli, beside this package, and imports it only for the command
it runs.
"""

import importlib
import importlib.util
import os
from typing import Any

# OpenMP threads that spin while they wait (libgomp's default) take the cores from everything else on the machine,
# and from the server's event loop: beside one busy process on a 2-core machine, libgomp's default wait gave 1.2x
# less throughput and a 2x slower single text than sleeping threads (BENCHMARKS.md, omp_wait.py). Read once, when
# torch loads; a value set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .configuration import NewConfig  # noqa: E402  (registers model_type "new" with AutoConfig)

__version__ = "0.1.0"

_LAZY = {  # public name -> the module that defines it, imported on first use
    "Embedder": "embed",
    "Reranker": "rerank",
    "Classifier": "classify",
    "embed_corpus": "job",
    "NewPreTrainedModel": "modeling",
    "NewModel": "modeling",
    "NewForMaskedLM": "modeling",
    "NewForSequenceClassification": "modeling",
    "NewForTokenClassification": "modeling",
    "NewForMultipleChoice": "modeling",
    "NewForQuestionAnswering": "modeling",
    "available_backends": "attention",
    "export_onnx": "export",
    "quantize_embeddings": "quantize",
    "evaluate_retrieval": "evaluation",
    "evaluate_sts": "evaluation",
    "train": "training",
    "train_rerank": "training",
}

__all__ = ["NewConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    """A public name or a submodule, imported on first use."""
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
