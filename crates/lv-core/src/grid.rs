//! Time grids 0 = t_0 < … < t_N = T (generative time).

use anyhow::{bail, Result};

/// A time grid; `t[0] = 0`, `t[N] = T`, Δ_k = t_{k+1} − t_k.
#[derive(Clone, Debug, PartialEq)]
pub struct TimeGrid {
    t: Vec<f64>,
}

impl TimeGrid {
    /// Uniform grid with `n` steps on [0, `t_end`].
    pub fn uniform(t_end: f64, n: usize) -> Result<Self> {
        if n == 0 || t_end.is_nan() || t_end <= 0.0 || !t_end.is_finite() {
            bail!("a uniform grid needs n ≥ 1 steps and a finite T > 0 (got n = {n}, T = {t_end})");
        }
        Ok(Self {
            t: (0..=n).map(|k| t_end * k as f64 / n as f64).collect(),
        })
    }

    /// The cosine grid of the exponential-integrator DDS (later sde_sampler code, spec §5.3):
    /// `steps = round(end/dt)` (256 for dt = 0.05, end = 12.8); increments
    /// Δ_k ∝ cos⁴(((k/steps + s)/(1 + s))·π/2) with s = 0.008 for k = 0..=steps, normalised to
    /// sum to `end`. Note the quirk: `steps + 1` increments (257 for the defaults, 258 points);
    /// the last increment is ≈ 0.
    pub fn cosine_dds(dt: f64, end: f64) -> Result<Self> {
        if !(dt > 0.0 && end > 0.0) {
            bail!("cosine grid needs dt > 0 and end > 0 (got dt = {dt}, end = {end})");
        }
        let steps = (end / dt).round() as usize;
        let s = 0.008;
        let raw: Vec<f64> = (0..=steps)
            .map(|k| {
                let a = ((k as f64 / steps as f64 + s) / (1.0 + s)) * std::f64::consts::FRAC_PI_2;
                a.cos().powi(4)
            })
            .collect();
        let total: f64 = raw.iter().sum();
        let mut t = Vec::with_capacity(raw.len() + 1);
        let mut acc = 0.0;
        t.push(0.0);
        for r in raw {
            acc += r * end / total;
            t.push(acc);
        }
        Ok(Self { t })
    }

    /// A grid from explicit points (strictly increasing, starting at 0).
    pub fn from_points(t: Vec<f64>) -> Result<Self> {
        if t.len() < 2
            || t[0] != 0.0
            || t.windows(2)
                .any(|w| w[1].partial_cmp(&w[0]) != Some(std::cmp::Ordering::Greater))
        {
            bail!("a time grid must start at 0 and be strictly increasing with ≥ 2 points");
        }
        Ok(Self { t })
    }

    /// The points t_0 … t_N.
    pub fn points(&self) -> &[f64] {
        &self.t
    }

    /// Number of steps N.
    pub fn steps(&self) -> usize {
        self.t.len() - 1
    }

    /// Δ_k = t_{k+1} − t_k.
    pub fn dt(&self, k: usize) -> f64 {
        self.t[k + 1] - self.t[k]
    }

    /// The horizon T = t_N.
    pub fn t_end(&self) -> f64 {
        *self.t.last().expect("non-empty grid")
    }

    /// The sub-grid t_i … t_j (inclusive), for sub-trajectory training. Times stay absolute.
    pub fn sub(&self, i: usize, j: usize) -> Result<Self> {
        if !(i < j && j <= self.steps()) {
            bail!(
                "sub-grid needs 0 ≤ i < j ≤ N (got i = {i}, j = {j}, N = {})",
                self.steps()
            );
        }
        Ok(Self {
            t: self.t[i..=j].to_vec(),
        })
    }

    /// Start time t_0 of this grid (0 except for sub-grids).
    pub fn t_start(&self) -> f64 {
        self.t[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    #[test]
    fn uniform_grid() {
        let g = TimeGrid::uniform(5.0, 200).unwrap();
        assert_eq!(g.steps(), 200);
        assert_relative_eq!(g.dt(0), 0.025, epsilon = 1e-15);
        assert_relative_eq!(g.t_end(), 5.0);
        assert!(TimeGrid::uniform(1.0, 0).is_err());
    }

    #[test]
    fn cosine_grid_matches_the_spec() {
        let g = TimeGrid::cosine_dds(0.05, 12.8).unwrap();
        assert_eq!(g.steps(), 257);
        assert_eq!(g.points().len(), 258);
        assert_relative_eq!(g.t_end(), 12.8, epsilon = 1e-9);
        // Largest increment ≈ 0.1344 at t = 0 (β = √Δ ≈ 0.367); the last one ≈ 0.
        assert!((g.dt(0) - 0.1344).abs() < 5e-4, "dt0 = {}", g.dt(0));
        assert!((g.dt(0).sqrt() - 0.367).abs() < 1e-3);
        assert!(g.dt(256) < 1e-6);
        assert!((0..257).all(|k| g.dt(k) <= g.dt(0)));
    }

    #[test]
    fn sub_grid() {
        let g = TimeGrid::uniform(1.0, 10).unwrap();
        let s = g.sub(3, 7).unwrap();
        assert_eq!(s.steps(), 4);
        assert_relative_eq!(s.t_start(), 0.3, epsilon = 1e-12);
        assert!(g.sub(5, 5).is_err());
        assert!(g.sub(5, 11).is_err());
    }
}
