//! Mixed precision: the network's convolutions in bfloat16, everything else in float32.
//!
//! burn 0.21 has no autocast, so percept does what PyTorch's autocast does for the layers that
//! dominate this network: inside [`autocast`]`(Precision::Bf16)`, [`crate::conv2d::apply`] casts
//! its input, weight and bias to bf16, convolves (tensor cores on a GPU), and casts the result
//! back to f32. The weights stay f32 (the optimiser's master copy), and batch norm, the
//! activations, the losses and the optimiser step stay f32. The casts are autodiff ops, so the
//! gradients reaching the weights are f32 too.
//!
//! bf16 has f32's exponent range, so gradients neither underflow nor overflow where f32's would
//! not: no loss scaling is needed, unlike f16, which percept does not offer for that reason.
//!
//! The setting is per thread (like PyTorch's autocast), so tests and data-parallel replicas that
//! run in threads of their own do not see each other's.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Arithmetic precision of the network's convolutions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in float32.
    #[default]
    F32,
    /// Convolutions in bfloat16 (f32 weights, f32 everything else).
    Bf16,
}

impl Precision {
    pub const NAMES: &'static str = "\"f32\" or \"bf16\"";
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!(
                "unknown precision {other:?}: expected {}",
                Precision::NAMES
            )),
        }
    }
}

thread_local! {
    static CONVOLUTIONS: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// The precision convolutions run in on this thread.
pub fn current() -> Precision {
    CONVOLUTIONS.with(Cell::get)
}

/// Runs the network's convolutions on this thread in `precision` until the returned guard is
/// dropped, when the previous setting comes back.
#[must_use = "the setting ends when the guard is dropped"]
pub fn autocast(precision: Precision) -> AutocastGuard {
    AutocastGuard {
        previous: CONVOLUTIONS.with(|c| c.replace(precision)),
    }
}

/// Restores the previous precision when dropped; see [`autocast`].
pub struct AutocastGuard {
    previous: Precision,
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        CONVOLUTIONS.with(|c| c.set(self.previous));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_nest_and_restore() {
        assert_eq!(current(), Precision::F32);
        {
            let _outer = autocast(Precision::Bf16);
            assert_eq!(current(), Precision::Bf16);
            {
                let _inner = autocast(Precision::F32);
                assert_eq!(current(), Precision::F32);
            }
            assert_eq!(current(), Precision::Bf16);
            // Another thread starts from f32.
            assert_eq!(std::thread::spawn(current).join().unwrap(), Precision::F32);
        }
        assert_eq!(current(), Precision::F32);
    }

    #[test]
    fn names_parse_and_print() {
        for p in [Precision::F32, Precision::Bf16] {
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
        }
        assert_eq!(
            "fp16".parse::<Precision>().unwrap_err(),
            "unknown precision \"fp16\": expected \"f32\" or \"bf16\""
        );
    }
}
