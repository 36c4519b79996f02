"""Request bodies of the OpenAI, TEI and Cohere routes, validated by pydantic (failures become readable 422s).

Bodies say exactly what they mean: a field a route does not take is refused by name (never ignored), and
types are strict (no "false" for false, no "3" or 3.0 for 3). Fields that OpenAI's, TEI's or Cohere's
schema defines for a route but gte does not implement are refused with what to do instead (`unsupported`).

Inputs arrive as a string, a list of strings, a list of token ids or a list of token-id lists; they
leave validation as `Texts` (list[str]) or `TokenLists` (list[list[int]]). Token ids are used as
given: include the special tokens ([CLS] ... [SEP]) the way `Embedder.tokenize` returns them.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from gte_defaults import ACTIVATIONS

INPUT_FORMS = "a string, a list of strings, a list of token ids or a list of token-id lists"


def parse_inputs(value: Any) -> list[str] | list[list[int]]:
    """One request's inputs as a list of texts or a list of token-id lists."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise _invalid(f"must be {INPUT_FORMS}, got {type(value).__name__}")
    if not value:
        raise _invalid("is an empty list: send at least one input")
    if all(isinstance(v, str) for v in value):
        return value
    if all(_is_token_id(v) for v in value):
        return [value]
    if all(isinstance(v, list) for v in value):
        bad = next((i for i, v in enumerate(value) if not v or not all(map(_is_token_id, v))), None)
        if bad is not None:
            raise _invalid(f"item {bad} must be a non-empty list of integer token ids")
        return value
    raise _invalid(f"must be {INPUT_FORMS}; got a list of {_kinds(value)}")


def _invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_inputs", message)


def _is_token_id(value: Any) -> bool:
    return type(value) is int  # not bool, not float


def _kinds(values: list) -> str:
    names = {"str": "strings", "int": "token ids", "list": "lists", "float": "numbers", "bool": "booleans",
             "dict": "objects", "NoneType": "nulls"}  # fmt: skip
    kinds = dict.fromkeys(names.get(type(v).__name__, type(v).__name__) for v in values)
    return " and ".join(kinds)


Inputs = Annotated[list[str] | list[list[int]], BeforeValidator(parse_inputs)]
Dimensions = Annotated[int | None, Field(ge=1, description="Matryoshka truncation to this many dimensions")]
# TEI's spelling, or the lower-case one TEI also takes; it leaves validation as the library's truncation side.
# "Left" cuts the start of an over-long text (keeping its end); the default is the model's side (right).
TruncationDirection = Annotated[Literal["Right", "Left", "right", "left"], AfterValidator(str.lower)]
INPUT_TYPE = 'send "prompt_name": the name of one of the checkpoint\'s prompts (like "query"), put before each text'


class RequestBody(BaseModel):
    """A request body: no field it does not name, no type coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)
    unsupported: ClassVar[dict[str, str]] = {}  # field another API defines here -> why gte refuses it, what to do


class OpenAIEmbeddingRequest(RequestBody):
    input: Inputs
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Dimensions = None
    user: str | None = None  # accepted and ignored, as OpenAI's API takes it
    truncate: bool = True  # extension: False rejects texts over the input limit with 413
    prompt_name: str | None = None  # extension (TEI's /embed field), e.g. extra_body={"prompt_name": "query"}
    late_chunking: bool = False  # Jina's extension: the inputs are the chunks of one document, in order
    unsupported = {"input_type": INPUT_TYPE}  # Cohere's and NVIDIA's field for it


class EmbedRequest(RequestBody):
    inputs: Inputs
    model: str | None = None  # extension: which served model, when there are several
    normalize: bool = True
    truncate: bool = True
    truncation_direction: TruncationDirection | None = None
    prompt_name: str | None = None  # one of the checkpoint's prompts, put before each text
    dimensions: Dimensions = None
    unsupported = {  # Cohere's embed fields
        "input_type": INPUT_TYPE,
        "embedding_types": "the vectors are float32; Cohere's POST /v1/embed and /v2/embed return int8, uint8, binary, "
        "ubinary and base64 ones",
    }


class EmbedAllRequest(RequestBody):
    inputs: Inputs
    model: str | None = None
    truncate: bool = True
    truncation_direction: TruncationDirection | None = None
    prompt_name: str | None = None


class SimilarityInputs(RequestBody):
    source_sentence: str
    sentences: Annotated[list[str], Field(min_length=1)]


class SimilarityParameters(RequestBody):
    prompt_name: str | None = None
    truncate: bool = True
    truncation_direction: TruncationDirection | None = None


class SimilarityRequest(RequestBody):
    """TEI's /similarity, which huggingface_hub's `InferenceClient.sentence_similarity` sends."""

    inputs: SimilarityInputs
    parameters: SimilarityParameters | None = None
    model: str | None = None


class EmbedSparseRequest(RequestBody):
    inputs: Inputs
    model: str | None = None
    truncate: bool = True
    truncation_direction: TruncationDirection | None = None
    unsupported = {
        "prompt_name": "prompts do not apply to sparse embeddings: the weights are those of the text's own tokens",
    }


class EmbedHybridRequest(RequestBody):
    """POST /embed_hybrid: dense and sparse vectors of each input from one encoder pass (no prompt: sparse weights
    take none)."""

    inputs: Inputs
    model: str | None = None
    normalize: bool = True
    dimensions: Dimensions = None
    truncate: bool = True
    truncation_direction: TruncationDirection | None = None
    unsupported = {
        "prompt_name": "dense and sparse vectors from one pass read the same tokens, and sparse weights take no prompt: "
        "ask /embed and /embed_sparse apart",
    }


def parse_texts(value: Any) -> list[str]:
    """A string or a non-empty list of strings, as a list."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise _invalid("must be a string or a non-empty list of strings")


def parse_id_lists(value: Any) -> list[list[int]]:
    """A list of token ids or a list of token-id lists, as a list of lists."""
    if isinstance(value, list) and value and all(_is_token_id(v) for v in value):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, list) and all(map(_is_token_id, v)) for v in value):
        return value
    raise _invalid("must be a non-empty list of integer token ids, or a list of such lists")


class TokenizeRequest(RequestBody):
    inputs: Annotated[list[str], BeforeValidator(parse_texts)]
    model: str | None = None  # extension: which served model's tokenizer (default: the first model's)
    add_special_tokens: bool = True
    prompt_name: str | None = None  # embedding models: one of the checkpoint's prompts, put before each text


class DecodeRequest(RequestBody):
    ids: Annotated[list[list[int]], BeforeValidator(parse_id_lists)]
    model: str | None = None
    skip_special_tokens: bool = True


class RerankRequest(RequestBody):
    query: str
    model: str | None = None
    texts: Annotated[list[str], Field(min_length=1)]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool = True
    truncation_direction: TruncationDirection | None = None
    unsupported = dict.fromkeys(  # Cohere's rerank fields
        ("documents", "top_n", "return_documents", "rank_fields", "max_chunks_per_doc", "max_tokens_per_doc"),
        "this is TEI's /rerank (`query`, `texts`); Cohere's rerank request goes to POST /v1/rerank or /v2/rerank",
    )


PREDICT_FORMS = "a string, a pair of strings [text, text_pair], or a batch of them [[text], [text, text_pair], ...]"


def parse_predict_inputs(value: Any) -> str | list[str] | list[list[str]]:
    """TEI's /predict inputs: one text, one pair, or a batch of one-text and two-text lists."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        if len(value) != 2:
            raise _invalid(f"is a list of {len(value)} strings; a list of strings is one pair [text, text_pair]: send "
                           "a batch as [[text], [text, text_pair], ...]")  # fmt: skip
        return value
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        bad = next((i for i, v in enumerate(value) if len(v) not in (1, 2) or not all(isinstance(t, str) for t in v)), None)
        if bad is not None:
            raise _invalid(f"item {bad} must be [text] or [text, text_pair]")
        return value
    raise _invalid(f"must be {PREDICT_FORMS}")


class PredictRequest(RequestBody):
    """TEI's /predict: each label's score for texts and text pairs."""

    inputs: Annotated[str | list[str] | list[list[str]], BeforeValidator(parse_predict_inputs)]
    model: str | None = None
    raw_scores: bool = False
    truncate: bool = True
    truncation_direction: TruncationDirection | None = None


class TextClassificationParameters(RequestBody):
    function_to_apply: Literal[ACTIVATIONS] | None = None  # type: ignore[valid-type]  (gte_defaults' names)
    top_k: Annotated[int | None, Field(ge=1)] = None


class TextClassificationRequest(RequestBody):
    """The Hugging Face Inference API's text classification at TEI's root route, which huggingface_hub's
    `InferenceClient.text_classification` sends."""

    inputs: Annotated[list[str], BeforeValidator(parse_texts)]
    parameters: TextClassificationParameters | None = None
    model: str | None = None


EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]
TEXTS_ONLY = "gte embeds texts: send them in texts"


class CohereEmbedRequest(RequestBody):
    """Cohere's /v1/embed: texts, their input type (the checkpoint's prompt of that name: app.COHERE_PROMPTS), the
    embedding types to return and which end of an over-long text to cut (NONE: refuse it)."""

    texts: Annotated[list[str], Field(min_length=1)]
    model: str | None = None
    input_type: Literal["search_document", "search_query", "classification", "clustering"] | None = None
    embedding_types: Annotated[list[EmbeddingType] | None, Field(min_length=1)] = None
    truncate: Literal["NONE", "START", "END"] = "END"
    unsupported = {"images": TEXTS_ONLY, "inputs": TEXTS_ONLY}


class CohereV2EmbedRequest(CohereEmbedRequest):
    """Cohere's /v2/embed: /v1/embed's fields, Matryoshka `output_dimension`."""

    output_dimension: Dimensions = None
    priority: int | None = None  # accepted and ignored: every request gets its fair turn
    unsupported = {**CohereEmbedRequest.unsupported,
                   "max_tokens": "each text is cut to the model's input limit, --max-input-length"}  # fmt: skip


class CohereRerankRequest(RequestBody):
    """Cohere's (and Jina's) /v1/rerank: documents as strings or objects with a text field."""

    query: str
    documents: Annotated[list[str | dict[str, str]], Field(min_length=1)]
    model: str | None = None
    top_n: Annotated[int | None, Field(ge=1)] = None
    return_documents: bool = False
    rank_fields: Annotated[list[str] | None, Field(min_length=1, max_length=1)] = None
    unsupported = {
        "max_chunks_per_doc": "documents are not chunked: each is cut to the model's input limit, --max-input-length",
        "max_tokens_per_doc": "each document is cut to the model's input limit, --max-input-length",
    }

    def texts(self) -> list[str]:
        """Each document's text: the string, or the object's `rank_fields` field ("text" by default)."""
        field = self.rank_fields[0] if self.rank_fields else "text"
        texts = []
        for i, document in enumerate(self.documents):
            if isinstance(document, dict) and field not in document:
                raise ValueError(f"documents[{i}] has no field {field!r} (it has {', '.join(document) or 'none'}): "
                                 f"give each document object a {field!r} field, or send strings")  # fmt: skip
            texts.append(document[field] if isinstance(document, dict) else document)
        return texts


class CohereV2RerankRequest(RequestBody):
    """Cohere's /v2/rerank: documents as strings, scores only."""

    query: str
    documents: Annotated[list[str], Field(min_length=1)]
    model: str | None = None
    top_n: Annotated[int | None, Field(ge=1)] = None
    priority: int | None = None  # accepted and ignored: every request gets its fair turn
    unsupported = {
        "max_tokens_per_doc": "each document is cut to the model's input limit, --max-input-length",
        "relevant_spans": "relevant spans are not computed: rank whole documents, or split them and rank the parts",
    }
