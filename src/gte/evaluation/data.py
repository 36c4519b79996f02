"""A retrieval set read from files: documents, queries and relevance judgements (qrels), checked before any work.

BEIR's layout: corpus.jsonl (`_id`, `title`, `text`), queries.jsonl (`_id`, `text`), a qrels TSV with the header
`query-id corpus-id score` (graded relevance allowed). Documents and queries may also be .csv or parquet (and
their id and text columns named otherwise); or, instead of the three, one file of (query, positive document)
pairs, whose distinct texts become the queries and the documents and each pair a judgement.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..sources import InputError, open_source

PAIR_COLUMNS = (("query", "positive"), ("anchor", "positive"))  # as sentence-transformers' datasets name them


@dataclass
class RetrievalSet:
    corpus_ids: list[str]
    corpus: list[str]  # document texts ("title text" where a title is given)
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]  # query id -> document id -> relevance grade


def read_columns(location: str | os.PathLike, text: str, columns: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, list]:
    """{column: values} of a .jsonl, .csv or parquet file whose column `text` holds strings; `optional` columns
    only where the file has them."""
    source = open_source(location, text)
    try:
        source.scan([*columns, *optional])
    except InputError:
        if not optional:
            raise
        return read_columns(location, text, columns)
    wanted = [*columns, *optional]
    values: dict[str, list] = {c: [] for c in wanted}
    for chunk in source.chunks(wanted):
        for column in wanted:
            values[column].extend(chunk.column(column).to_pylist())
    return values


def read_texts(location: str | os.PathLike, id_field: str, text_field: str, title_field: str | None, kind: str) -> tuple[list[str], list[str]]:
    """(ids, texts) of documents or queries; a title, where the file has one, goes before its text."""
    values = read_columns(location, text_field, (id_field, text_field), (title_field,) if title_field else ())
    ids = [str(i) for i in values[id_field]]
    texts = values[text_field]
    if title_field in values:
        texts = [f"{title} {text}".strip() if title else text for title, text in zip(values[title_field], texts)]
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    if duplicates:
        raise InputError(f"{location}: {len(duplicates)} {kind} ids appear more than once (first: {duplicates[0]!r}); "
                         "give each row its own id")  # fmt: skip
    empty = [i for i, text in zip(ids, texts) if not text or not text.strip()]
    if empty:
        raise InputError(f"{location}: {len(empty)} {kind} texts are empty (first id: {empty[0]!r}); remove them")
    return ids, texts


def read_qrels(location: str | os.PathLike) -> dict[str, dict[str, int]]:
    """BEIR's qrels TSV (header `query-id corpus-id score`), or TREC's (`query 0 document grade`, no header)."""
    path = Path(location)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    qrels: dict[str, dict[str, int]] = {}
    for number, row in _qrels_rows(path):
        query, document, grade = row
        try:
            qrels.setdefault(query, {})[document] = int(grade)
        except ValueError:
            raise InputError(f"{path}, line {number}: relevance {grade!r} is not an integer") from None
    if not qrels:
        raise InputError(f"{path}: no judgements in it")
    return qrels


def _qrels_rows(path: Path) -> Iterator[tuple[int, tuple[str, str, str]]]:
    """(line number, (query id, document id, grade)) of each judgement; a first line whose grade is no integer is
    a header."""
    with path.open(encoding="utf-8-sig", newline="") as stream:
        for number, line in enumerate(stream, 1):
            fields = line.rstrip("\r\n").split("\t") if "\t" in line else line.split()
            if len(fields) == 4:  # TREC: query iteration document grade
                fields = [fields[0], fields[2], fields[3]]
            if not line.strip() or (number == 1 and len(fields) == 3 and not _is_integer(fields[2])):
                continue
            if len(fields) != 3:
                raise InputError(f"{path}, line {number}: expected `query-id corpus-id score` (tab-separated), got "
                                 f"{len(fields)} fields")  # fmt: skip
            yield number, (fields[0].strip(), fields[1].strip(), fields[2].strip())


def _is_integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def read_pairs(location: str | os.PathLike) -> RetrievalSet:
    """A retrieval set from (query, positive) pairs: each distinct text once, ids by first appearance."""
    source = open_source(location, "positive")
    for columns in PAIR_COLUMNS:
        try:
            source.scan(list(columns))
            break
        except InputError:
            continue
    else:
        raise InputError(f"{location}: a pairs file needs the columns query (or anchor) and positive")
    values = read_columns(location, columns[1], columns)
    queries = list(dict.fromkeys(values[columns[0]]))
    documents = list(dict.fromkeys(values[columns[1]]))
    query_ids = {text: f"q{i}" for i, text in enumerate(queries)}
    document_ids = {text: f"d{i}" for i, text in enumerate(documents)}
    qrels: dict[str, dict[str, int]] = {}
    for query, document in zip(values[columns[0]], values[columns[1]]):
        qrels.setdefault(query_ids[query], {})[document_ids[document]] = 1
    return RetrievalSet(list(document_ids.values()), documents, list(query_ids.values()), queries, qrels)


def check_qrels(data: RetrievalSet, ignore_missing: bool) -> list[str]:
    """Judgements naming queries or documents the set lacks: an InputError, or with `ignore_missing` dropped (the
    words saying what was dropped are returned)."""
    queries, documents = set(data.query_ids), set(data.corpus_ids)
    unknown_queries = [q for q in data.qrels if q not in queries]
    unknown_documents = {d for judged in data.qrels.values() for d in judged if d not in documents}
    if not unknown_queries and not unknown_documents:
        return []
    words = (f"the qrels name {len(unknown_queries)} query ids not in the queries and {len(unknown_documents)} "
             "document ids not in the corpus")  # fmt: skip
    if not ignore_missing:
        first = unknown_queries[0] if unknown_queries else sorted(unknown_documents)[0]
        raise InputError(f"{words} (first: {first!r}); fix the files, or pass --ignore-missing to evaluate without them")
    data.qrels = {
        q: {d: g for d, g in judged.items() if d in documents} for q, judged in data.qrels.items() if q in queries
    }
    data.qrels = {q: judged for q, judged in data.qrels.items() if judged}
    return [f"{words}: left out"]
