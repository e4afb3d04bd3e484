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
/// ρ is not integrable on R⁸, and **log Z is not defined/used** (`None`). Score: autograd
/// default.
///
/// **Reference samples**: the test split of Klein et al. 2023 (`test_split_DW4.npy` from
/// jarridrb/DEM, float32 `[10000, 8]`), centred on loading and returned as float64. Its mean
/// energy is ≈ −22.4504.
///
/// Domain: ±5 per coordinate (centred reference coordinates lie within ±4.1).
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
}
