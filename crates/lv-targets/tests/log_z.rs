//! Tests of log Z: reference constants and independent 1-d, block and 2-d quadrature.

mod common;

use approx::assert_abs_diff_eq;
use common::*;
use lv_core::Target;
use lv_targets::*;
use tch::{Device, Kind, Tensor};

#[test]
fn log_z_matches_reference_constants() {
    let _g = lock();
    let cases = [
        ("gmm9", 0.0, 0.0),
        ("funnel10", 0.0, 0.0),
        ("funnel10_clip30", 0.0, 0.0),
        ("gauss", 0.0, 0.0),
        ("fab40", 0.0, 0.0),
        ("gmm25", 0.0, 0.0),
        ("gmm40_2d", 0.0, 0.0),
        ("gmm40_5d", 0.0, 0.0),
        ("gmm40_50d", 0.0, 0.0),
        ("mos50", 0.0, 0.0),
        ("mw5", -0.5410555129, 1e-9),
        ("mw50", 42.81724268, 1e-8),
        ("dw1", 0.2930017367, 1e-9),
        ("manywell32", 164.6956753198, 1e-9),
        ("manywell64", 329.3913506396, 1e-9),
        ("lgcp", 512.6, 0.0),
    ];
    for (n, v, tol) in cases {
        let tol: f64 = tol;
        let lz = target(n).log_z().unwrap_or_else(|| panic!("{n} has log Z"));
        assert_abs_diff_eq!(lz, v, epsilon = tol.max(1e-12));
    }
    assert!(target("robot4").log_z().is_none());
    assert!(target("dw4").log_z().is_none());
    // Per-well constants and the exact Z_x1 of the FAB ManyWell.
    assert_abs_diff_eq!(wells::double_well_z1(4.0), 0.8974381249, epsilon = 1e-10);
    assert_abs_diff_eq!(wells::double_well_z1(2.0), 1.340445118, epsilon = 1e-9);
    let (x, w) = trapezoid_grid(-6.0, 6.0, 24_001);
    let lf: Vec<f64> = x.iter().map(|&x| FabManyWell::log_rho_x1(x)).collect();
    assert_abs_diff_eq!(
        log_trapezoid(&lf, &w).exp(),
        11784.509265127827,
        epsilon = 1e-6
    );
}

fn log_z_1d(t: &dyn Target, a: f64, b: f64, n: usize, embed: impl Fn(&Tensor) -> Tensor) -> f64 {
    let (x, w) = trapezoid_grid(a, b, n);
    let xt = Tensor::from_slice(&x).unsqueeze(1);
    let lf: Vec<f64> = Vec::try_from(t.log_density(&embed(&xt))).unwrap();
    log_trapezoid(&lf, &w)
}

#[test]
fn log_z_matches_independent_quadrature() {
    let _g = lock();
    // 1-D targets.
    let dw1 = target("dw1");
    let q = log_z_1d(dw1.as_ref(), -6.0, 9.0, 30_001, |x| x.shallow_clone());
    assert_abs_diff_eq!(q, dw1.log_z().unwrap(), epsilon = 1e-9);
    let gauss = target("gauss");
    let q = log_z_1d(gauss.as_ref(), -12.0, 18.0, 30_001, |x| x.shallow_clone());
    assert_abs_diff_eq!(q, 0.0, epsilon = 1e-9);

    // mw5 through its 1-D factor: log ρ(x, 2, 2, 2, 2) = log ρ₁(x) (ρ₁(2) = 1 for δ = 4).
    let mw5 = target("mw5");
    let q = log_z_1d(mw5.as_ref(), -6.0, 6.0, 24_001, |x| {
        Tensor::cat(&[x.shallow_clone(), x.ones_like().repeat([1, 4]) * 2.0], 1)
    });
    assert_abs_diff_eq!(5.0 * q, mw5.log_z().unwrap(), epsilon = 1e-8);
    // mw50: the same for a δ = 2 well (x_{1..4} = √2, Gaussian part at 0).
    let mw50 = target("mw50");
    let q = log_z_1d(mw50.as_ref(), -6.0, 6.0, 24_001, |x| {
        let n = x.size()[0];
        Tensor::cat(
            &[
                x.shallow_clone(),
                x.ones_like().repeat([1, 4]) * 2f64.sqrt(),
                Tensor::zeros([n, 45], (Kind::Double, Device::Cpu)),
            ],
            1,
        )
    });
    assert_abs_diff_eq!(
        5.0 * q + 45.0 * 0.5 * (2.0 * std::f64::consts::PI).ln(),
        mw50.log_z().unwrap(),
        epsilon = 1e-8
    );
}

#[test]
fn log_z_matches_block_quadrature() {
    let _g = lock();
    // FAB ManyWell through one 2-D block (other coordinates 0: log ρ contribution 0).
    for n in ["manywell32", "manywell64"] {
        let t = target(n);
        let d = t.dim() as i64;
        let q = log_z_trapezoid_block(t.as_ref(), d);
        assert_abs_diff_eq!(q * (d / 2) as f64, t.log_z().unwrap(), epsilon = 1e-6);
    }
}

#[test]
fn log_z_matches_2d_quadrature() {
    let _g = lock();
    // 2-D targets on their domain boxes (enlarged by 1), steps well below the mode widths
    // (σ = 0.548 for the grids, 0.0707 for the rings): the trapezoid error of a smooth,
    // rapidly decaying integrand is ~exp(−2π²σ²/h²), negligible here.
    for (n, h, tol) in [
        ("gmm9", 0.1, 1e-8),
        ("gmm25", 0.1, 1e-8),
        ("rings", 0.025, 1e-7),
    ] {
        let t = target(n);
        let (a, b) = t.domain()[0];
        let m = ((b - a + 2.0) / h).round() as usize + 1;
        let q = log_trapezoid_2d(
            t.as_ref(),
            (a - 1.0, b + 1.0, m),
            (a - 1.0, b + 1.0, m),
            |x| x.shallow_clone(),
        );
        assert_abs_diff_eq!(q, t.log_z().unwrap(), epsilon = tol);
    }
    assert_abs_diff_eq!(target("rings").log_z().unwrap(), 2.30483, epsilon = 1e-4);
}

#[test]
fn log_z_matches_2d_quadrature_wide_mixtures() {
    let _g = lock();
    // The wide 40-mode mixtures (σ = 1.31 and 1), step 0.25 on the domain box enlarged by 3.
    for n in ["fab40", "gmm40_2d"] {
        let t = target(n);
        let dom = t.domain();
        let ax = |(a, b): (f64, f64)| {
            (
                a - 3.0,
                b + 3.0,
                ((b - a + 6.0) / 0.25).round() as usize + 1,
            )
        };
        let q = log_trapezoid_2d(t.as_ref(), ax(dom[0]), ax(dom[1]), |x| x.shallow_clone());
        assert_abs_diff_eq!(q, 0.0, epsilon = 1e-6);
    }
}

/// log Z of one FAB ManyWell block (x₁ step 0.02 against a local width ≈ 0.2, x₂ step 0.1; the
/// other coordinates 0 contribute log ρ = 0).
fn log_z_trapezoid_block(t: &dyn Target, d: i64) -> f64 {
    log_trapezoid_2d(t, (-5.0, 5.0, 501), (-9.0, 9.0, 181), |x| {
        let n = x.size()[0];
        Tensor::cat(
            &[
                x.shallow_clone(),
                Tensor::zeros([n, d - 2], (Kind::Double, Device::Cpu)),
            ],
            1,
        )
    })
}
