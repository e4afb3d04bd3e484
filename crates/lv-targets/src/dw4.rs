//! The 4-particle double-well potential (`dw4`).

use anyhow::Result;
use lv_core::Target;
use tch::{Kind, Tensor};

use crate::robot::load_npy_f32;

const DW4_TEST_SPLIT: &[u8] = include_bytes!("../data/test_split_DW4.npy");

/// Number of particles.
pub const DW4_PARTICLES: usize = 4;
/// Spatial dimension of a particle.
pub const DW4_SPATIAL: usize = 2;
/// Pair-potential constants a, b, c and d₀.
pub const DW4_A: f64 = 0.9;
/// See [`DW4_A`].
pub const DW4_B: f64 = -4.0;
/// See [`DW4_A`].
pub const DW4_C: f64 = 0.0;
/// See [`DW4_A`].
pub const DW4_D0: f64 = 4.0;

/// Removes the per-sample centre of mass: `x: [n, 8]` viewed as `[n, 4, 2]`, minus the particle
/// mean.
pub fn remove_mean(x: &Tensor) -> Tensor {
    let p = x.reshape([-1, DW4_PARTICLES as i64, DW4_SPATIAL as i64]);
    (&p - p.mean_dim(1, true, None::<Kind>)).reshape([-1, (DW4_PARTICLES * DW4_SPATIAL) as i64])
}

/// DW-4 energy E(x) = Σ_{i<j} [a(d_ij − d₀)⁴ + b(d_ij − d₀)² + c], d_ij = ‖x_i − x_j‖, for
/// `x: [n, 8]` laid out [x₁, y₁, x₂, y₂, …]; returns `[n]`.
pub fn dw4_energy(x: &Tensor) -> Tensor {
    let p = x.reshape([-1, DW4_PARTICLES as i64, DW4_SPATIAL as i64]);
    let (mut ii, mut jj) = (Vec::new(), Vec::new());
    for i in 0..DW4_PARTICLES as i64 {
        for j in i + 1..DW4_PARTICLES as i64 {
            ii.push(i);
            jj.push(j);
        }
    }
    let ii = Tensor::from_slice(&ii).to_device(x.device());
    let jj = Tensor::from_slice(&jj).to_device(x.device());
    let d = (p.index_select(1, &ii) - p.index_select(1, &jj))
        .square()
        .sum_dim_intlist(-1, false, None::<Kind>)
        .sqrt();
    let u = d - DW4_D0;
    let pair = u.pow_tensor_scalar(4.0) * DW4_A + u.square() * DW4_B + DW4_C;
    pair.sum_dim_intlist(-1, false, None::<Kind>)
}

/// The DW-4 n-body double well (benchmarks spec §3.7), d = 8 (4 particles in 2-D):
/// log ρ(x) = −E(x) with E from [`dw4_energy`] (a = 0.9, b = −4, c = 0, d₀ = 4, temperature 1).
///
/// ρ is invariant under translations, rotations, reflections and particle permutations; states
/// live in the **zero-centre-of-mass subspace** (subtract the particle mean, [`remove_mean`]).
/// ρ is not integrable on R⁸, and **log Z is not defined/used** (`None`). Score: analytic,
/// ∇_{x_i} log ρ = −Σ_{j≠i} E′(d_ij)(x_i − x_j)/d_ij with E′(d) = 4a(d − d₀)³ + 2b(d − d₀),
/// detached like the generic autograd score; a pair of coincident particles (d_ij = 0, where
/// E is not differentiable: a cone, E′(0) ≠ 0) contributes 0. This matters for PIS, whose
/// Dirac prior starts every particle at the origin: autograd gives NaN there.
///
/// **Reference samples**: the test split of Klein et al. 2023 (`test_split_DW4.npy` from
/// jarridrb/DEM, float32 `[10000, 8]`), centred on loading and returned as float64. Its mean
/// energy is ≈ −22.4504.
///
/// Domain: ±5 per coordinate (centred reference coordinates lie within ±4.1).
///
/// [`Target::zero_com`] is (4, 2): simulations project prior samples, noise and controls onto
/// the zero-centre-of-mass subspace.
pub struct Dw4;

impl Target for Dw4 {
    fn name(&self) -> &str {
        "dw4"
    }

    fn dim(&self) -> usize {
        DW4_PARTICLES * DW4_SPATIAL
    }

    fn log_density(&self, x: &Tensor) -> Tensor {
        -dw4_energy(x)
    }

    fn score(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let (p, k) = (DW4_PARTICLES as i64, DW4_SPATIAL as i64);
            let v = x.detach().reshape([-1, p, k]);
            // diff[n, i, j, :] = x_i − x_j, d[n, i, j] = ‖x_i − x_j‖.
            let diff = v.unsqueeze(2) - v.unsqueeze(1);
            let d = diff
                .square()
                .sum_dim_intlist(-1, false, None::<Kind>)
                .sqrt();
            let u = &d - DW4_D0;
            let de = u.pow_tensor_scalar(3.0) * (4.0 * DW4_A) + &u * (2.0 * DW4_B);
            let pos = d.gt(0.0);
            let safe_d = d.where_self(&pos, &d.ones_like());
            let coef = (de / safe_d).where_self(&pos, &d.zeros_like());
            let g = (coef.unsqueeze(-1) * diff).sum_dim_intlist(2, false, None::<Kind>);
            (-g).reshape([-1, p * k])
        })
    }

    /// Not defined (translation-invariant density).
    fn log_z(&self) -> Option<f64> {
        None
    }

    fn domain(&self) -> Vec<(f64, f64)> {
        vec![(-5.0, 5.0); self.dim()]
    }

    fn reference_samples(&self) -> Option<Result<Tensor>> {
        Some(load_npy_f32(DW4_TEST_SPLIT, "dw4 test split").map(|x| remove_mean(&x)))
    }

    /// 4 particles in 2-D: samplers keep states in the zero-centre-of-mass subspace
    /// (`benchmarks.md` §3.7), where exp(−E) is normalisable.
    fn zero_com(&self) -> Option<lv_core::subspace::ZeroCom> {
        Some(lv_core::subspace::ZeroCom {
            particles: DW4_PARTICLES,
            dim: DW4_SPATIAL,
        })
    }
}
