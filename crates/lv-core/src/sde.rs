//! Base SDEs dX = μ(X, t) dt + σ(t) dW in generative time, with μ = a(t)·x (spec §5.0).

/// A base SDE with linear drift μ(x, t) = a(t) x and scalar diffusion σ(t).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sde {
    /// μ = 0, σ constant, horizon T. PIS uses σ = √0.2, T = 5 (σ²T = 1); the bridge σ = 1, T = 1.
    Bm { sigma: f64, t_end: f64 },
    /// Variance-preserving schedule in generative time: μ = +½β(T − t)x, σ = √β(T − t), with
    /// β(s) = β_min + (β_max − β_min)s/T. `vp_10`: β_min 0.1, β_max 10, T = 1.
    Vp {
        beta_min: f64,
        beta_max: f64,
        t_end: f64,
    },
    /// μ = a·x, σ constant (`const`: a = 4.5, σ = 3, T = 1; stationary N(0, 1) in reverse).
    Const { a: f64, sigma: f64, t_end: f64 },
}

impl Sde {
    /// PIS Brownian motion: σ = √0.2, T = 5.
    pub fn bm_pis() -> Self {
        Sde::Bm {
            sigma: 0.2f64.sqrt(),
            t_end: 5.0,
        }
    }

    /// `vp_10`.
    pub fn vp10() -> Self {
        Sde::Vp {
            beta_min: 0.1,
            beta_max: 10.0,
            t_end: 1.0,
        }
    }

    /// Brownian motion with σ = 1, T = 1 (bridge).
    pub fn bm_unit() -> Self {
        Sde::Bm {
            sigma: 1.0,
            t_end: 1.0,
        }
    }

    /// Horizon T.
    pub fn t_end(&self) -> f64 {
        match *self {
            Sde::Bm { t_end, .. } | Sde::Vp { t_end, .. } | Sde::Const { t_end, .. } => t_end,
        }
    }

    fn beta(beta_min: f64, beta_max: f64, t_end: f64, s: f64) -> f64 {
        beta_min + (beta_max - beta_min) * s / t_end
    }

    /// a(t) with μ(x, t) = a(t)·x.
    pub fn drift_coef(&self, t: f64) -> f64 {
        match *self {
            Sde::Bm { .. } => 0.0,
            Sde::Vp {
                beta_min,
                beta_max,
                t_end,
            } => 0.5 * Self::beta(beta_min, beta_max, t_end, t_end - t),
            Sde::Const { a, .. } => a,
        }
    }

    /// σ(t).
    pub fn sigma(&self, t: f64) -> f64 {
        match *self {
            Sde::Bm { sigma, .. } | Sde::Const { sigma, .. } => sigma,
            Sde::Vp {
                beta_min,
                beta_max,
                t_end,
            } => Self::beta(beta_min, beta_max, t_end, t_end - t).sqrt(),
        }
    }

    /// D_k = ∫_{t0}^{t1} ∇·μ dt = d·∫a: exact for constant a, the trapezoid rule
    /// d·¼(β(T − t0) + β(T − t1))(t1 − t0) for VP (spec §3.2). Evaluation only.
    pub fn div_drift_integral(&self, t0: f64, t1: f64, d: usize) -> f64 {
        let dt = t1 - t0;
        d as f64
            * match *self {
                Sde::Bm { .. } => 0.0,
                Sde::Const { a, .. } => a * dt,
                Sde::Vp { .. } => 0.5 * (self.drift_coef(t0) + self.drift_coef(t1)) * dt,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    #[test]
    fn vp_schedule() {
        let s = Sde::vp10();
        // Generative t = 0 is the end of the noising process: β(T) = 10.
        assert_relative_eq!(s.sigma(0.0), 10f64.sqrt());
        assert_relative_eq!(s.sigma(1.0), 0.1f64.sqrt());
        assert_relative_eq!(s.drift_coef(0.0), 5.0);
        // ∫β = 5.05 over [0, 1]; the trapezoid rule is exact for linear β.
        let total: f64 = (0..200)
            .map(|k| s.div_drift_integral(k as f64 / 200.0, (k + 1) as f64 / 200.0, 1))
            .sum();
        assert_relative_eq!(total, 0.5 * 5.05, epsilon = 1e-12);
    }

    #[test]
    fn pis_reference_has_unit_terminal_variance() {
        let s = Sde::bm_pis();
        assert_relative_eq!(s.sigma(0.0).powi(2) * s.t_end(), 1.0, epsilon = 1e-12);
    }
}
