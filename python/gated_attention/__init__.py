"""Verify attention kernels against an f64 oracle, from Python.

The Rust crate ``gated-attention`` on numpy arrays: its f64 reference (``reference_attention``),
its error model (``assert_attention_close``), its flash-attention CPU kernels (``attention``, and
``attention_int8`` over int8 K/V from ``quantize_int8``), RoPE tables, the KV cache, the sparse
indexers and the gating measurements.

Arrays are read in place (no copy) when their dtype is float32, float16, ``ml_dtypes.bfloat16``
(or uint16 bit patterns with ``dtype="bfloat16"``) and their last axis is contiguous; torch
tensors go in as ``t.detach().cpu().numpy()`` (bf16 tensors as
``t.view(torch.uint16).numpy()`` with ``dtype="bfloat16"``). The crate's errors are
``ValueError`` with the crate's text; wrong types are ``TypeError``.

>>> import numpy as np, gated_attention as ga
>>> rng = np.random.default_rng(0)
>>> q, k, v = (rng.standard_normal((1, 5, 4, 16), dtype=np.float32) for _ in range(3))
>>> out, lse = ga.attention(q, k, v, causal=True)
>>> ga.assert_attention_close((out, lse), q, k, v, causal=True)
"""

from __future__ import annotations

import numpy as np

from . import _native
from ._native import (
    GatedAttention,
    KvCache,
    RopeTable,
    adaptive_top_k_indices,
    attention,
    attention_int8,
    dequantize_int8,
    first_token_probabilities,
    gate_statistics,
    indexer_scores,
    quantize_int8,
    reference_attention,
    reference_indexer_scores,
    reference_sparse_attention,
    sink_share_per_head,
    sparse_attention,
    top_k_indices,
)

#: The padding entry of an index list (a slot that names no key).
PAD = -1

__all__ = [
    "attention",
    "reference_attention",
    "quantize_int8",
    "dequantize_int8",
    "attention_int8",
    "assert_attention_close",
    "attention_bounds",
    "RopeTable",
    "KvCache",
    "GatedAttention",
    "indexer_scores",
    "reference_indexer_scores",
    "top_k_indices",
    "adaptive_top_k_indices",
    "sparse_attention",
    "reference_sparse_attention",
    "first_token_probabilities",
    "sink_share_per_head",
    "gate_statistics",
    "PAD",
]

_STORAGE = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def _storage_dtype(actual: np.ndarray, declared: str | None) -> str:
    name = actual.dtype.name
    if name in _STORAGE:
        return _STORAGE[name]
    if name == "uint16" and declared in ("bfloat16", "float16"):
        return declared
    if name == "float64":
        # An f64 result (e.g. a float64 torch reference) is judged as f32 output: the tightest bound.
        return "float32"
    raise TypeError(
        f"actual: dtype {name} is not float32/float16/bfloat16 (uint16 needs dtype='bfloat16' or 'float16')"
    )


def _as_float64(x: np.ndarray, storage: str) -> np.ndarray:
    if x.dtype.name == "uint16":
        bits = x.astype(np.uint32)
        if storage == "bfloat16":
            return (bits << 16).view(np.float32).astype(np.float64)
        return x.view(np.float16).astype(np.float64)
    return np.asarray(x).astype(np.float64)


def attention_bounds(q, k, v, *, out_dtype: str = "float32", **options):
    """The oracle and its error bounds: ``(ref_out, ref_lse, bound_out, bound_lse)``, float64.

    ``ref_out`` and ``bound_out`` have the layout's shape (``[batch, q_len, heads, dv]`` for
    ``layout="bshd"``, ``[batch, heads, q_len, dv]`` for ``"bhsd"``); the LSE ones are
    ``[batch, heads, q_len]``. ``bound_*`` is the crate's error model for an f32 kernel whose
    output is stored as ``out_dtype``, capped by the crate's fixed tolerance table.
    """
    ro, rl, bo, bl = _native.reference_bounds(out_dtype, q, k, v, **options)
    if options.get("layout", "bshd") == "bhsd":
        ro, bo = ro.transpose(0, 2, 1, 3), bo.transpose(0, 2, 1, 3)
    return ro, rl, bo, bl


def _within(x: np.ndarray, r: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """|x - r| <= bound, NaN only against NaN, infinities only against themselves."""
    with np.errstate(invalid="ignore"):
        ok = np.abs(x - r) <= bound
    ok = np.where(np.isnan(r), np.isnan(x), ok)
    return np.where(np.isinf(r), x == r, ok)


def assert_attention_close(actual, q, k, v, *, max_rows: int = 5, **options) -> None:
    """Checks a kernel's attention output against the f64 oracle with the crate's error model.

    ``actual`` is the output (same layout as ``q``: ``[batch, q_len, heads, dv]``, or
    ``[batch, heads, q_len, dv]`` with ``layout="bhsd"``), or a tuple ``(out, lse)`` with the
    LSE ``[batch, heads, q_len]`` in natural log. ``options`` are those of
    :func:`reference_attention`. The bound of each element is the crate's error model for the
    problem and for ``actual``'s storage dtype (float32, float16, bfloat16; float64 results are
    held to the float32 bound), capped by the crate's fixed tolerance table.

    Raises ``AssertionError`` naming the ``max_rows`` worst rows ``(batch, head, row)``: the
    largest error, the bound there, the element, and the ratio error/bound.

    >>> import numpy as np, gated_attention as ga
    >>> q = k = v = np.ones((1, 2, 1, 4), np.float32)
    >>> ga.assert_attention_close(np.ones((1, 2, 1, 4), np.float32), q, k, v, causal=True)
    """
    lse = None
    if isinstance(actual, tuple):
        if len(actual) != 2:
            raise TypeError("actual must be an array or a tuple (out, lse)")
        actual, lse = actual
    actual = np.asarray(actual)
    storage = _storage_dtype(actual, options.get("dtype"))
    layout = options.get("layout", "bshd")
    ro, rl, bo, bl = _native.reference_bounds(storage, q, k, v, **options)
    out = _as_float64(actual, storage)
    if layout == "bhsd":
        if out.ndim == 4:
            out = out.transpose(0, 2, 1, 3)
    if out.shape != ro.shape:
        want = ro.shape if layout == "bshd" else ro.transpose(0, 2, 1, 3).shape
        raise AssertionError(f"attention output has shape {actual.shape}, the oracle {want} (layout {layout!r})")
    problems = []
    ok = _within(out, ro, bo)
    if not ok.all():
        err = np.abs(out - ro)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = err / np.maximum(bo, np.finfo(np.float64).tiny)
        # a NaN or infinity where the oracle has another value: an unbounded error
        ratio = np.where(~ok & ~(ratio > 1.0), np.inf, np.where(ok, np.minimum(ratio, 1.0), ratio))
        # out is [batch, q_len, heads, dv]: worst element per row (batch, head, row)
        per_row = ratio.max(axis=3)
        bad = np.argwhere(per_row > 1.0)
        order = np.argsort(-per_row[tuple(bad.T)], kind="stable")[:max_rows]
        for b, i, h in bad[order]:
            e = int(np.argmax(ratio[b, i, h]))
            problems.append(
                f"  out (batch={b}, head={h}, row={i}): worst at dim {e}: got {out[b, i, h, e]:.9g}, "
                f"oracle {ro[b, i, h, e]:.9g}, |error| {err[b, i, h, e]:.3e} > bound {bo[b, i, h, e]:.3e} "
                f"(x{per_row[b, i, h]:.3g}); {int((~ok[b, i, h]).sum())} of {ok.shape[3]} dims fail"
            )
        n_rows = len(bad)
        header = f"{n_rows} of {per_row.size} output rows exceed the error model ({storage} output)"
        problems.insert(0, header)
    if lse is not None:
        lse = np.asarray(lse, dtype=np.float64)
        if lse.shape != rl.shape:
            raise AssertionError(f"lse has shape {lse.shape}, the oracle {rl.shape} ([batch, heads, q_len])")
        okl = _within(lse, rl, bl)
        if not okl.all():
            errl = np.abs(lse - rl)
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = errl / np.maximum(bl, np.finfo(np.float64).tiny)
            ratio = np.where(okl, 0.0, np.where(ratio > 1.0, ratio, np.inf))
            bad = np.argwhere(~okl)
            order = np.argsort(-ratio[tuple(bad.T)], kind="stable")[:max_rows]
            problems.append(f"{len(bad)} of {lse.size} LSE entries exceed the error model")
            for b, h, i in bad[order]:
                problems.append(
                    f"  lse (batch={b}, head={h}, row={i}): got {lse[b, h, i]:.9g}, oracle {rl[b, h, i]:.9g}, "
                    f"|error| {errl[b, h, i]:.3e} > bound {bl[b, h, i]:.3e}"
                )
    if problems:
        raise AssertionError("attention output differs from the f64 oracle:\n" + "\n".join(problems))
