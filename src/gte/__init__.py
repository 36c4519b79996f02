"""gte: the GTE v1.5 "new" encoder family, exact and fast on CPU and GPU, no trust_remote_code.

Importing the package registers model_type "new" with the transformers Auto classes, which needs torch
and transformers (seconds): so the `gte` command starts in the module gte_cli, beside this package, and
imports it only for the command it runs.
"""

import os

# OpenMP threads that spin while they wait (libgomp's default) take the cores from everything else on the machine,
# and from the server's event loop: beside one busy process on a 2-core machine, libgomp's default wait gave 1.2x
# less throughput and a 2x slower single text than sleeping threads (BENCHMARKS.md, omp_wait.py). Read once, when
# torch loads; a value set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .attention import available_backends
from .configuration import NewConfig
from .embed import Embedder
from .export import export_onnx
from .job import embed_corpus
from .modeling import (
    NewForMaskedLM,
    NewForMultipleChoice,
    NewForQuestionAnswering,
    NewForSequenceClassification,
    NewForTokenClassification,
    NewModel,
    NewPreTrainedModel,
)
from .rerank import Reranker

__version__ = "0.1.0"

AutoConfig.register("new", NewConfig, exist_ok=True)
for _auto, _cls in (
    (AutoModel, NewModel),
    (AutoModelForMaskedLM, NewForMaskedLM),
    (AutoModelForSequenceClassification, NewForSequenceClassification),
    (AutoModelForTokenClassification, NewForTokenClassification),
    (AutoModelForMultipleChoice, NewForMultipleChoice),
    (AutoModelForQuestionAnswering, NewForQuestionAnswering),
):
    _auto.register(NewConfig, _cls, exist_ok=True)

__all__ = [
    "Embedder",
    "Reranker",
    "embed_corpus",
    "NewConfig",
    "NewPreTrainedModel",
    "NewModel",
    "NewForMaskedLM",
    "NewForSequenceClassification",
    "NewForTokenClassification",
    "NewForMultipleChoice",
    "NewForQuestionAnswering",
    "available_backends",
    "export_onnx",
]
