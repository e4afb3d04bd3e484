//! The zero-centre-of-mass subspace of particle systems (`benchmarks.md` §3.7: DW-4 "states
//! are kept in the zero-centre-of-mass subspace").
//!
//! A state x ∈ R^{P·k} holds P particles of dimension k, particle-major
//! (`[p0_1, …, p0_k, p1_1, …]`). The projection P x subtracts the particle mean from every
//! particle; its range has dimension d − k. Samplers on a translation-invariant target
//! (whose density is not normalisable on R^d) run entirely in that range: the prior sample,
//! the noise increments and the control values are projected (the Euler–Maruyama chain then
//! stays in the subspace exactly, up to rounding), and Gaussian reference/prior densities are
//! those of the subspace, i.e. normalised with d − k instead of d dimensions. The Girsanov
//! terms keep their form with the projected u and ΔW. log Z then refers to ∫ ρ over the
//! subspace (Lebesgue measure of the subspace in its orthonormal coordinates).

use tch::Tensor;

/// P particles of dimension k.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZeroCom {
    pub particles: usize,
    pub dim: usize,
}

impl ZeroCom {
    /// State dimension P·k.
    pub fn state_dim(&self) -> usize {
        self.particles * self.dim
    }

    /// Dimensions removed by the projection (k).
    pub fn removed_dims(&self) -> usize {
        self.dim
    }

    /// P x: subtracts the particle mean, `[n, P·k] -> [n, P·k]` (keeps the graph).
    pub fn project(&self, x: &Tensor) -> Tensor {
        let n = x.size()[0];
        let (p, k) = (self.particles as i64, self.dim as i64);
        let v = x.reshape([n, p, k]);
        (&v - v.mean_dim([1i64].as_slice(), true, v.kind())).reshape([n, p * k])
    }

    /// What to add to a full-space isotropic Gaussian log-density N(0, std² I_d) of a point of
    /// the subspace to get the subspace Gaussian's: `k/2 · log(2π std²)`.
    pub fn gauss_log_norm_correction(&self, std: f64) -> f64 {
        0.5 * self.removed_dims() as f64 * (2.0 * std::f64::consts::PI * std * std).ln()
    }
}

/// Projects when a subspace is given, otherwise returns the tensor (shallow copy).
pub fn project_opt(zc: Option<ZeroCom>, x: &Tensor) -> Tensor {
    match zc {
        Some(z) => z.project(x),
        None => x.shallow_clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn projection_is_idempotent_and_removes_the_mean() {
        let z = ZeroCom {
            particles: 4,
            dim: 2,
        };
        let x = Tensor::from_slice(&[1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]).reshape([1, 8]);
        let p = z.project(&x);
        let want = Tensor::from_slice(&[-3.0f64, -3.0, -1.0, -1.0, 1.0, 1.0, 3.0, 3.0]);
        assert!((p.reshape([8]) - want).abs().max().double_value(&[]) < 1e-12);
        let x = Tensor::randn([5, 8], (Kind::Double, Device::Cpu));
        let p = z.project(&x);
        assert!((z.project(&p) - &p).abs().max().double_value(&[]) < 1e-12);
        // Orthogonal projection: <x - Px, Px> = 0.
        let ip = ((&x - &p) * &p).sum(Kind::Double).double_value(&[]);
        assert!(ip.abs() < 1e-10, "{ip}");
        assert!(
            (z.gauss_log_norm_correction(1.0) - (2.0 * std::f64::consts::PI).ln()).abs() < 1e-15
        );
    }
}
