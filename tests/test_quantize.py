"""Quantized embeddings (issue #18): gte.quantize_embeddings and Embedder.encode(precision=...) give exactly the
values of sentence-transformers' quantize_embeddings for the same float32 vectors."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers.util import quantize_embeddings as st_quantize

from gte import quantize_embeddings
from gte.embed import Embedder
from gte.quantize import PRECISIONS, calibration_ranges

TEXTS = ["what is the capital of China?", "how to implement quick sort in python?", "Beijing", "sorting", "a b c"]


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("dim", [384, 13])  # 13: the last byte of the bits is partly padding
@pytest.mark.parametrize("precision", PRECISIONS)
def test_equals_sentence_transformers(precision, dim):
    rng = np.random.default_rng(dim)
    vectors, calibration = unit(rng.normal(size=(50, dim))), unit(rng.normal(size=(200, dim)))
    vectors[3] = 0.0  # zeros: no bit set, the lowest buckets
    vectors[:, 0] = 0.25  # a constant dimension: a zero range, bucket 0
    ranges = calibration_ranges(calibration)
    for ours, theirs in [
        (quantize_embeddings(vectors, precision), st_quantize(vectors, precision)),
        (quantize_embeddings(vectors, precision, ranges), st_quantize(vectors, precision, ranges=ranges)),
        (quantize_embeddings(vectors, precision, ranges), st_quantize(vectors, precision, calibration_embeddings=calibration)),
    ]:
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs)


def test_values_outside_the_ranges_clip_to_the_end_buckets():
    ranges = np.array([[-0.5, 0.0], [0.5, 1.0]], dtype=np.float32)
    vectors = np.array([[-2.0, 5.0], [0.6, -1.0], [0.0, 0.5]], dtype=np.float32)
    np.testing.assert_array_equal(quantize_embeddings(vectors, "uint8", ranges), [[0, 255], [255, 0], [127, 127]])
    np.testing.assert_array_equal(quantize_embeddings(vectors, "int8", ranges), [[-128, 127], [127, -128], [-1, -1]])


def test_embedder_encodes_at_each_precision(tiny_model_dir, monkeypatch):
    """encode(precision=p) is sentence-transformers' quantization of the float32 vectors that call computed."""
    embedder = Embedder(tiny_model_dir, device="cpu")
    computed = []
    encode_tokens = embedder.encode_tokens
    monkeypatch.setattr(embedder, "encode_tokens", lambda *a, **k: computed.append(encode_tokens(*a, **k)) or computed[-1])
    ranges = calibration_ranges(embedder.encode(TEXTS))
    for precision in PRECISIONS:
        quantized = embedder.encode(TEXTS, precision=precision)
        np.testing.assert_array_equal(quantized, st_quantize(computed[-1], precision))
        one = embedder.encode(TEXTS[0], precision=precision, ranges=ranges)
        np.testing.assert_array_equal(one, st_quantize(computed[-1], precision, ranges=ranges))
        assert embedder.encode([], precision=precision).shape[0] == 0
    assert quantized.shape == (len(TEXTS), (embedder.dimension + 7) // 8)  # ubinary, the last precision


def test_bad_precision_and_ranges_say_what_to_do(tiny_model_dir):
    embedder = Embedder(tiny_model_dir, device="cpu")
    with pytest.raises(ValueError, match="one of float32, int8, uint8, binary, ubinary"):
        embedder.encode(TEXTS, precision="int4")
    with pytest.raises(ValueError, match="pass ranges"):
        embedder.encode("one text", precision="int8")
    with pytest.raises(ValueError, match=r"ranges must be \[2, "):
        embedder.encode(TEXTS, precision="uint8", ranges=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="at least two vectors"):
        calibration_ranges(np.zeros((1, 4)))
