//! Attention on tensors that already live in device memory (caller-owned buffers), with the
//! same `Layout` strides, validation and errors as the host entry point: both go through
//! [`validate`], which mirrors [`crate::plan::Plan::check_buffers`] on (layout, length, type)
//! triples, so the emulator tests of the host path cover the checks of this one.

use core::marker::PhantomData;

use super::host::{checked_launch_plan, launch_attention, Backend, DeviceArgs, DeviceOperand, LaunchOptions};
use crate::element::DType;
use crate::error::{Error, Operand};
use crate::options::AttentionOptions;
use crate::plan::Plan;
use crate::tensor::Layout;
use crate::Dims;

/// A read-only tensor in device memory: the address of element 0, the number of elements the
/// allocation holds from there, its layout and its storage type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceTensor<'a> {
    addr: u64,
    len: usize,
    dtype: DType,
    /// Shape and strides, exactly as a host [`crate::Tensor`]'s.
    pub layout: Layout,
    _borrow: PhantomData<&'a ()>,
}

/// A writable tensor in device memory (an output).
#[derive(Debug, PartialEq, Eq)]
pub struct DeviceTensorMut<'a> {
    inner: DeviceTensor<'a>,
    _borrow: PhantomData<&'a mut ()>,
}

impl<'a> DeviceTensor<'a> {
    /// A view of raw device memory.
    ///
    /// # Safety
    /// `addr` must be the device address (on the device the tensor is used with; a host address
    /// under the emulator) of at least `len` valid elements of `dtype`, which stay allocated and
    /// are not written by anything else for `'a`.
    pub unsafe fn from_raw(addr: u64, len: usize, dtype: DType, layout: Layout) -> Self {
        DeviceTensor { addr, len, dtype, layout, _borrow: PhantomData }
    }
    /// The storage type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Elements the allocation holds from element 0.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when the allocation holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<'a> DeviceTensorMut<'a> {
    /// A writable view of raw device memory.
    ///
    /// # Safety
    /// As [`DeviceTensor::from_raw`], and nothing else reads or writes the elements for `'a`.
    pub unsafe fn from_raw(addr: u64, len: usize, dtype: DType, layout: Layout) -> Self {
        // SAFETY: the caller's guarantee, strengthened to exclusive access.
        DeviceTensorMut { inner: unsafe { DeviceTensor::from_raw(addr, len, dtype, layout) }, _borrow: PhantomData }
    }
    /// The read-only view.
    pub fn as_view(&self) -> &DeviceTensor<'a> {
        &self.inner
    }
}

/// One operand as the checks see it: layout, elements available, storage type.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Desc {
    pub(crate) layout: Layout,
    pub(crate) len: usize,
}

impl From<&DeviceTensor<'_>> for Desc {
    fn from(t: &DeviceTensor<'_>) -> Desc {
        Desc { layout: t.layout, len: t.len }
    }
}

/// The validation of every CUDA attention entry point (host and device buffers): the plan and
/// the buffer checks of [`crate::attention`], in its order and with its errors.
pub(crate) fn validate<'o>(
    q: Desc,
    k: Desc,
    v: Desc,
    out: Desc,
    lse_len: Option<usize>,
    opts: &AttentionOptions<'o>,
) -> Result<Plan<'o>, Error> {
    let (ql, kl, vl) = (&q.layout, &k.layout, &v.layout);
    let mismatch = |operand, dim, expected, found| {
        if expected == found {
            Ok(())
        } else {
            Err(Error::ShapeMismatch { operand, dim, expected, found })
        }
    };
    mismatch(Operand::Key, "batch", ql.batch(), kl.batch())?;
    mismatch(Operand::Value, "batch", ql.batch(), vl.batch())?;
    mismatch(Operand::Value, "kv_len", kl.seq(), vl.seq())?;
    mismatch(Operand::Value, "heads", kl.heads(), vl.heads())?;
    mismatch(Operand::Key, "head_dim", ql.dim(), kl.dim())?;
    let dims = Dims {
        batch: ql.batch(),
        q_len: ql.seq(),
        kv_len: kl.seq(),
        q_heads: ql.heads(),
        kv_heads: kl.heads(),
        head_dim: ql.dim(),
        v_head_dim: vl.dim(),
    };
    let plan = Plan::new(dims, opts)?;
    for (t, operand) in [(q, Operand::Query), (k, Operand::Key), (v, Operand::Value)] {
        t.layout.check(operand, t.len)?;
    }
    let d = plan.dims;
    let expect = [d.batch, d.q_len, d.q_heads, d.v_head_dim];
    const ONAMES: [&str; 4] = ["batch", "q_len", "heads", "head_dim"];
    for ((name, e), f) in ONAMES.iter().zip(expect).zip(out.layout.shape) {
        if e != f {
            return Err(Error::ShapeMismatch { operand: Operand::Output, dim: name, expected: e, found: f });
        }
    }
    out.layout.check(Operand::Output, out.len)?;
    out.layout.check_unaliased(Operand::Output)?;
    if let Some(n) = lse_len {
        if n != d.lse_len() {
            return Err(Error::ShapeMismatch {
                operand: Operand::Lse,
                dim: "batch * q_heads * q_len",
                expected: d.lse_len(),
                found: n,
            });
        }
    }
    Ok(plan)
}

/// Attention on device buffers: `q`, `k`, `v` in, `out` (and `lse`, f32 `[batch, q_heads,
/// q_len]`) written on the device, asynchronously on `backend`'s stream. The same options,
/// validation and errors as [`crate::attention`] and [`super::attention_on`]; on `Err` nothing
/// has been launched.
pub fn attention_device<B: Backend>(
    backend: &mut B,
    q: &DeviceTensor<'_>,
    k: &DeviceTensor<'_>,
    v: &DeviceTensor<'_>,
    out: &mut DeviceTensorMut<'_>,
    lse: Option<&mut DeviceTensorMut<'_>>,
    opts: &AttentionOptions<'_>,
    launch: &LaunchOptions,
) -> Result<(), Error> {
    let lse_len = lse.as_ref().map(|l| l.inner.len);
    let plan = validate(q.into(), k.into(), v.into(), out.as_view().into(), lse_len, opts)?;
    if lse.as_ref().is_some_and(|l| l.inner.dtype != DType::F32) {
        return Err(Error::InvalidOption { option: "lse", reason: "device LSE buffers must be f32" });
    }
    let lp = checked_launch_plan(backend, &plan, launch)?;
    let op = |t: &DeviceTensor<'_>| DeviceOperand { addr: t.addr, layout: t.layout, dtype: t.dtype };
    let args = DeviceArgs { q: op(q), k: op(k), v: op(v), out: op(&out.inner), lse: lse.map_or(0, |l| l.inner.addr) };
    launch_attention(backend, &plan, &lp, &args)
}
