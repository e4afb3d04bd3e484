//! Tests of the exact samplers: reproducibility, moments, mode frequencies and rejection
//! envelopes.

mod common;

use common::*;
use lv_core::Target;
use lv_targets::*;
use tch::{Device, Kind, Tensor};

#[test]
fn samplers_are_reproducible_and_finite() {
    let _g = lock();
    for n in ALL {
        let t = target(n);
        if let Some(s) = t.sampler() {
            tch::manual_seed(7);
            let a = s.sample(50, Device::Cpu);
            tch::manual_seed(7);
            let b = s.sample(50, Device::Cpu);
            assert!(a.equal(&b), "{n}: same seed, different samples");
            assert!(bool::try_from(a.isfinite().all()).unwrap(), "{n}");
            let lr = t.log_density(&a);
            assert!(bool::try_from(lr.isfinite().all()).unwrap(), "{n}");
            assert_eq!(s.sample(0, Device::Cpu).size(), vec![0, t.dim() as i64]);
        }
    }
}

#[test]
fn gmm_sample_moments() {
    let _g = lock();
    // gmm9: mean 0, per-coordinate variance 0.3 + 50/3; gmm25: 0.3 + 50.
    for (n, var) in [("gmm9", 0.3 + 50.0 / 3.0f64), ("gmm25", 50.3)] {
        let x = sample(n, 100_000, 1);
        for j in 0..2 {
            let (m, v) = mean_var(&column(&x, j));
            let sd = var.sqrt();
            assert!(m.abs() < 4.0 * sd / 100_000f64.sqrt(), "{n}: mean {m}");
            assert!((v - var).abs() < 0.02 * var, "{n}: var {v} vs {var}");
        }
    }
}

#[test]
fn funnel_sample_moments() {
    let _g = lock();
    let x = sample("funnel10", 100_000, 2);
    let (m0, v0) = mean_var(&column(&x, 0));
    assert!(m0.abs() < 0.05, "x0 mean {m0}");
    assert!((v0 - 9.0).abs() < 0.15, "x0 variance {v0}");
    // x_i e^{−x0/2} ~ N(0, 1) independently of x0.
    let z = x.narrow(1, 1, 9) * (x.narrow(1, 0, 1) * -0.5).exp();
    for j in 0..9 {
        let (m, v) = mean_var(&column(&z, j));
        assert!(m.abs() < 0.02 && (v - 1.0).abs() < 0.02, "z{j}: {m} {v}");
    }
    // The clipped variant: same law inside ±30, clipped outside.
    let y = sample("funnel10_clip30", 100_000, 2);
    let ymax = f64::try_from(y.abs().max()).unwrap();
    assert!(ymax <= 30.0, "max |x| = {ymax}");
    assert!(y.eq_tensor(&x.clamp(-30.0, 30.0)).all().int64_value(&[]) == 1);
}

#[test]
fn many_well_sample_stds() {
    let _g = lock();
    // Per-coordinate stds of the wells: 1.98346 (δ = 4), 1.35475 (δ = 2); Gaussian ones 1.
    let x = sample("mw5", 100_000, 3);
    for j in 0..5 {
        let (m, v) = mean_var(&column(&x, j));
        assert!(m.abs() < 0.02, "mw5 x{j} mean {m}");
        assert!(
            (v.sqrt() - 1.98346).abs() < 0.006,
            "mw5 x{j} std {}",
            v.sqrt()
        );
    }
    let x = sample("mw50", 100_000, 4);
    for j in [0, 4, 5, 49] {
        let (m, v) = mean_var(&column(&x, j));
        let s = if j < 5 { 1.35475 } else { 1.0 };
        assert!(m.abs() < 0.02, "mw50 x{j} mean {m}");
        assert!((v.sqrt() - s).abs() < 0.006, "mw50 x{j} std {}", v.sqrt());
    }
    let x = sample("dw1", 100_000, 5);
    let (m, v) = mean_var(&column(&x, 0));
    assert!((m - 1.5).abs() < 0.02, "dw1 mean {m}");
    assert!((v.sqrt() - 1.35475).abs() < 0.006, "dw1 std {}", v.sqrt());
    // E[x⁴] of a δ = 2 well against quadrature: sensitive to the shape within each well.
    let (g, w) = trapezoid_grid(-6.0, 6.0, 12_001);
    let rho: Vec<f64> = g
        .iter()
        .map(|x| (-(x * x - 2.0f64).powi(2)).exp())
        .collect();
    let z: f64 = rho.iter().zip(&w).map(|(r, w)| r * w).sum();
    let m4: f64 = rho
        .iter()
        .zip(&w)
        .zip(&g)
        .map(|((r, w), x)| r * w * x.powi(4))
        .sum::<f64>()
        / z;
    let c = column(&x, 0);
    let s4 = c.iter().map(|v| (v - 1.5).powi(4)).sum::<f64>() / c.len() as f64;
    assert!((s4 - m4).abs() < 0.02 * m4, "dw1 E[y^4] {s4} vs {m4}");
}

#[test]
fn fab_many_well_sample_moments() {
    let _g = lock();
    // Moments of the double-well coordinate against quadrature; Gaussian coordinate N(0, 1).
    let (g, w) = trapezoid_grid(-6.0, 6.0, 24_001);
    let lr: Vec<f64> = g.iter().map(|&x| FabManyWell::log_rho_x1(x)).collect();
    let mx = lr.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let rho: Vec<f64> = lr.iter().map(|l| (l - mx).exp()).collect();
    let z: f64 = rho.iter().zip(&w).map(|(r, w)| r * w).sum();
    let mom = |p: i32| {
        rho.iter()
            .zip(&w)
            .zip(&g)
            .map(|((r, w), x)| r * w * x.powi(p))
            .sum::<f64>()
            / z
    };
    let (m1, m2) = (mom(1), mom(2));
    let p_pos = rho
        .iter()
        .zip(&w)
        .zip(&g)
        .filter(|(_, x)| **x > 0.0)
        .map(|((r, w), _)| r * w)
        .sum::<f64>()
        / z;
    let x = sample("manywell32", 20_000, 6);
    let x1 = x.reshape([-1, 16, 2]).select(2, 0).reshape([-1, 1]);
    let x2 = x.reshape([-1, 16, 2]).select(2, 1).reshape([-1, 1]);
    let c1 = column(&x1, 0);
    let (s_m, s_v) = mean_var(&c1);
    let n = c1.len() as f64;
    let frac_pos = c1.iter().filter(|v| **v > 0.0).count() as f64 / n;
    assert!(
        (s_m - m1).abs() < 5.0 * (m2 - m1 * m1).sqrt() / n.sqrt(),
        "mean {s_m} vs {m1}"
    );
    assert!(
        (s_v - (m2 - m1 * m1)).abs() < 0.01 * (m2 - m1 * m1),
        "var {s_v}"
    );
    assert!(
        (frac_pos - p_pos).abs() < 5.0 * (p_pos * (1.0 - p_pos) / n).sqrt(),
        "P(x>0) {frac_pos} vs {p_pos}"
    );
    let (m, v) = mean_var(&column(&x2, 0));
    assert!(m.abs() < 0.01 && (v - 1.0).abs() < 0.02, "x2 {m} {v}");
}

#[test]
fn rejection_envelopes_are_valid() {
    let _g = lock();
    // sde_sampler wells: log ρ₁ ≤ log M + log q on a fine grid (equality at the modes).
    for t in [ManyWell::mw5(), ManyWell::mw50(), ManyWell::dw1()] {
        let lm = t.envelope().ln();
        let s = if t.name() == "dw1" { 1.5 } else { 0.0 };
        let mut worst = f64::NEG_INFINITY;
        for i in 0..=200_000 {
            let x = -12.0 + 24.0 * i as f64 / 200_000.0;
            let lr = -((x - s).powi(2) - t.delta()).powi(2);
            worst = worst.max(lr - lm - t.log_proposal(x));
        }
        assert!(worst <= 1e-12, "{}: envelope violated by {worst}", t.name());
        assert!(worst > -0.01, "{}: envelope not tight ({worst})", t.name());
    }
    // The reference code's M = 3 is not an envelope for δ = 2.
    let dw = ManyWell::dw1();
    assert!(-dw.log_proposal(dw.delta().sqrt() + 1.5) > 3f64.ln());
    // FAB ManyWell proposal.
    let t = FabManyWell::new(32);
    let mut worst = f64::NEG_INFINITY;
    for i in 0..=400_000 {
        let x = -10.0 + 20.0 * i as f64 / 400_000.0;
        worst =
            worst.max(FabManyWell::log_rho_x1(x) - t.log_envelope() - FabManyWell::log_proposal(x));
    }
    assert!(worst <= 0.0, "FAB envelope violated by {worst}");
    assert!(worst > -0.1, "FAB envelope loose ({worst})");
    // Acceptance rate Z/M is reasonable.
    let acc = (wells::FAB_Z_X1.ln() - t.log_envelope()).exp();
    assert!(acc > 0.4, "acceptance {acc}");
}

#[test]
fn gauss_and_rings_sample_moments() {
    let _g = lock();
    let x = sample("gauss", 100_000, 8);
    let (m, v) = mean_var(&column(&x, 0));
    assert!((m - 3.0).abs() < 0.015 && (v - 1.0).abs() < 0.02, "{m} {v}");

    // Rings: ring frequencies ∝ Z_k ≈ r_k, radial spread σ = 1/√200 around each ring,
    // isotropic angles.
    let x = sample("rings", 60_000, 9);
    let r = x.square().sum_dim_intlist(1, false, None::<Kind>).sqrt();
    let radii = Tensor::from_slice(&[1.0f32, 3.0, 5.0]);
    let lab = (r.unsqueeze(1) - radii.unsqueeze(0)).abs().argmin(1, false);
    let counts = label_counts(&lab, 3);
    let n = 60_000.0;
    let stat: f64 = counts
        .iter()
        .zip([1.0, 3.0, 5.0])
        .map(|(&c, rk)| {
            let e = n * rk / 9.0;
            (c as f64 - e).powi(2) / e
        })
        .sum();
    assert!(
        stat < chi2_critical(2, 3.29),
        "ring counts {counts:?} (χ² {stat})"
    );
    let centre = radii.index_select(0, &lab);
    let dev = column(&(r - centre).unsqueeze(1), 0);
    let (m, v) = mean_var(&dev);
    // E[r − r_k] = σ²/r_k averaged: small positive; variance ≈ σ² = 0.005.
    assert!(
        m.abs() < 0.003 && (v - 0.005).abs() < 0.0003,
        "radial {m} {v}"
    );
    let (mx, _) = mean_var(&column(&x, 0));
    let (my, _) = mean_var(&column(&x, 1));
    assert!(mx.abs() < 0.05 && my.abs() < 0.05, "{mx} {my}");
}

/// χ² test of the mode frequencies with *soft* counts Σ_i resp_k(x_i) (posterior
/// responsibilities): E[resp_k(x)] = w_k exactly for x from the mixture, and the soft counts
/// are less variable than the latent labels (a conditional expectation), so the multinomial χ²
/// critical value is conservative. Hard argmax counts would be biased where modes overlap
/// (`fab40`).
fn check_mixture_frequencies(name: &str, k: usize, log_comp: impl Fn(&Tensor) -> Tensor) {
    let x = sample(name, 800 * k.max(25), 11);
    let resp = log_comp(&x.to_kind(Kind::Double)).softmax(1, Kind::Double);
    let soft: Vec<f64> = Vec::try_from(resp.sum_dim_intlist(0, false, Kind::Double)).unwrap();
    let n: f64 = soft.iter().sum();
    let e = n / k as f64;
    let stat: f64 = soft.iter().map(|c| (c - e).powi(2) / e).sum();
    assert!(
        stat < chi2_critical(k - 1, 3.29),
        "{name}: χ² {stat} (df {}) soft counts {soft:?}",
        k - 1
    );
    assert!(
        soft.iter().all(|&c| c > 0.5 * e),
        "{name}: under-populated mode"
    );
}

#[test]
fn mixture_mode_frequencies_match_weights() {
    let _g = lock();
    let gm = [
        GaussianMixture::gmm9(),
        GaussianMixture::gmm25(),
        GaussianMixture::fab40().unwrap(),
        GaussianMixture::gmm40(2).unwrap(),
        GaussianMixture::gmm40(5).unwrap(),
        GaussianMixture::gmm40(50).unwrap(),
    ];
    for g in &gm {
        check_mixture_frequencies(g.name(), g.means().len(), |x| g.component_log_densities(x));
    }
    let mos = MixtureOfStudents::mos50().unwrap();
    check_mixture_frequencies("mos50", 10, |x| mos.component_log_densities(x));
}

#[test]
fn mos_marginals_are_student_t() {
    let _g = lock();
    // Given the component, (x − m_k) per coordinate is t₂: P(|t| ≤ 1) = 1/√3, P(|t| ≤ 3) = 3/√11.
    let mos = MixtureOfStudents::mos50().unwrap();
    let x = sample("mos50", 20_000, 12);
    let lab = mos.component_log_densities(&x).argmax(1, false);
    let locs: Vec<f64> = mos.locations().iter().flatten().copied().collect();
    let locs = Tensor::from_slice(&locs)
        .reshape([10, 50])
        .to_kind(Kind::Float);
    let t = (x - locs.index_select(0, &lab)).abs();
    let n = t.numel() as f64;
    for (c, p) in [(1.0, 1.0 / 3f64.sqrt()), (3.0, 3.0 / 11f64.sqrt())] {
        let f = f64::try_from(t.le(c).to_kind(Kind::Double).sum(Kind::Double)).unwrap() / n;
        assert!((f - p).abs() < 0.005, "P(|t| <= {c}) = {f} vs {p}");
    }
}
