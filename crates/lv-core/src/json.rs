//! JSON has no NaN or ±∞: serde_json writes them as `null`. [`f64_or_nan`] reads such a
//! `null` back as NaN, so the records of a run (a diverged loss, an evaluation with no
//! finite trajectory) round-trip through their typed structs.

use serde::{Deserialize, Deserializer};

/// Deserializes a number, or `null` as NaN (`#[serde(deserialize_with = "…")]`).
pub fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Serialize, Deserialize)]
    struct R {
        #[serde(deserialize_with = "f64_or_nan")]
        x: f64,
    }

    #[test]
    fn non_finite_round_trips_as_nan() {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let s = serde_json::to_string(&R { x: v }).unwrap();
            assert_eq!(s, r#"{"x":null}"#);
            assert!(serde_json::from_str::<R>(&s).unwrap().x.is_nan());
        }
        let r: R = serde_json::from_str(r#"{"x":1.5}"#).unwrap();
        assert_eq!(r.x, 1.5);
        assert!(serde_json::from_str::<R>(r#"{"x":"a"}"#).is_err());
    }
}
