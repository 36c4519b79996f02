"""Request bodies of the OpenAI and TEI routes, validated by pydantic (failures become readable 422s).

Inputs arrive as a string, a list of strings, a list of token ids or a list of token-id lists; they
leave validation as `Texts` (list[str]) or `TokenLists` (list[list[int]]). Token ids are used as
given: include the special tokens ([CLS] ... [SEP]) the way `Embedder.tokenize` returns them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field
from pydantic_core import PydanticCustomError

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


class OpenAIEmbeddingRequest(BaseModel):
    input: Inputs
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Dimensions = None
    user: str | None = None  # accepted and ignored, as OpenAI's API takes it
    truncate: bool = True  # extension: False rejects texts over the input limit with 413


class EmbedRequest(BaseModel):
    inputs: Inputs
    model: str | None = None  # extension: which served model, when there are several
    normalize: bool = True
    truncate: bool = True
    dimensions: Dimensions = None


class EmbedSparseRequest(BaseModel):
    inputs: Inputs
    model: str | None = None
    truncate: bool = True


class RerankRequest(BaseModel):
    query: str
    model: str | None = None
    texts: Annotated[list[str], Field(min_length=1)]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool = True
