//! Storage element types: f32, f16 and bf16. All arithmetic happens in f32.
//!
//! The kernels also read i8 (the values of an [`Int8Tensor`](crate::Int8Tensor), whose scales
//! the loop nest applies): they are generic over the crate-private [`Storage`], which the
//! three public element types and `i8` implement.

use half::{bf16, f16};

pub(crate) use storage::{Kind, Storage};

mod storage {
    /// What a kernel needs to load a stored value: its kind (for the vector loads, which
    /// reinterpret the pointer by kind) and its exact widening to f32.
    ///
    /// Implemented by exactly `f32`, `f16`, `bf16` and `i8`, with distinct kinds, so a match on
    /// `KIND` identifies the type. Public only inside this private module (as a supertrait of
    /// [`Element`](super::Element) must be), so downstream crates can neither name nor implement it.
    pub trait Storage: Copy + Send + Sync + 'static {
        /// Which of the four types this is.
        const KIND: Kind;
        /// The stored value widened to f32 (exact for every type; an i8 without its scale).
        fn as_f32(self) -> f32;
    }

    /// The storage types of [`Storage`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Kind {
        F32,
        F16,
        BF16,
        I8,
    }

    impl Storage for f32 {
        const KIND: Kind = Kind::F32;
        #[inline(always)]
        fn as_f32(self) -> f32 {
            self
        }
    }
    impl Storage for half::f16 {
        const KIND: Kind = Kind::F16;
        #[inline(always)]
        fn as_f32(self) -> f32 {
            half::f16::to_f32(self)
        }
    }
    impl Storage for half::bf16 {
        const KIND: Kind = Kind::BF16;
        #[inline(always)]
        fn as_f32(self) -> f32 {
            half::bf16::to_f32(self)
        }
    }
    impl Storage for i8 {
        const KIND: Kind = Kind::I8;
        #[inline(always)]
        fn as_f32(self) -> f32 {
            self as f32
        }
    }
}

/// The storage type of a tensor's elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the upper half of a binary32).
    BF16,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// An element type the kernels read and write: `f32`, [`half::f16`] or [`half::bf16`].
///
/// Sealed: the kernels rely on the bit layouts of exactly these three types.
pub trait Element: sealed::Sealed + Storage + Copy + Send + Sync + 'static {
    /// The runtime tag of this type.
    const DTYPE: DType;
    /// Widens to f32 (exact for every type).
    fn to_f32(self) -> f32;
    /// Rounds from f32 to nearest-even (NaN stays NaN).
    fn from_f32(x: f32) -> Self;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

/// A borrowed buffer of any supported element type.
#[derive(Clone, Copy, Debug)]
pub enum Elems<'a> {
    /// f32 elements.
    F32(&'a [f32]),
    /// f16 elements.
    F16(&'a [f16]),
    /// bf16 elements.
    BF16(&'a [bf16]),
}

/// A mutable borrowed buffer of any supported element type.
#[derive(Debug)]
pub enum ElemsMut<'a> {
    /// f32 elements.
    F32(&'a mut [f32]),
    /// f16 elements.
    F16(&'a mut [f16]),
    /// bf16 elements.
    BF16(&'a mut [bf16]),
}

impl<'a> Elems<'a> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Elems::F32(s) => s.len(),
            Elems::F16(s) => s.len(),
            Elems::BF16(s) => s.len(),
        }
    }
    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            Elems::F32(_) => DType::F32,
            Elems::F16(_) => DType::F16,
            Elems::BF16(_) => DType::BF16,
        }
    }
    /// Element `i` widened to f32.
    ///
    /// # Panics
    /// If `i` is out of bounds.
    #[inline]
    pub fn get_f32(&self, i: usize) -> f32 {
        match self {
            Elems::F32(s) => s[i],
            Elems::F16(s) => s[i].to_f32(),
            Elems::BF16(s) => s[i].to_f32(),
        }
    }
}

impl<'a> ElemsMut<'a> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            ElemsMut::F32(s) => s.len(),
            ElemsMut::F16(s) => s.len(),
            ElemsMut::BF16(s) => s.len(),
        }
    }
    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            ElemsMut::F32(_) => DType::F32,
            ElemsMut::F16(_) => DType::F16,
            ElemsMut::BF16(_) => DType::BF16,
        }
    }
    /// A shared view of the same elements.
    pub fn as_elems(&self) -> Elems<'_> {
        match self {
            ElemsMut::F32(s) => Elems::F32(s),
            ElemsMut::F16(s) => Elems::F16(s),
            ElemsMut::BF16(s) => Elems::BF16(s),
        }
    }
}

impl<'a> From<&'a [f32]> for Elems<'a> {
    fn from(s: &'a [f32]) -> Self {
        Elems::F32(s)
    }
}
impl<'a> From<&'a [f16]> for Elems<'a> {
    fn from(s: &'a [f16]) -> Self {
        Elems::F16(s)
    }
}
impl<'a> From<&'a [bf16]> for Elems<'a> {
    fn from(s: &'a [bf16]) -> Self {
        Elems::BF16(s)
    }
}
impl<'a> From<&'a mut [f32]> for ElemsMut<'a> {
    fn from(s: &'a mut [f32]) -> Self {
        ElemsMut::F32(s)
    }
}
impl<'a> From<&'a mut [f16]> for ElemsMut<'a> {
    fn from(s: &'a mut [f16]) -> Self {
        ElemsMut::F16(s)
    }
}
impl<'a> From<&'a mut [bf16]> for ElemsMut<'a> {
    fn from(s: &'a mut [bf16]) -> Self {
        ElemsMut::BF16(s)
    }
}
