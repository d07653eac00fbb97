"""Compact vectors for the first stage of a quantised search, then full-precision rescoring.

The recipe sentence-transformers documents ("Binary and Scalar Embedding Quantization"): keep
compact codes in memory, find ``rescore_multiplier * k`` candidates with them, then score only
those candidates with full precision and keep the best ``k``. Here the rescoring reads the
float32 document vectors of the candidates from the table on disk, so memory holds the codes only.

- ``binary``: ``np.packbits(x > 0)`` (sentence-transformers' ``ubinary``), dim / 8 bytes a vector,
  candidates by Hamming distance to the binarised query.
- ``int8``: per-dimension calibration ranges (min, max over the corpus), 255 steps,
  ``int8 = (x - min) / step - 128`` (sentence-transformers' ``int8``), dim bytes a vector,
  candidates by the float query's dot product with the dequantised codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUANTIZATIONS = ("int8", "binary")
_CHUNK = 1 << 17  # rows scored at a time: bounds the temporary memory of one query


def check_quantization(kind: str | None) -> str | None:
    if kind is not None and kind not in QUANTIZATIONS:
        raise ValueError(f"quantization {kind!r} is not one of {list(QUANTIZATIONS)}")
    return kind


def int8_ranges(vectors: np.ndarray) -> np.ndarray:
    """(2, dim) calibration ranges: the per-dimension minimum and maximum."""
    return np.stack([vectors.min(axis=0), vectors.max(axis=0)]).astype(np.float32)


def _steps(ranges: np.ndarray) -> np.ndarray:
    return np.maximum((ranges[1] - ranges[0]) / 255.0, 1e-12).astype(np.float32)


def quantize_int8(vectors: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """(n, dim) float32 -> (n, dim) int8 with sentence-transformers' scalar quantisation."""
    q = (vectors - ranges[0]) / _steps(ranges) - 128.0
    return np.clip(np.rint(q), -128, 127).astype(np.int8)


def quantize_binary(vectors: np.ndarray) -> np.ndarray:
    """(n, dim) float32 -> (n, ceil(dim / 64) * 8) uint8: sign bits packed, zero-padded to whole
    64-bit words (padding bits are 0 on both sides, so they never add to a Hamming distance)."""
    packed = np.packbits(vectors > 0, axis=1)  # (n, ceil(dim / 8))
    width = -(-packed.shape[1] // 8) * 8
    out = np.zeros((packed.shape[0], width), dtype=np.uint8)
    out[:, : packed.shape[1]] = packed
    return out


@dataclass
class CompactVectors:
    """The in-memory codes of one quantisation over the table's rows (scan order)."""

    kind: str
    codes: np.ndarray  # binary: (n, bytes) uint8; int8: (n, dim) int8
    ranges: np.ndarray | None = None  # int8 only, (2, dim)

    @classmethod
    def from_vectors(cls, kind: str, vectors: np.ndarray, ranges: np.ndarray | None = None) -> CompactVectors:
        check_quantization(kind)
        if kind == "binary":
            return cls(kind, quantize_binary(vectors))
        if ranges is None:
            raise ValueError("int8 quantisation needs calibration ranges")
        return cls(kind, quantize_int8(vectors, ranges), ranges)

    @property
    def bytes_per_vector(self) -> int:
        return int(self.codes.shape[1] * self.codes.itemsize)

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def candidates(self, query: np.ndarray, n: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Positions of the ``n`` best rows for one float32 query (1-D), best first.

        ``rows`` restricts the search to those positions (a ``where`` filter). Ties on the compact
        score are cut by ``np.argpartition`` and then ordered by position.
        """
        codes = self.codes if rows is None else self.codes[rows]
        n = min(n, len(codes))
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        cost = np.empty(len(codes), dtype=np.float32)  # lower is better
        if self.kind == "binary":
            qw = quantize_binary(query[None, :]).view(np.uint64)  # (1, words)
            words = codes.view(np.uint64)  # (n_rows, words)
            for s in range(0, len(words), _CHUNK):
                cost[s : s + _CHUNK] = np.bitwise_count(words[s : s + _CHUNK] ^ qw).sum(axis=1)
        else:
            assert self.ranges is not None
            # q . dequant(c) = (c + 128) . (q * step) + q . min; the constant does not change the order
            qs = (query * _steps(self.ranges)).astype(np.float32)  # (dim,)
            for s in range(0, len(codes), _CHUNK):
                cost[s : s + _CHUNK] = -(codes[s : s + _CHUNK].astype(np.float32) @ qs)
        top = np.argpartition(cost, n - 1)[:n] if n < len(cost) else np.arange(len(cost))
        top = top[np.lexsort((top, cost[top]))]  # by cost, then position
        return top if rows is None else rows[top]
