//! Output buffers allocated in Rust and handed to numpy without a copy.

use gated_attention::{bf16, f16, DType, ElemsMut, Layout, Tensor, TensorMut};
use numpy::{IntoPyArray, PyArrayMethods};
use pyo3::exceptions::PyMemoryError;
use pyo3::prelude::*;

use crate::arrays::Axes;

/// A fresh output of one storage type.
pub enum OutBuf {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

/// `n` zeros, or `MemoryError` when the allocator refuses (never an abort).
pub fn zeros<T: Clone + Default>(n: usize) -> PyResult<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| PyMemoryError::new_err(format!("cannot allocate an output of {n} elements")))?;
    v.resize(n, T::default());
    Ok(v)
}

/// Product of `shape`, or `MemoryError` when it overflows.
pub fn count(shape: &[usize]) -> PyResult<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &n| a.checked_mul(n))
        .ok_or_else(|| PyMemoryError::new_err(format!("an output of shape {shape:?} overflows")))
}

impl OutBuf {
    pub fn new(dtype: DType, n: usize) -> PyResult<Self> {
        Ok(match dtype {
            DType::F32 => OutBuf::F32(zeros(n)?),
            DType::F16 => OutBuf::F16(zeros(n)?),
            DType::BF16 => OutBuf::BF16(zeros(n)?),
        })
    }

    /// A copy of `t` in the contiguous layout `layout` (same logical shape).
    pub fn gather(t: &Tensor<'_>, layout: Layout) -> PyResult<Self> {
        use gated_attention::Element;
        fn fill<E: Element>(dst: &mut [E], t: &Tensor<'_>, layout: &Layout) {
            let [b, s, h, d] = layout.shape;
            let (src, dl) = (&t.layout, layout);
            for bi in 0..b {
                for si in 0..s {
                    for hi in 0..h {
                        let so = bi * src.strides[0] + si * src.strides[1] + hi * src.strides[2];
                        let doff = bi * dl.strides[0] + si * dl.strides[1] + hi * dl.strides[2];
                        for e in 0..d {
                            dst[doff + e] = E::from_f32(t.data.get_f32(so + e));
                        }
                    }
                }
            }
        }
        let n = count(&layout.shape)?;
        let mut out = OutBuf::new(t.dtype(), n)?;
        match &mut out {
            OutBuf::F32(v) => fill(v, t, &layout),
            OutBuf::F16(v) => fill(v, t, &layout),
            OutBuf::BF16(v) => fill(v, t, &layout),
        }
        Ok(out)
    }

    pub fn view(&mut self, layout: Layout) -> TensorMut<'_> {
        let data = match self {
            OutBuf::F32(v) => ElemsMut::F32(v),
            OutBuf::F16(v) => ElemsMut::F16(v),
            OutBuf::BF16(v) => ElemsMut::BF16(v),
        };
        TensorMut::new(data, layout)
    }

    /// The numpy array of logical shape `shape` (`[batch, seq, heads, dim]`) in `axes` order;
    /// f16/bf16 as `dtype` (the inputs' dtype object: float16, ml_dtypes.bfloat16 or uint16).
    pub fn into_numpy<'py>(
        self,
        py: Python<'py>,
        axes: Axes,
        shape: [usize; 4],
        dtype: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let shape = axes.numpy_shape(shape);
        let flat = match self {
            OutBuf::F32(v) => return Ok(v.into_pyarray(py).reshape(shape)?.into_any()),
            OutBuf::F16(v) => v.into_iter().map(f16::to_bits).collect::<Vec<u16>>(),
            OutBuf::BF16(v) => v.into_iter().map(bf16::to_bits).collect::<Vec<u16>>(),
        };
        flat.into_pyarray(py).reshape(shape)?.into_any().call_method1("view", (dtype,))
    }
}

/// An f32 or f64 vector as a numpy array of `shape`.
pub fn numpy_of<'py, T: numpy::Element>(py: Python<'py>, v: Vec<T>, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
    Ok(v.into_pyarray(py).reshape(shape.to_vec())?.into_any())
}

/// The numpy dtype object of a storage type: float16, `ml_dtypes.bfloat16` when that package is
/// installed, else uint16 (bf16 bit patterns).
pub fn descr_for(py: Python<'_>, dtype: DType) -> PyResult<Bound<'_, PyAny>> {
    let np = py.import("numpy")?;
    match dtype {
        DType::F32 => np.getattr("float32"),
        DType::F16 => np.getattr("float16"),
        DType::BF16 => match py.import("ml_dtypes") {
            Ok(m) => m.getattr("bfloat16"),
            Err(_) => np.getattr("uint16"),
        },
    }
}
