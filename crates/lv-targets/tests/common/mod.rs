//! Shared test helpers.
#![allow(dead_code)]

use lv_core::Target;
use lv_targets::by_name;
use tch::{Device, Kind, Tensor};

/// Upper (1 − α) quantile of χ²_k by the Wilson–Hilferty approximation, with z the standard
/// normal quantile (z = 3.29 ↔ α ≈ 5e-4).
pub fn chi2_critical(k: usize, z: f64) -> f64 {
    let k = k as f64;
    let a = 2.0 / (9.0 * k);
    k * (1.0 - a + z * a.sqrt()).powi(3)
}

/// Counts of each label in `0..k` of an int64 tensor.
pub fn label_counts(labels: &Tensor, k: usize) -> Vec<i64> {
    let v: Vec<i64> = Vec::try_from(labels.to_kind(Kind::Int64).to_device(Device::Cpu)).unwrap();
    let mut c = vec![0i64; k];
    for l in v {
        c[l as usize] += 1;
    }
    c
}

/// Trapezoid weights of a uniform grid of `n` points on [a, b] (returns points and weights).
pub fn trapezoid_grid(a: f64, b: f64, n: usize) -> (Vec<f64>, Vec<f64>) {
    let h = (b - a) / (n - 1) as f64;
    let x = (0..n).map(|i| a + h * i as f64).collect();
    let w = (0..n)
        .map(|i| if i == 0 || i == n - 1 { h / 2.0 } else { h })
        .collect();
    (x, w)
}

/// log ∫ exp(f) over a 1-D grid with trapezoid weights (f64 values of log ρ at the points).
pub fn log_trapezoid(log_f: &[f64], w: &[f64]) -> f64 {
    let m = log_f.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = log_f
        .iter()
        .zip(w)
        .map(|(lf, wi)| wi * (lf - m).exp())
        .sum();
    m + s.ln()
}

/// log ∫∫ ρ over [a0,b0]×[a1,b1] by the 2-D trapezoid rule with n0 × n1 points, evaluating
/// `target` in f64 on the tensor-product grid; `embed` maps the `[m, 2]` grid points to the
/// target's input (identity for 2-D targets).
pub fn log_trapezoid_2d(
    target: &dyn Target,
    (a0, b0, n0): (f64, f64, usize),
    (a1, b1, n1): (f64, f64, usize),
    embed: impl Fn(&Tensor) -> Tensor,
) -> f64 {
    let (x0, w0) = trapezoid_grid(a0, b0, n0);
    let (x1, w1) = trapezoid_grid(a1, b1, n1);
    let gx = Tensor::from_slice(&x0);
    let gy = Tensor::from_slice(&x1);
    let wx = Tensor::from_slice(&w0);
    let wy = Tensor::from_slice(&w1);
    let pts = Tensor::cartesian_prod(&[&gx, &gy]);
    let w = Tensor::cartesian_prod(&[&wx, &wy]).prod_dim_int(1, false, Kind::Double);
    let lr = tch::no_grad(|| target.log_density(&embed(&pts)));
    (lr + w.log()).logsumexp([0], false).double_value(&[])
}

/// Uniform points `[n, d]` (f64) in the target's domain box scaled by `scale` about its centre.
pub fn points_in_domain(target: &dyn Target, n: i64, scale: f64) -> Tensor {
    let dom = target.domain();
    let lo: Vec<f64> = dom
        .iter()
        .map(|(a, b)| (a + b) / 2.0 - scale * (b - a) / 2.0)
        .collect();
    let hi: Vec<f64> = dom
        .iter()
        .map(|(a, b)| (a + b) / 2.0 + scale * (b - a) / 2.0)
        .collect();
    let lo = Tensor::from_slice(&lo);
    let hi = Tensor::from_slice(&hi);
    let u = Tensor::rand([n, dom.len() as i64], (Kind::Double, Device::Cpu));
    lo.unsqueeze(0) + u * (hi - &lo).unsqueeze(0)
}

/// Mean and unbiased variance of a 1-D f64 slice.
pub fn mean_var(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, var)
}

/// Column `j` of a `[n, d]` tensor as f64.
pub fn column(x: &Tensor, j: i64) -> Vec<f64> {
    Vec::try_from(x.select(1, j).to_kind(Kind::Double).to_device(Device::Cpu)).unwrap()
}

pub const ALL: [&str; 19] = [
    "gmm9",
    "funnel10",
    "funnel10_clip30",
    "mw5",
    "mw50",
    "dw1",
    "gauss",
    "rings",
    "lgcp",
    "fab40",
    "gmm25",
    "manywell32",
    "manywell64",
    "gmm40_50d",
    "gmm40_2d",
    "gmm40_5d",
    "mos50",
    "robot4",
    "dw4",
];

pub fn target(name: &str) -> Box<dyn Target> {
    by_name(name).unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

// torch's generator is global and the test harness runs tests on parallel threads; a test
// that reseeds it while another draws can correlate that test's proposal and acceptance
// draws (seen once: a 10σ bias of the FAB many-well sampler test). Every test holds the lock.
pub use lv_core::testing::rng_lock as lock;

/// `n` exact samples of a registry target with torch seeded to `seed`.
pub fn sample(name: &str, n: usize, seed: i64) -> Tensor {
    let t = target(name);
    tch::manual_seed(seed);
    let x = t
        .sampler()
        .unwrap_or_else(|| panic!("{name} has a sampler"))
        .sample(n, Device::Cpu);
    assert_eq!(x.size(), vec![n as i64, t.dim() as i64], "{name}");
    assert_eq!(x.kind(), Kind::Float, "{name}");
    x
}
