//! Checks of user-supplied settings (the checked-parameters pattern of linfa): each settings
//! type has a `check(prefix)` that returns an error naming the full key (`prefix` + field),
//! the rule and the value, so no constructor needs to panic on user input.

use anyhow::{bail, Result};

/// `v` is finite and > 0.
pub fn positive(key: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        bail!("key `{key}` must be a positive finite number (got {v})");
    }
    Ok(())
}

/// `v` is finite and ≥ 0.
pub fn non_negative(key: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v >= 0.0) {
        bail!("key `{key}` must be a finite number ≥ 0 (got {v})");
    }
    Ok(())
}

/// `v` is finite and lies in `[lo, hi]`.
pub fn in_range(key: &str, v: f64, lo: f64, hi: f64) -> Result<()> {
    if !(v.is_finite() && (lo..=hi).contains(&v)) {
        bail!("key `{key}` must be in [{lo}, {hi}] (got {v})");
    }
    Ok(())
}

/// `lo ≤ v ≤ hi` for counts.
pub fn count(key: &str, v: usize, lo: usize, hi: usize) -> Result<()> {
    if v < lo || v > hi {
        bail!("key `{key}` must be an integer in [{lo}, {hi}] (got {v})");
    }
    Ok(())
}

/// Largest count accepted for sizes (steps, batch, samples): 2³², far above any run that
/// fits in memory, and small enough that products of two sizes stay exact in `f64`/`i64`.
pub const MAX_COUNT: usize = 1 << 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_key_and_value() {
        let e = positive("train.lr", f64::NAN).unwrap_err().to_string();
        assert!(e.contains("train.lr") && e.contains("NaN"), "{e}");
        assert!(positive("a", 0.0).is_err() && positive("a", 1e-9).is_ok());
        assert!(non_negative("a", 0.0).is_ok() && non_negative("a", -1.0).is_err());
        assert!(non_negative("a", f64::INFINITY).is_err());
        assert!(in_range("a", 1.0, 0.0, 1.0).is_ok() && in_range("a", 1.5, 0.0, 1.0).is_err());
        let e = count("sde.steps", 0, 1, 10).unwrap_err().to_string();
        assert!(e.contains("sde.steps") && e.contains("got 0"), "{e}");
    }
}
