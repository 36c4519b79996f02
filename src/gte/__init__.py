"""gte: the GTE v1.5 "new" encoder family, exact and fast on CPU and GPU, no trust_remote_code.

Importing the package registers model_type "new" with the transformers Auto classes.
"""

from transformers import (
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
