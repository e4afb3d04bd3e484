//! Priors p_prior of the generative SDE (spec §5.0).

use tch::{Device, Kind, Tensor};

/// The prior X_0 ~ p_prior.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Prior {
    /// δ_0 (PIS). Its log-density is taken as 0 (a constant that cancels in every loss).
    Dirac,
    /// N(0, std² I).
    Gauss { std: f64 },
    /// "gauss_truncate": N(0, std² I) *sampled* by inverse CDF truncated per coordinate at
    /// ±`bound`·std (default 3.8906, the 5e-5 and 1 − 5e-5 quantiles), but *scored* with the
    /// untruncated N(0, std² I) log-density, as the paper's code does.
    TruncGauss { std: f64, bound: f64 },
}

/// Default truncation of `gauss_truncate`, in standard deviations.
pub const TRUNCATION_BOUND: f64 = 3.8906;

impl Prior {
    /// The paper's truncated standard Gaussian.
    pub fn trunc_standard() -> Self {
        Prior::TruncGauss {
            std: 1.0,
            bound: TRUNCATION_BOUND,
        }
    }

    /// `n` draws `[n, d]` (float32) from torch's global generator.
    pub fn sample(&self, n: i64, d: i64, device: Device) -> Tensor {
        let opts = (Kind::Float, device);
        match *self {
            Prior::Dirac => Tensor::zeros([n, d], opts),
            Prior::Gauss { std } => Tensor::randn([n, d], opts) * std,
            Prior::TruncGauss { std, bound } => {
                // q = Φ(−bound); u ~ U(q, 1 − q); x = Φ⁻¹(u) = √2 erfinv(2u − 1).
                let q = 0.5 * erfc(bound / std::f64::consts::SQRT_2);
                let u = Tensor::rand([n, d], opts) * (1.0 - 2.0 * q) + q;
                (u * 2.0 - 1.0).erfinv() * (std::f64::consts::SQRT_2 * std)
            }
        }
    }

    /// log p_prior(x) `[n]` (untruncated for [`Prior::TruncGauss`]; 0 for [`Prior::Dirac`]).
    pub fn log_prob(&self, x: &Tensor) -> Tensor {
        match *self {
            Prior::Dirac => Tensor::zeros([x.size()[0]], (x.kind(), x.device())),
            Prior::Gauss { std } | Prior::TruncGauss { std, .. } => gauss_log_prob(x, std),
        }
    }

    /// ∇ log p_prior(x) = −x/std² (zero for the Dirac prior, where it is undefined).
    pub fn score(&self, x: &Tensor) -> Tensor {
        match *self {
            Prior::Dirac => x.zeros_like(),
            Prior::Gauss { std } | Prior::TruncGauss { std, .. } => -x / (std * std),
        }
    }
}

/// log N(x; 0, std² I) for `x: [n, d]`, returning `[n]`.
pub fn gauss_log_prob(x: &Tensor, std: f64) -> Tensor {
    let d = x.size()[1] as f64;
    let sq = x
        .square()
        .sum_dim_intlist([1i64].as_slice(), false, x.kind());
    sq * (-0.5 / (std * std)) - d * (0.5 * (2.0 * std::f64::consts::PI).ln() + std.ln())
}

/// Complementary error function (f64, via libtorch on a scalar; used only at set-up).
pub fn erfc(x: f64) -> f64 {
    Tensor::from(x)
        .to_kind(Kind::Double)
        .erfc()
        .double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_prior_is_bounded_and_scored_untruncated() {
        let _g = crate::testing::rng_lock();
        tch::manual_seed(0);
        let p = Prior::trunc_standard();
        let x = p.sample(20000, 3, Device::Cpu);
        let m = x.abs().max().double_value(&[]);
        assert!(m <= 3.8906 + 1e-4, "max |x| = {m}");
        assert!(m > 3.0);
        let var = x.var(true).double_value(&[]);
        assert!((var - 1.0).abs() < 0.03, "var {var}");
        let z = Tensor::zeros([1, 3], (Kind::Float, Device::Cpu));
        let lp = p.log_prob(&z).double_value(&[0]);
        assert!((lp + 1.5 * (2.0 * std::f64::consts::PI).ln()).abs() < 1e-5);
        assert!((erfc(3.8906 / std::f64::consts::SQRT_2) / 2.0 - 5e-5).abs() < 1e-7);
    }

    #[test]
    fn dirac_prior() {
        let x = Prior::Dirac.sample(4, 2, Device::Cpu);
        assert_eq!(x.abs().sum(Kind::Float).double_value(&[]), 0.0);
        assert_eq!(Prior::Dirac.log_prob(&x).size(), vec![4]);
    }
}
