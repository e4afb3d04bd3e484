//! RSMC's discrete-time "ou_dds" reference: the step scheme, the log-RND against the
//! closed-form Gaussian kernel log-densities (on- and off-policy, simulation and replay),
//! and the optimal control of a Gaussian target.

use lv_core::control::FnControl;
use lv_core::method::{ou_dds_alpha, Method};
use lv_core::sim::{replay_lv, simulate, Controls, Mode, SimOptions};
use lv_core::testing::{rng_lock, ScaledGauss};
use tch::{Device, Kind, Tensor};

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

/// log N(x; m, s² I) per row.
fn log_normal(x: &Tensor, m: &Tensor, s2: f64) -> Tensor {
    let d = x.size()[1] as f64;
    (x - m)
        .square()
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Double)
        * (-0.5 / s2)
        - 0.5 * d * (2.0 * std::f64::consts::PI * s2).ln()
}

#[test]
fn step_scheme_sums_to_the_noise_scale() {
    for (n, a0) in [(64usize, 0.248), (128, 0.125)] {
        let a: Vec<f64> = (0..n).map(|k| ou_dds_alpha(k, n, 6.0)).collect();
        let total: f64 = a.iter().sum();
        // The (N + 1)-th entry of the normaliser is ≈ 0, so Σ_{n<N} a_n is 6 to rounding.
        assert!((total - 6.0).abs() < 1e-9, "N = {n}: Σa = {total}");
        assert!((a[0] - a0).abs() < 1e-3, "N = {n}: a_0 = {}", a[0]);
        assert!(a.windows(2).all(|w| w[1] < w[0]), "a_n decreases");
        assert!(a[n - 1] > 0.0 && a[n - 1] < 1e-6);
    }
}

/// R of the simulation (and of the replay) equals
/// log p_0(x_0) + Σ log p_F(x_{n+1}|x_n) − Σ log p_B(x_n|x_{n+1}) − log ρ(x_N) with the
/// closed-form kernels, on the simulated (on- or off-policy) path, in float64.
#[test]
fn rnd_equals_the_kernel_log_densities() {
    let _g = rng_lock();
    let (steps, sigma0, d, n) = (16usize, 2.0, 3i64, 64i64);
    let method = Method::ou_dds(steps, sigma0, 6.0).unwrap();
    let target = ScaledGauss {
        dim: d as usize,
        mean: 0.7,
        std: 1.3,
        log_z: 0.4,
    };
    let u_fn = |t: f64, x: &Tensor| x.sin() * 0.5 + t * 0.3 - 0.2;
    let u = FnControl(u_fn);
    let controls = Controls::new(&u);
    for lam in [1.0, 1.5] {
        tch::manual_seed(5);
        let x0 = method.prior.sample(n, d, Device::Cpu).to_kind(Kind::Double);
        let mut opts = SimOptions::new(Mode::Lv);
        opts.noise_scale = lam;
        opts.record = true;
        let out = tch::no_grad(|| simulate(&method, &target, controls, &x0, opts));
        let rec = out.recording.expect("recording requested");
        let xs = rec.xs.reshape([steps as i64, n, d]);
        let mut path: Vec<Tensor> = (0..steps as i64).map(|k| xs.get(k)).collect();
        path.push(out.x_final.shallow_clone());
        let mut exact = log_normal(&path[0], &Tensor::zeros([n, d], F64), sigma0 * sigma0);
        for k in 0..steps {
            let a = ou_dds_alpha(k, steps, 6.0);
            let t = k as f64 / steps as f64;
            let (x, x1) = (&path[k], &path[k + 1]);
            let fwd_mean = x * (1.0 - a).sqrt() + u_fn(t, x) * a;
            exact += log_normal(x1, &fwd_mean, a * sigma0 * sigma0);
            exact -= log_normal(x, &(x1 * (1.0 - a).sqrt()), a * sigma0 * sigma0);
        }
        let log_rho =
            -(&path[steps] - 0.7)
                .square()
                .sum_dim_intlist([1i64].as_slice(), false, Kind::Double)
                / (2.0 * 1.3 * 1.3)
                - 0.5 * d as f64 * (2.0 * std::f64::consts::PI * 1.3 * 1.3).ln()
                + 0.4;
        exact -= log_rho;
        let gap = (&out.rnd - &exact).abs().max().double_value(&[]);
        assert!(gap < 1e-9, "λ = {lam}: R − exact = {gap}");
        let replayed = replay_lv(&method, &method.grid, controls, &rec);
        // The replay's per-step coefficient columns are float32.
        let gap = (replayed - &out.rnd).abs().max().double_value(&[]);
        assert!(gap < 1e-5, "λ = {lam}: replayed R − simulated R = {gap}");
    }
}

/// For the target e^c·N(m·1, σ₀² I) the backward process started at the target has the
/// forward conditionals N(√(1−a_n)x_n + a_n m_{n+1}, a_n σ₀² I) with m_n = m·Π_{k≥n} √(1−a_k),
/// so the control u_n = m_{n+1} is optimal given x_0 and
/// r(τ) = log N(x_0; 0, σ₀²) − log N(x_0; m_0, σ₀²) − c for every trajectory; with m = 0 the
/// zero control gives r ≡ −c (zero variance).
#[test]
fn optimal_control_of_a_gaussian_target_has_zero_variance() {
    let _g = rng_lock();
    let (steps, sigma0, d, n) = (32usize, 1.5, 2i64, 2048i64);
    let method = Method::ou_dds(steps, sigma0, 6.0).unwrap();
    for m in [0.0, 0.8] {
        let target = ScaledGauss {
            dim: d as usize,
            mean: m,
            std: sigma0,
            log_z: 0.3,
        };
        let c: Vec<f64> = (0..steps)
            .map(|k| (1.0 - ou_dds_alpha(k, steps, 6.0)).sqrt())
            .collect();
        // m_n = m·Π_{k=n}^{N−1} c_k, n = 0..=N.
        let mean_at = |n: usize| m * c[n..].iter().product::<f64>();
        let u = FnControl(move |t: f64, x: &Tensor| {
            let k = (t * steps as f64).round() as usize;
            x.zeros_like() + mean_at(k + 1)
        });
        tch::manual_seed(9);
        let x0 = method.prior.sample(n, d, Device::Cpu).to_kind(Kind::Double);
        let out = tch::no_grad(|| {
            simulate(
                &method,
                &target,
                Controls::new(&u),
                &x0,
                SimOptions::new(Mode::Lv),
            )
        });
        let m0 = Tensor::zeros([n, d], F64) + mean_at(0);
        let s2 = sigma0 * sigma0;
        let predicted =
            log_normal(&x0, &Tensor::zeros([n, d], F64), s2) - log_normal(&x0, &m0, s2) - 0.3;
        let resid = &out.rnd - predicted;
        let spread = resid.abs().max().double_value(&[]);
        assert!(spread < 1e-9, "m = {m}: max |r − predicted| = {spread}");
        if m == 0.0 {
            let var = out.rnd.var(false).double_value(&[]);
            assert!(
                var < 1e-18,
                "zero control on the reference's own law: Var r = {var}"
            );
        }
        // A suboptimal control has a clearly positive variance of the same residual.
        let bad = FnControl(|_t: f64, x: &Tensor| x * 0.3);
        let out_bad = tch::no_grad(|| {
            simulate(
                &method,
                &target,
                Controls::new(&bad),
                &x0,
                SimOptions::new(Mode::Lv),
            )
        });
        assert!(out_bad.rnd.var(false).double_value(&[]) > 1e-2);
    }
}
