//! Analytic targets and controls with known answers, for tests and sanity checks.

use crate::prior::gauss_log_prob;
use crate::target::Target;
use tch::{Kind, Tensor};

/// ρ(x) = e^c · N(x; m·1, s² I): log Z = c exactly. Analytic score (in graph).
#[derive(Clone, Debug)]
pub struct ScaledGauss {
    pub dim: usize,
    pub mean: f64,
    pub std: f64,
    pub log_z: f64,
}

impl Target for ScaledGauss {
    fn name(&self) -> &str {
        "scaled_gauss"
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn log_density(&self, x: &Tensor) -> Tensor {
        gauss_log_prob(&(x - self.mean), self.std) + self.log_z
    }
    fn score(&self, x: &Tensor) -> Tensor {
        -(x - self.mean) / (self.std * self.std)
    }
    fn score_in_graph(&self) -> bool {
        true
    }
    fn log_z(&self) -> Option<f64> {
        Some(self.log_z)
    }
    fn domain(&self) -> Vec<(f64, f64)> {
        vec![(self.mean - 5.0 * self.std, self.mean + 5.0 * self.std); self.dim]
    }
}

/// A translation-invariant "particle" Gaussian: P particles of dimension k,
/// ρ(x) = exp(−|Πx|²/(2s²)) with Π the zero-centre-of-mass projection. Not normalisable on
/// R^{P·k}; on the zero-CoM subspace log Z = ((P − 1)k/2)·log(2πs²).
#[derive(Clone, Debug)]
pub struct ZeroComGauss {
    pub particles: usize,
    pub dim: usize,
    pub std: f64,
}

impl ZeroComGauss {
    fn zc(&self) -> crate::subspace::ZeroCom {
        crate::subspace::ZeroCom {
            particles: self.particles,
            dim: self.dim,
        }
    }
}

impl Target for ZeroComGauss {
    fn name(&self) -> &str {
        "zero_com_gauss"
    }
    fn dim(&self) -> usize {
        self.particles * self.dim
    }
    fn log_density(&self, x: &Tensor) -> Tensor {
        let px = self.zc().project(x);
        px.square()
            .sum_dim_intlist([1i64].as_slice(), false, x.kind())
            * (-0.5 / (self.std * self.std))
    }
    fn score(&self, x: &Tensor) -> Tensor {
        -self.zc().project(x) / (self.std * self.std)
    }
    fn score_in_graph(&self) -> bool {
        true
    }
    fn log_z(&self) -> Option<f64> {
        let k = ((self.particles - 1) * self.dim) as f64;
        Some(0.5 * k * (2.0 * std::f64::consts::PI * self.std * self.std).ln())
    }
    fn domain(&self) -> Vec<(f64, f64)> {
        vec![(-5.0 * self.std, 5.0 * self.std); self.dim()]
    }
    fn zero_com(&self) -> Option<crate::subspace::ZeroCom> {
        Some(self.zc())
    }
}

/// Wraps a target and returns NaN for log ρ where the first coordinate exceeds `threshold`.
pub struct NanAbove<T> {
    pub inner: T,
    pub threshold: f64,
}

impl<T: Target> Target for NanAbove<T> {
    fn name(&self) -> &str {
        "nan_above"
    }
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn log_density(&self, x: &Tensor) -> Tensor {
        let lp = self.inner.log_density(x);
        let bad = x.select(1, 0).gt(self.threshold);
        lp.where_self(
            &bad.logical_not(),
            &Tensor::full([], f64::NAN, (lp.kind(), lp.device())),
        )
    }
    fn log_z(&self) -> Option<f64> {
        None
    }
    fn domain(&self) -> Vec<(f64, f64)> {
        self.inner.domain()
    }
}

/// A control linear in its parameters, u(t, x) = x·W + t·b + c, for gradient tests.
pub struct LinearControl {
    pub w: Tensor,
    pub b: Tensor,
    pub c: Tensor,
    pub use_score: bool,
}

impl LinearControl {
    /// Random small parameters (torch's global generator).
    pub fn new(d: i64, use_score: bool) -> Self {
        let o = (Kind::Float, tch::Device::Cpu);
        Self {
            w: (Tensor::randn([d, d], o) * 0.1).set_requires_grad(true),
            b: (Tensor::randn([d], o) * 0.1).set_requires_grad(true),
            c: (Tensor::randn([d], o) * 0.1).set_requires_grad(true),
            use_score,
        }
    }
}

impl crate::control::Control for LinearControl {
    fn eval(&self, t: f64, x: &Tensor, score: Option<&Tensor>) -> Tensor {
        let mut u = x.matmul(&self.w) + &self.b * t + &self.c;
        if self.use_score {
            u += score.expect("score requested") * 0.1;
        }
        u
    }
    fn needs_target_score(&self) -> bool {
        self.use_score
    }
    fn parameters(&self) -> Vec<Tensor> {
        vec![
            self.w.shallow_clone(),
            self.b.shallow_clone(),
            self.c.shallow_clone(),
        ]
    }
}

static RNG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Serialises tests that seed torch's global generator: the test harness runs tests on
/// parallel threads, and a test reseeding the generator while another draws would make the
/// other's draws irreproducible (or even correlated). Hold the guard for the whole test.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asserts that two lists of parameter gradients agree to relative L2 difference `tol` per
/// parameter, and that the reference is not trivially zero (so the check can fail).
pub fn assert_grads_close(reference: &[Tensor], other: &[Tensor], tol: f64, what: &str) {
    assert_eq!(
        reference.len(),
        other.len(),
        "{what}: gradient counts differ"
    );
    assert!(
        reference
            .iter()
            .any(|g| g.abs().max().double_value(&[]) > 1e-6),
        "{what}: the reference gradient is zero"
    );
    for (i, (a, b)) in reference.iter().zip(other).enumerate() {
        let rel = (a - b).norm().double_value(&[]) / a.norm().double_value(&[]).max(1e-12);
        assert!(
            rel < tol,
            "{what}: parameter {i}: relative difference {rel}"
        );
    }
}
