//! Amounts of a resource (MB) and how they compare.
//!
//! Manifests and stats hold whatever numbers Python gave us: ints, floats,
//! bools, big ints. The reference compares them with Python's `>`, which is
//! exact across int and float (`4096 > 4095.5`, `2**63 > 9.223372036854775e18`
//! is `False`). [`Num`] reproduces that exactly for the values that fit a
//! machine word; anything else is left to the caller's [`Amount`] impl.

use std::cmp::Ordering;

/// Something that can be asked "is this need larger than what is available?".
///
/// The decision logic in [`crate::check`] is generic over it so that the
/// Python binding can fall back to Python's own comparison for values that
/// are not plain numbers, while pure-Rust callers use [`Num`].
pub trait Amount {
    /// Why a comparison could not be made (e.g. a string against a number).
    type Error;

    /// `self > other`, with Python's semantics for numbers (NaN is never larger).
    fn exceeds(&self, other: &Self) -> Result<bool, Self::Error>;
}

/// A machine-sized number: an integer (bools are 0/1) or a float.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    /// Total comparison as Python does it, `None` when a NaN is involved.
    pub fn partial_cmp_exact(self, other: Num) -> Option<Ordering> {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => Some(a.cmp(&b)),
            (Num::Float(a), Num::Float(b)) => a.partial_cmp(&b),
            (Num::Int(a), Num::Float(b)) => cmp_int_float(a, b),
            (Num::Float(a), Num::Int(b)) => cmp_int_float(b, a).map(Ordering::reverse),
        }
    }
}

impl Amount for Num {
    type Error = std::convert::Infallible;

    fn exceeds(&self, other: &Self) -> Result<bool, Self::Error> {
        Ok(self.partial_cmp_exact(*other) == Some(Ordering::Greater))
    }
}

impl From<i64> for Num {
    fn from(v: i64) -> Self {
        Num::Int(v)
    }
}

impl From<f64> for Num {
    fn from(v: f64) -> Self {
        Num::Float(v)
    }
}

/// Compares an integer with a float exactly (no rounding of the integer to
/// f64, which would make `2**53 + 1 > 2.0**53` wrongly `False`).
fn cmp_int_float(i: i64, f: f64) -> Option<Ordering> {
    if f.is_nan() {
        return None;
    }
    // 2^63 is exactly representable; every i64 is below it and at least -2^63.
    const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
    if f >= TWO_POW_63 {
        return Some(Ordering::Less);
    }
    if f < -TWO_POW_63 {
        return Some(Ordering::Greater);
    }
    // Now trunc(f) lies in [-2^63, 2^63) and converts to i64 without loss.
    let whole = f.trunc();
    let whole_int = whole as i64;
    match i.cmp(&whole_int) {
        Ordering::Equal => {
            let frac = f - whole;
            if frac > 0.0 {
                Some(Ordering::Less)
            } else if frac < 0.0 {
                Some(Ordering::Greater)
            } else {
                Some(Ordering::Equal)
            }
        }
        unequal => Some(unequal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gt(a: Num, b: Num) -> bool {
        a.exceeds(&b).unwrap_or_else(|never| match never {})
    }

    #[test]
    fn ints_and_floats_compare_exactly() {
        assert!(gt(Num::Int(4096), Num::Float(4095.5)));
        assert!(!gt(Num::Int(4096), Num::Float(4096.0)));
        assert!(!gt(Num::Float(4096.0), Num::Int(4096)));
        assert!(gt(Num::Float(4096.5), Num::Int(4096)));
        assert!(gt(Num::Int(-1), Num::Float(-1.5)));
        assert!(!gt(Num::Int(-2), Num::Float(-1.5)));
    }

    #[test]
    fn no_rounding_of_large_ints() {
        let two53 = 1i64 << 53;
        assert!(gt(Num::Int(two53 + 1), Num::Float(two53 as f64)));
        assert!(!gt(
            Num::Int(i64::MAX),
            Num::Float(9_223_372_036_854_775_808.0)
        ));
        assert!(gt(
            Num::Float(9_223_372_036_854_775_808.0),
            Num::Int(i64::MAX)
        ));
        assert!(gt(Num::Int(i64::MIN), Num::Float(-1e19)));
    }

    #[test]
    fn nan_is_never_larger_or_smaller() {
        let nan = Num::Float(f64::NAN);
        assert!(!gt(nan, Num::Int(0)));
        assert!(!gt(Num::Int(0), nan));
        assert!(!gt(nan, nan));
    }

    #[test]
    fn infinities() {
        assert!(gt(Num::Float(f64::INFINITY), Num::Int(i64::MAX)));
        assert!(!gt(Num::Float(f64::NEG_INFINITY), Num::Int(i64::MIN)));
    }
}
