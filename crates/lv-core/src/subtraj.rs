//! Sub-trajectory LV training (spec §5.5; paper Fig. 4 / Table 6).
//!
//! With a potential control u = σ∇ₓΦ (whose Φ(t, ·) is a learned log-density of the
//! generative marginal at time t), a sub-trajectory step:
//! 1. draws i uniformly from {0, …, N − 1} and j uniformly from {i + 1, …, N};
//! 2. draws X_i uniformly on the box that interpolates linearly, at t_i/T, between the prior
//!    box [−5·scale, 5·scale]^d and the target's domain box;
//! 3. simulates on the sub-grid t_i … t_j **itself** (the later reference code simulates on the
//!    full grid there, a known defect), in LV mode (detached trajectory);
//! 4. forms R = Φ(t_i, X_i) + Σ_{k=i}^{j−1}(running cost + Itô term) − Φ(t_j, X_j), with
//!    log ρ(X_N) in place of Φ(t_N, ·) when j = N (time-reversal form, DIS);
//! 5. takes the unbiased variance of R over the kept samples (R finite and < `max_rnd`,
//!    1e4 by default) and scales it by (j − i)/N and by 1/d.
//!
//! LV needs no importance weights for the uniform X_i: the variance vanishes iff R is
//! a.s. constant, i.e. iff Φ(t_i, ·), the controlled kernel and Φ(t_j, ·) are consistent.

use crate::control::Potential;
use crate::loss::{batch_loss, LossKind};
use crate::method::{Method, RndForm};
use crate::sim::{simulate_on, Controls, Mode, SimOptions};
use crate::target::Target;
use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

/// Settings of sub-trajectory training.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubTrajSettings {
    /// Probability of a sub-trajectory step (otherwise a normal full-trajectory step).
    pub prob: f64,
    /// Half-width of the prior box in units of `scale` (spec: ±5·scale).
    pub prior_box: f64,
    pub scale: f64,
    /// `max_rnd` of sub-trajectory steps.
    pub max_rnd: f64,
}

impl SubTrajSettings {
    /// Checks the settings; errors name the key as `{prefix}prob` etc.
    pub fn check(&self, prefix: &str) -> anyhow::Result<()> {
        use crate::check::{in_range, positive};
        in_range(&format!("{prefix}prob"), self.prob, 0.0, 1.0)?;
        positive(&format!("{prefix}prior_box"), self.prior_box)?;
        positive(&format!("{prefix}scale"), self.scale)?;
        positive(&format!("{prefix}max_rnd"), self.max_rnd)
    }
}

impl Default for SubTrajSettings {
    fn default() -> Self {
        Self {
            prob: 0.5,
            prior_box: 5.0,
            scale: 1.0,
            max_rnd: 1e4,
        }
    }
}

/// The (i, j) pair and the sampling box of one sub-trajectory step.
pub struct SubTrajDraw {
    pub i: usize,
    pub j: usize,
    pub lo: Vec<f64>,
    pub hi: Vec<f64>,
}

/// Draws (i, j) and the box with torch's global generator.
pub fn draw(method: &Method, target: &dyn Target, s: &SubTrajSettings) -> SubTrajDraw {
    let n = method.grid.steps() as i64;
    let i = Tensor::randint(n, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]);
    let j = i + 1 + Tensor::randint(n - i, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]);
    let (i, j) = (i as usize, j as usize);
    let a = method.grid.points()[i] / method.grid.t_end();
    let half = s.prior_box * s.scale;
    let (lo, hi) = target
        .domain()
        .iter()
        .map(|&(l, h)| ((1.0 - a) * -half + a * l, (1.0 - a) * half + a * h))
        .unzip();
    SubTrajDraw { i, j, lo, hi }
}

/// The scaled LV loss of one sub-trajectory batch of `n` trajectories on `device`, and the
/// number of kept samples.
pub fn subtraj_loss(
    method: &Method,
    target: &dyn Target,
    controls: Controls<'_>,
    potential: &dyn Potential,
    draw: &SubTrajDraw,
    s: &SubTrajSettings,
    (n, device): (i64, Device),
) -> Result<(Tensor, Tensor)> {
    if method.form != RndForm::TimeReversal || controls.v.is_some() {
        bail!("sub-trajectory training is implemented for DIS (time-reversal form, v = 0)");
    }
    let d = target.dim() as i64;
    let lo = Tensor::from_slice(&draw.lo)
        .to_kind(Kind::Float)
        .to_device(device);
    let hi = Tensor::from_slice(&draw.hi)
        .to_kind(Kind::Float)
        .to_device(device);
    let x0 = Tensor::rand([n, d], (Kind::Float, device)) * (&hi - &lo) + &lo;
    let grid = method.grid.sub(draw.i, draw.j)?;
    let mut opts = SimOptions::new(Mode::Lv);
    opts.boundary_terms = false;
    let out = simulate_on(method, &grid, target, controls, &x0, opts);
    let t_i = grid.t_start();
    let mut r = out.rnd + potential.log_density_at(t_i, &x0);
    r = if draw.j == method.grid.steps() {
        r - target.log_density(&out.x_final)
    } else {
        r - potential.log_density_at(grid.t_end(), &out.x_final)
    };
    let lv = batch_loss(LossKind::Lv, &r, Some(s.max_rnd), target.dim(), None);
    let frac = (draw.j - draw.i) as f64 / method.grid.steps() as f64;
    Ok((lv.loss * frac, lv.kept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::FnControl;
    use crate::testing::ScaledGauss;

    /// The VP-noised marginal of N(0, s² I): variance v(τ) = s² e^{−B} + 1 − e^{−B},
    /// B(τ) = 0.1τ + 4.95τ², τ = T − t; Φ*(t, x) = −|x|²/(2 v) (up to a constant).
    fn v_of(s2: f64, t: f64) -> f64 {
        let tau = 1.0 - t;
        let b = 0.1 * tau + 4.95 * tau * tau;
        s2 * (-b).exp() + 1.0 - (-b).exp()
    }

    struct GaussPotential {
        s2: f64,
        scale: f64,
    }

    impl Potential for GaussPotential {
        fn log_density_at(&self, t: f64, x: &Tensor) -> Tensor {
            x.square()
                .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
                * (-0.5 * self.scale / v_of(self.s2, t))
        }
    }

    #[test]
    fn optimal_potential_has_small_sub_trajectory_variance() {
        let _g = crate::testing::rng_lock();
        tch::manual_seed(5);
        let s2: f64 = 2.0;
        let target = ScaledGauss {
            dim: 2,
            mean: 0.0,
            std: s2.sqrt(),
            log_z: 0.3,
        };
        let method = Method::dis(400).unwrap();
        let sde = method.sde;
        let u = FnControl(move |t: f64, x: &Tensor| x * (-sde.sigma(t) / v_of(s2, t)));
        let s = SubTrajSettings::default();
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for (i, j) in [(0, 400), (100, 300), (250, 400), (10, 60)] {
            let a = method.grid.points()[i];
            let dr = SubTrajDraw {
                i,
                j,
                lo: vec![-3.0 + a; 2],
                hi: vec![3.0 - a; 2],
            };
            let p = GaussPotential { s2, scale: 1.0 };
            let (l, kept) = subtraj_loss(
                &method,
                &target,
                Controls::new(&u),
                &p,
                &dr,
                &s,
                (2000, Device::Cpu),
            )
            .unwrap();
            assert_eq!(kept.double_value(&[]), 2000.0);
            good.push(l.double_value(&[]));
            let p = GaussPotential { s2, scale: 0.5 };
            let (l, _) = subtraj_loss(
                &method,
                &target,
                Controls::new(&u),
                &p,
                &dr,
                &s,
                (2000, Device::Cpu),
            )
            .unwrap();
            bad.push(l.double_value(&[]));
        }
        for (g, b) in good.iter().zip(&bad) {
            // Euler error of DIS at 400 steps: the full trajectory (0, 400) has LV·(1/d) ≈ 0.037.
            assert!(*g < 0.05, "optimal potential: sub-trajectory LV {good:?}");
            assert!(
                *b > 5.0 * g.max(1e-4),
                "a wrong potential must show: {good:?} vs {bad:?}"
            );
        }
    }

    #[test]
    fn draws_are_in_range_and_the_box_interpolates() {
        let _g = crate::testing::rng_lock();
        tch::manual_seed(1);
        let target = ScaledGauss {
            dim: 2,
            mean: 0.0,
            std: 1.0,
            log_z: 0.0,
        };
        let method = Method::dis(10).unwrap();
        for _ in 0..50 {
            let d = draw(&method, &target, &SubTrajSettings::default());
            assert!(d.i < 10 && d.j > d.i && d.j <= 10);
            let a = method.grid.points()[d.i];
            let expect_lo = (1.0 - a) * -5.0 + a * -5.0;
            assert!((d.lo[0] - expect_lo).abs() < 1e-12);
        }
    }
}
