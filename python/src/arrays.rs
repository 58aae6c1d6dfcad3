//! numpy arrays as the crate's strided views, without copying.
//!
//! An input array is read in place when its element type is a storage type of the crate (f32,
//! f16, bf16 from `ml_dtypes`, or uint16 bit patterns with an explicit `dtype="bfloat16"`) and its
//! strides are what a [`Layout`] can express: non-negative multiples of the element size with a
//! contiguous last axis. Everything else is a `TypeError` (element type) or `ValueError` (shape,
//! strides, alignment) naming the argument; nothing is copied behind the caller's back.

use gated_attention::{DType, Elems, Error, Layout, Operand};
use numpy::{PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// The crate's error as the `ValueError` Python sees, with the crate's text.
pub fn value_error(e: Error) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// How a 4-d array's axes map onto the crate's `[batch, seq, heads, dim]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axes {
    /// `[batch, seq, heads, dim]`.
    Bshd,
    /// `[batch, heads, seq, dim]` (PyTorch SDPA).
    Bhsd,
}

impl Axes {
    pub fn parse(s: &str) -> PyResult<Axes> {
        match s {
            "bshd" => Ok(Axes::Bshd),
            "bhsd" => Ok(Axes::Bhsd),
            _ => Err(PyValueError::new_err(format!("layout must be 'bshd' or 'bhsd', not {s:?}"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Axes::Bshd => "bshd",
            Axes::Bhsd => "bhsd",
        }
    }
    /// The numpy shape of a logical `[batch, seq, heads, dim]`.
    pub fn numpy_shape(self, [b, s, h, d]: [usize; 4]) -> [usize; 4] {
        match self {
            Axes::Bshd => [b, s, h, d],
            Axes::Bhsd => [b, h, s, d],
        }
    }
    /// The contiguous layout of a fresh output with logical shape `[batch, seq, heads, dim]`.
    pub fn contiguous(self, [b, s, h, d]: [usize; 4]) -> Layout {
        match self {
            Axes::Bshd => Layout::bshd(b, s, h, d),
            Axes::Bhsd => Layout::bhsd(b, h, s, d),
        }
    }
}

/// The storage type of an array: its dtype, or uint16 bit patterns declared as bf16/f16.
///
/// Decided from the descriptor's type number and size (no Python attribute lookups on the hot
/// path: `dtype.name` is computed in Python); only a user-defined dtype (ml_dtypes' bfloat16)
/// asks for its name.
fn storage_dtype(arr: &Bound<'_, PyUntypedArray>, declared: Option<DType>, what: &str) -> PyResult<DType> {
    use numpy::npyffi::NPY_TYPES;
    use numpy::PyArrayDescrMethods;
    let descr = arr.dtype();
    let (num, itemsize) = (descr.num(), descr.itemsize());
    if descr.is_native_byteorder() == Some(false) {
        return Err(PyTypeError::new_err(format!(
            "{what}: byte-swapped dtype {}; convert with .astype(x.dtype.newbyteorder('='))",
            descr.str()?
        )));
    }
    let found = if num == NPY_TYPES::NPY_FLOAT as i32 && itemsize == 4 {
        Some(DType::F32)
    } else if num == NPY_TYPES::NPY_HALF as i32 && itemsize == 2 {
        Some(DType::F16)
    } else if num >= NPY_TYPES::NPY_USERDEF as i32
        && itemsize == 2
        && descr.getattr("name")?.extract::<String>()? == "bfloat16"
    {
        Some(DType::BF16)
    } else {
        None
    };
    let uint16 = num == NPY_TYPES::NPY_USHORT as i32 && itemsize == 2;
    let name = || descr.getattr("name").and_then(|n| n.extract::<String>()).unwrap_or_else(|_| "?".into());
    match (found, declared) {
        (Some(t), None) => Ok(t),
        (Some(t), Some(d)) if t == d => Ok(t),
        (Some(_), Some(d)) => Err(PyTypeError::new_err(format!(
            "{what}: dtype {} contradicts dtype={:?} (declared only for uint16 bit patterns)",
            name(),
            dtype_name(d)
        ))),
        (None, Some(d)) if uint16 && d != DType::F32 => Ok(d),
        (None, _) if uint16 => Err(PyTypeError::new_err(format!(
            "{what}: uint16 arrays are read as bit patterns only with dtype='bfloat16' or dtype='float16'"
        ))),
        (None, _) => Err(PyTypeError::new_err(format!(
            "{what}: dtype {} is not a storage type (float32, float16, bfloat16 from ml_dtypes, or uint16 \
             bit patterns with dtype='bfloat16'); convert with .astype(np.float32)",
            name()
        ))),
    }
}

/// The Python name of a storage type.
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
    }
}

/// Parses `dtype=` ("float32", "float16", "bfloat16"; `None` = the arrays' own).
pub fn parse_dtype(s: Option<&str>) -> PyResult<Option<DType>> {
    match s {
        None => Ok(None),
        Some("float32") => Ok(Some(DType::F32)),
        Some("float16") => Ok(Some(DType::F16)),
        Some("bfloat16") => Ok(Some(DType::BF16)),
        Some(other) => {
            Err(PyValueError::new_err(format!("dtype must be 'float32', 'float16' or 'bfloat16', not {other:?}")))
        }
    }
}

/// A numpy array read in place as a 4-d [`Tensor`](gated_attention::Tensor) of the crate.
pub struct View<'py> {
    /// Keeps the array (and so its memory) alive while the view is.
    array: Bound<'py, PyUntypedArray>,
    ptr: *const u8,
    /// Elements spanned from `ptr` (the layout's span).
    span: usize,
    pub dtype: DType,
    pub layout: Layout,
}

impl<'py> View<'py> {
    /// Views `obj`, a 4-d array whose axes are `axes`, as `operand`.
    pub fn tensor(obj: &Bound<'py, PyAny>, axes: Axes, declared: Option<DType>, operand: Operand) -> PyResult<Self> {
        Self::named(obj, axes, declared, operand, &operand.to_string())
    }

    /// [`View::tensor`] with the argument called `what` in the messages of its own checks.
    pub fn named(
        obj: &Bound<'py, PyAny>,
        axes: Axes,
        declared: Option<DType>,
        operand: Operand,
        what: &str,
    ) -> PyResult<Self> {
        let array = as_array(obj, what)?;
        let dtype = storage_dtype(&array, declared, what)?;
        let shape = array.shape().to_vec();
        if shape.len() != 4 {
            let names = match axes {
                Axes::Bshd => "[batch, seq, heads, dim]",
                Axes::Bhsd => "[batch, heads, seq, dim]",
            };
            return Err(PyValueError::new_err(format!(
                "{what}: expected a 4-d array {names} (layout {:?}), got shape {shape:?}",
                axes.name()
            )));
        }
        let strides = element_strides(&array, dtype.size(), what)?;
        if shape[3] > 1 && strides[3] != 1 {
            return Err(value_error(Error::NonContiguousHeadDim { operand }));
        }
        let layout = match axes {
            Axes::Bshd => Layout {
                shape: [shape[0], shape[1], shape[2], shape[3]],
                strides: [strides[0], strides[1], strides[2]],
            },
            Axes::Bhsd => Layout {
                shape: [shape[0], shape[2], shape[1], shape[3]],
                strides: [strides[0], strides[2], strides[1]],
            },
        };
        let span = span(&shape, &strides, what)?;
        let ptr = data_ptr(&array, dtype.size(), span, what)?;
        Ok(View { array, ptr, span, dtype, layout })
    }

    /// The elements, borrowed for as long as the view lives.
    pub fn elems(&self) -> Elems<'_> {
        match self.dtype {
            DType::F32 => Elems::F32(self.slice()),
            DType::F16 => Elems::F16(self.slice()),
            DType::BF16 => Elems::BF16(self.slice()),
        }
    }

    /// The tensor: the elements plus the layout.
    pub fn get(&self) -> gated_attention::Tensor<'_> {
        gated_attention::Tensor::new(self.elems(), self.layout)
    }

    /// The array's dtype object (for outputs of the same storage type).
    pub fn descr(&self) -> Bound<'py, PyAny> {
        self.array.dtype().into_any()
    }

    fn slice<T>(&self) -> &[T] {
        if self.span == 0 {
            return &[];
        }
        // SAFETY: `ptr` is the array's first element, aligned for `T` (checked in `data_ptr`, `T`
        // is the array's 2- or 4-byte storage type), and with non-negative strides every element
        // of the array lies in `[ptr, ptr + span · size_of::<T>())`, one allocation that numpy
        // keeps alive while `self.array` holds a reference. The crate only reads it. (A Python
        // thread that writes the array while the GIL is released races with this read, as with
        // any buffer shared with native code; the README says not to.)
        unsafe { core::slice::from_raw_parts(self.ptr.cast::<T>(), self.span) }
    }
}

/// `obj` as a numpy array, or a `TypeError` that says how to get one.
pub fn as_array<'py>(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Bound<'py, PyUntypedArray>> {
    obj.cast::<PyUntypedArray>().cloned().map_err(|_| {
        let ty = obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
        PyTypeError::new_err(format!(
            "{what}: expected a numpy.ndarray, got {ty} (torch tensors: pass t.detach().cpu().numpy())"
        ))
    })
}

/// Strides in elements; an axis of extent <= 1 gets stride 0 (numpy leaves it arbitrary).
pub fn element_strides(array: &Bound<'_, PyUntypedArray>, size: usize, what: &str) -> PyResult<Vec<usize>> {
    let shape = array.shape();
    if shape.contains(&0) {
        // An empty array has no element to address (numpy reports strides 0): any layout fits.
        let mut strides = vec![0usize; shape.len()];
        let mut step = 1usize;
        for (s, &n) in strides.iter_mut().zip(shape).rev() {
            *s = step;
            step = step.saturating_mul(n.max(1));
        }
        return Ok(strides);
    }
    array
        .strides()
        .iter()
        .zip(shape)
        .map(|(&s, &n)| {
            if n <= 1 {
                return Ok(0);
            }
            if s < 0 || s as usize % size != 0 {
                return Err(PyValueError::new_err(format!(
                    "{what}: strides {:?} (bytes) are not non-negative multiples of the element size {size}; \
                     pass np.ascontiguousarray(x)",
                    array.strides()
                )));
            }
            Ok(s as usize / size)
        })
        .collect()
}

/// One past the largest element offset; 0 for an empty array.
pub fn span(shape: &[usize], strides: &[usize], what: &str) -> PyResult<usize> {
    if shape.contains(&0) {
        return Ok(0);
    }
    let mut last = 0usize;
    for (&n, &s) in shape.iter().zip(strides) {
        last = (n - 1)
            .checked_mul(s)
            .and_then(|x| last.checked_add(x))
            .ok_or_else(|| PyValueError::new_err(format!("{what}: strides overflow")))?;
    }
    Ok(last + 1)
}

/// The address of the first element, checked for alignment.
pub fn data_ptr(array: &Bound<'_, PyUntypedArray>, size: usize, span: usize, what: &str) -> PyResult<*const u8> {
    if span == 0 {
        return Ok(core::ptr::null());
    }
    // SAFETY: `as_array_ptr` is a valid PyArrayObject for as long as `array` is alive; reading its
    // `data` field does not dereference the data.
    let ptr = unsafe { (*array.as_array_ptr()).fields.data } as *const u8;
    if ptr.is_null() || (ptr as usize) % size != 0 {
        return Err(PyValueError::new_err(format!(
            "{what}: the array's data is not aligned to its {size}-byte elements; pass np.ascontiguousarray(x)"
        )));
    }
    Ok(ptr)
}
