//! f64 elementary functions: the platform's with `std` (faster, and uninstrumented in fuzz
//! builds), `libm`'s without. Both are within an ulp, far below anything the oracle is used for.

macro_rules! unary {
    ($($name:ident = $libm:ident),*) => {$(
        #[inline]
        pub(super) fn $name(x: f64) -> f64 {
            #[cfg(feature = "std")]
            {
                x.$name()
            }
            #[cfg(not(feature = "std"))]
            {
                libm::$libm(x)
            }
        }
    )*};
}

unary!(exp = exp, ln = log, tanh = tanh, sqrt = sqrt, cos = cos, sin = sin, floor = floor, ceil = ceil, exp_m1 = expm1);
