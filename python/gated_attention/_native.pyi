"""Type stubs of the extension module (re-exported by ``gated_attention``).

Tensor arguments are numpy arrays of a storage type: float32, float16, ``ml_dtypes.bfloat16``, or
uint16 bit patterns with ``dtype="bfloat16"`` (or ``"float16"``). 4-d tensors are
``[batch, seq, heads, dim]`` (``layout="bshd"``, the default) or ``[batch, heads, seq, dim]``
(``layout="bhsd"``, PyTorch SDPA's); the last axis must be contiguous, the other strides
non-negative (views and ``np.broadcast_to`` are read in place).
"""

from os import PathLike
from typing import Any, Literal, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
Layout = Literal["bshd", "bhsd"]
StorageName = Literal["float32", "float16", "bfloat16"]
Positions = Union[int, npt.ArrayLike]

def attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    layout: Layout = "bshd",
    dtype: Optional[StorageName] = None,
    scale: Optional[float] = None,
    causal: bool = False,
    alignment: Literal["bottom_right", "top_left"] = "bottom_right",
    window: Optional[int] = None,
    right_window: Optional[int] = None,
    sink_tokens: int = 0,
    softcap: Optional[float] = None,
    alibi_slopes: Optional[npt.ArrayLike] = None,
    sinks: Optional[npt.ArrayLike] = None,
    bias: Optional[npt.NDArray[np.float32]] = None,
    rope: Optional[RopeTable] = None,
    rope_positions: Optional[Positions] = None,
    gate: Optional[Array] = None,
    gate_activation: Literal["sigmoid", "silu", "ns_sigmoid"] = "sigmoid",
    gate_mode: Literal["multiplicative", "additive"] = "multiplicative",
    isa: Optional[Literal["scalar", "portable", "avx2-fma"]] = None,
    parallel: bool = True,
) -> Tuple[Array, npt.NDArray[np.float32]]:
    """Flash attention on the CPU: ``(out, lse)``.

    ``out`` has q's storage type and layout, ``[batch, q_len, heads, v_head_dim]``; ``lse`` is
    float32 ``[batch, heads, q_len]`` in natural log (``-inf`` for a row that sees no key).
    Options: ``scale`` (default ``1/sqrt(head_dim)``); ``causal`` with ``alignment``
    (bottom-right: the last query sits at the last key; top-left: PyTorch's ``is_causal``);
    ``window`` (keys a query sees, its own included), ``right_window``, ``sink_tokens`` (the
    first keys stay visible whatever the window); ``softcap`` (``c·tanh(s/c)``);
    ``alibi_slopes`` and ``sinks`` (learned sink logits), one per query head; ``bias``, float32
    ``[batch|1, heads|1, q_len|1, kv_len|1]`` (fewer axes broadcast from the left); ``rope`` a
    RopeTable rotating the queries at ``rope_positions`` (an int offset, ``[batch]`` offsets or
    ``[batch, q_len]`` ids); ``gate``, output-gate logits ``[batch, q_len, heads|1, dv|1]`` in
    the layout. Raises ValueError (the crate's message) or TypeError.

    >>> import numpy as np, gated_attention as ga
    >>> q = np.ones((1, 3, 2, 8), np.float32)
    >>> out, lse = ga.attention(q, q, q, causal=True, window=2)
    >>> out.shape, lse.shape
    ((1, 3, 2, 8), (1, 2, 3))
    """

def reference_attention(
    q: Array, k: Array, v: Array, **options: Any
) -> Tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The f64 oracle with the options of :func:`attention`: ``(out, lse)`` as float64.

    >>> import numpy as np, gated_attention as ga
    >>> q = np.ones((1, 1, 1, 4), np.float32); v = np.full((1, 2, 1, 4), 2.0, np.float32)
    >>> float(ga.reference_attention(q, q.repeat(2, 1), v)[0][0, 0, 0, 0])
    2.0
    """

def reference_bounds(
    out_dtype: StorageName, q: Array, k: Array, v: Array, **options: Any
) -> Tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``(ref_out, ref_lse, bound_out, bound_lse)``; out arrays ``[batch, q_len, heads, dv]``."""

def _bench_rust_attention(iters: int, q: Array, k: Array, v: Array, **options: Any) -> float: ...

def quantize_int8(
    x: Array, *, layout: Layout = "bshd", dtype: Optional[StorageName] = None
) -> Tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """Int8 K/V storage: ``(values, scales)``, one float32 scale per ``(batch, token, head)`` row.

    ``values`` is int8 with x's shape, ``scales`` float32 with its first three axes (``[batch,
    seq, heads]``, or ``[batch, heads, seq]`` with ``layout="bhsd"``), both C-contiguous. Each row
    gets ``scale = max|x| / 127`` and ``q = round(x / scale)`` (ties to even, within +-127), so
    ``scale * q`` is within half a step of x; a zero row gets scale 0, a row holding NaN or +-inf
    scale NaN and zeros (it dequantises to NaN).

    >>> import numpy as np, gated_attention as ga
    >>> q, s = ga.quantize_int8(np.array([1.0, -0.5, 0.25, 0.0], np.float32).reshape(1, 1, 1, 4))
    >>> q.ravel().tolist(), s.shape
    ([127, -64, 32, 0], (1, 1, 1))
    """

def dequantize_int8(
    values: npt.NDArray[np.int8], scales: npt.NDArray[np.float32], *, layout: Layout = "bshd"
) -> npt.NDArray[np.float32]:
    """``scale * q`` as float32 with the values' shape: the K or V that :func:`attention_int8`
    attends over, to hand to :func:`reference_attention` or :func:`assert_attention_close`.

    >>> import numpy as np, gated_attention as ga
    >>> ga.dequantize_int8(np.int8([[[[127, -127]]]]), np.float32([[[0.5]]])).ravel().tolist()
    [63.5, -63.5]
    """

def attention_int8(
    q: Array,
    k_values: npt.NDArray[np.int8],
    k_scales: npt.NDArray[np.float32],
    v_values: npt.NDArray[np.int8],
    v_scales: npt.NDArray[np.float32],
    **options: Any,
) -> Tuple[Array, npt.NDArray[np.float32]]:
    """:func:`attention` with int8 K and V (as :func:`quantize_int8` returns them), read in place
    and dequantised in registers: the same options, layouts and outputs (``out`` has q's type).

    It equals :func:`reference_attention` on the dequantised K and V within the f32 error model;
    the quantisation's own error (half a step per element) is the caller's choice. Values must be
    int8 with a contiguous last axis, scales float32 of shape ``values.shape[:3]`` (strided
    views, such as the first tokens of a preallocated cache, are read in place). Wrong element
    types raise TypeError, wrong shapes and the crate's errors ValueError.

    >>> import numpy as np, gated_attention as ga
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.standard_normal((1, 4, 2, 16), dtype=np.float32) for _ in range(3))
    >>> (kq, ks), (vq, vs) = ga.quantize_int8(k), ga.quantize_int8(v)
    >>> out, lse = ga.attention_int8(q, kq, ks, vq, vs, causal=True)
    >>> kd, vd = ga.dequantize_int8(kq, ks), ga.dequantize_int8(vq, vs)
    >>> ga.assert_attention_close((out, lse), q, kd, vd, causal=True)
    """

class RopeTable:
    """cos/sin tables of rotary position embeddings, every scaling of transformers.

    >>> import gated_attention as ga
    >>> t = ga.RopeTable(64, 10000.0, 128, scaling={"rope_type": "yarn", "factor": 4.0,
    ...                  "original_max_position_embeddings": 32}, max_position_embeddings=128)
    >>> t.cos.shape
    (128, 32)
    """

    def __init__(
        self,
        head_dim: int,
        base: float = 10000.0,
        positions: Optional[int] = 4096,
        *,
        rotary_dim: Optional[int] = None,
        pairing: Literal["neox", "gptj"] = "neox",
        scaling: Optional[Mapping[str, Any]] = None,
        max_position_embeddings: Optional[int] = None,
    ) -> None: ...
    @staticmethod
    def from_config(config: Union[Mapping[str, Any], str, PathLike[str]], positions: Optional[int] = None) -> RopeTable:
        """The table of a model's config.json (dict or path); positions default to max_position_embeddings."""
    @property
    def head_dim(self) -> int: ...
    @property
    def rotary_dim(self) -> int: ...
    @property
    def positions(self) -> int: ...
    @property
    def attention_factor(self) -> float: ...
    @property
    def pairing(self) -> Literal["neox", "gptj"]: ...
    @property
    def inv_freq(self) -> npt.NDArray[np.float64]: ...
    @property
    def cos(self) -> npt.NDArray[np.float32]: ...
    @property
    def sin(self) -> npt.NDArray[np.float32]: ...
    def rotate(self, x: Array, positions: Optional[Positions] = None, *, layout: Layout = "bshd",
               dtype: Optional[StorageName] = None) -> Array:
        """``x`` rotated (a new array of x's storage type)."""
    def reference_rotate(self, x: Array, positions: Optional[Positions] = None, *, layout: Layout = "bshd",
                         dtype: Optional[StorageName] = None) -> npt.NDArray[np.float64]:
        """The reference's f64 rotation (frequencies recomputed from the parameters)."""

class KvCache:
    """A KV cache: append, attend, rollback, truncate; full, sliding-window and StreamingLLM policies.

    >>> import numpy as np, gated_attention as ga
    >>> cache = ga.KvCache(1, 2, 8, capacity=16)
    >>> kv = np.ones((1, 3, 2, 8), np.float32)
    >>> cache.append(kv, kv)
    >>> out, lse = cache.attend(np.ones((1, 1, 4, 8), np.float32))
    >>> cache.len(0), out.shape
    (3, (1, 1, 4, 8))
    """

    def __init__(
        self,
        batch: int,
        kv_heads: int,
        head_dim: int,
        capacity: int,
        *,
        dtype: StorageName = "float32",
        v_head_dim: Optional[int] = None,
        policy: Literal["full", "sliding_window", "streaming_llm"] = "full",
        window: Optional[int] = None,
        sink_tokens: int = 0,
        recent: Optional[int] = None,
        max_rollback: int = 0,
    ) -> None: ...
    def append(self, k: Array, v: Array, rope: Optional[RopeTable] = None, *, row: Optional[int] = None,
               value_gate: Optional[Array] = None, layout: Layout = "bshd",
               dtype: Optional[StorageName] = None) -> None: ...
    def attend(self, q: Array, rope: Optional[RopeTable] = None, **options: Any) -> Tuple[Array, npt.NDArray[np.float32]]: ...
    def rollback(self, row: int, n: int) -> None: ...
    def truncate(self, row: int, length: int) -> None: ...
    def clear(self) -> None: ...
    def len(self, row: int) -> int: ...
    def next_position(self, row: int) -> int: ...
    def positions(self, row: int) -> list[int]: ...
    def keys(self, row: int) -> Array: ...
    def values(self, row: int) -> Array: ...
    @property
    def batch(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def dtype(self) -> StorageName: ...
    @property
    def allocated_bytes(self) -> int: ...

class GatedAttention:
    """A gated attention layer (Qwen3 / Qiu et al. / Qwen3-Next) with safetensors weights."""

    @staticmethod
    def from_pretrained(config_path: str, safetensors_path: str, prefix: str = "") -> GatedAttention: ...
    @staticmethod
    def seeded(config: Mapping[str, Any], seed: int = 0) -> GatedAttention: ...
    def new_cache(self, batch: int, capacity: int, dtype: StorageName = "float32") -> KvCache: ...
    def forward(self, x: npt.NDArray[np.float32], cache: KvCache, positions: Optional[npt.ArrayLike] = None, *,
                stats: bool = False) -> Any:
        """``[batch, L, hidden]``, or ``(y, stats_dict)`` with ``stats=True``."""
    def reference_forward(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]: ...
    @property
    def rope(self) -> RopeTable: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def num_heads(self) -> int: ...
    @property
    def num_kv_heads(self) -> int: ...
    @property
    def head_dim(self) -> int: ...
    @property
    def sliding_window(self) -> Optional[int]: ...

IndexerKind = Literal["lightning", "gated"]

def indexer_scores(q: Array, k: Array, weights: Array, *, kind: IndexerKind = "lightning",
                   bias: Optional[npt.ArrayLike] = None, scale: Optional[float] = None, causal: bool = False,
                   isa: Optional[str] = None, dtype: Optional[StorageName] = None) -> npt.NDArray[np.float32]:
    """Scores ``[batch, q_len, kv_len]`` of queries ``[batch, q_len, H_I, d_I]``, keys
    ``[batch, kv_len, 1, d_I]`` and weights ``[batch, q_len, 1, H_I]``."""

def reference_indexer_scores(q: Array, k: Array, weights: Array, *, kind: IndexerKind = "lightning",
                             bias: Optional[npt.ArrayLike] = None, scale: Optional[float] = None,
                             causal: bool = False, dtype: Optional[StorageName] = None) -> npt.NDArray[np.float64]: ...

def top_k_indices(q: Array, k: Array, weights: Array, top_k: int, *, kind: IndexerKind = "lightning",
                  bias: Optional[npt.ArrayLike] = None, scale: Optional[float] = None, causal: bool = False,
                  isa: Optional[str] = None, dtype: Optional[StorageName] = None) -> npt.NDArray[np.int32]: ...

def adaptive_top_k_indices(q: Array, k: Array, weights: Array, *, k_base: int = 2048, k_min: int = 256,
                           k_max: int = 4096, temperature: float = 1.0, kind: IndexerKind = "gated",
                           bias: Optional[npt.ArrayLike] = None, scale: Optional[float] = None,
                           causal: bool = False, isa: Optional[str] = None,
                           dtype: Optional[StorageName] = None) -> Tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]: ...

def sparse_attention(q: Array, k: Array, v: Array, indices: npt.NDArray[np.int32],
                     **options: Any) -> Tuple[Array, npt.NDArray[np.float32]]: ...

def reference_sparse_attention(q: Array, k: Array, v: Array, indices: npt.NDArray[np.int32],
                               **options: Any) -> Tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]: ...

def first_token_probabilities(q: Array, k: Array, lse: npt.NDArray[np.float32],
                              **options: Any) -> npt.NDArray[np.float64]: ...

def sink_share_per_head(p: npt.ArrayLike, exclude_first_queries: int = 0) -> npt.NDArray[np.float64]: ...

def gate_statistics(values: npt.ArrayLike) -> dict[str, float]: ...
