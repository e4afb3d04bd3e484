//! Tests of the target scores: finite differences, float32 host loops against float64, and
//! analytic scores that keep the graph.

mod common;

use common::*;
use lv_core::Target;
use tch::{Device, Kind, Tensor};

/// Directional central differences of log ρ in float64 against v·score, at points in the
/// domain box and in its tails (scale 1.5), plus full coordinate differences for d ≤ 10.
fn check_score(t: &dyn Target, seed: i64) {
    tch::manual_seed(seed);
    let d = t.dim() as i64;
    let h = 1e-5;
    for scale in [0.5, 1.0, 1.5] {
        let x = points_in_domain(t, 6, scale);
        let s = t.score(&x);
        assert_eq!(s.size(), vec![6, d]);
        let mut dirs: Vec<Tensor> = (0..4)
            .map(|_| {
                let v = Tensor::randn([6, d], (Kind::Double, Device::Cpu));
                &v / v.norm_scalaropt_dim(2.0, [1], true)
            })
            .collect();
        if d <= 10 {
            for j in 0..d {
                dirs.push(
                    Tensor::zeros([6, d], (Kind::Double, Device::Cpu)).index_fill(
                        1,
                        &Tensor::from_slice(&[j]),
                        1.0,
                    ),
                );
            }
        }
        let f0: Vec<f64> = Vec::try_from(&t.log_density(&x)).unwrap();
        for v in dirs {
            let fp = t.log_density(&(&x + &v * h));
            let fm = t.log_density(&(&x - &v * h));
            let fd: Vec<f64> = Vec::try_from((fp - fm) / (2.0 * h)).unwrap();
            let an: Vec<f64> =
                Vec::try_from((&s * &v).sum_dim_intlist(1, false, None::<Kind>)).unwrap();
            let mag: Vec<f64> =
                Vec::try_from((&s * &v).abs().sum_dim_intlist(1, false, None::<Kind>)).unwrap();
            for i in 0..6 {
                let tol = 1e-5 * (1.0 + mag[i]) + 1e-13 * (1.0 + f0[i].abs()) / h;
                assert!(
                    (fd[i] - an[i]).abs() <= tol,
                    "{}: scale {scale}, point {i}: finite difference {} vs score {} (tol {tol})",
                    t.name(),
                    fd[i],
                    an[i]
                );
            }
        }
    }
}

#[test]
fn scores_match_finite_differences() {
    let _g = lock();
    for (i, n) in ALL.iter().enumerate() {
        check_score(target(n).as_ref(), 100 + i as i64);
    }
}

/// Float32 CPU batches without a graph take the host loops of some targets (gmm*, fab40,
/// funnel); they must agree with the float64 tensor path (checked against finite differences
/// above) to float32 rounding, in the domain box and in its tails.
#[test]
fn float32_scores_match_float64_scores() {
    let _g = lock();
    for (i, n) in ALL.iter().enumerate() {
        let t = target(n);
        tch::manual_seed(500 + i as i64);
        for scale in [0.5, 1.0, 1.5] {
            let x64 = points_in_domain(t.as_ref(), 64, scale);
            let x32 = x64.to_kind(Kind::Float);
            let s64 = t.score(&x64);
            let s32 = t.score(&x32).to_kind(Kind::Double);
            assert_eq!(s32.size(), s64.size(), "{n}");
            let err = (&s32 - &s64).abs() - (s64.abs() + 1.0) * 2e-4;
            let worst = err.max().double_value(&[]);
            assert!(
                worst <= 0.0,
                "{n}, scale {scale}: float32 score off by {worst} beyond tolerance"
            );
        }
    }
}

#[test]
fn analytic_scores_stay_in_graph() {
    let _g = lock();
    for n in ALL {
        let t = target(n);
        let x = points_in_domain(t.as_ref(), 4, 0.5)
            .to_kind(Kind::Float)
            .set_requires_grad(true);
        let s = t.score(&x);
        assert_eq!(s.requires_grad(), t.score_in_graph(), "{n}");
    }
    for n in [
        "funnel10",
        "mw5",
        "mw50",
        "dw1",
        "gauss",
        "rings",
        "manywell32",
    ] {
        assert!(target(n).score_in_graph(), "{n} has an analytic score");
    }
}

/// Autograd's H v, differentiating the analytic score (which stays in the graph) in float64.
fn autograd_hvp(t: &dyn Target, x: &Tensor, v: &Tensor) -> Tensor {
    let xl = x.detach().set_requires_grad(true);
    let s = (t.score(&xl) * v).sum(Kind::Double);
    Tensor::run_backward(&[s], &[&xl], false, false).remove(0)
}

/// Largest |H v − want| beyond `rel`·|want| + 1e-12·max|want| (the last term for entries
/// that cancel between terms of size max|want|); ≤ 0 passes.
fn excess(h: &Tensor, want: &Tensor, rel: f64) -> f64 {
    let scale = want.abs().max().double_value(&[]);
    let tol = want.abs() * rel + 1e-12 * scale + 1e-300;
    ((h - want).abs() - tol).max().double_value(&[])
}

/// The closed-form Hessian–vector products (`Target::score_hvp`) against autograd through the
/// score: in float64 (tensor path), and in float32 (host loops) against autograd at the
/// float32-rounded inputs, in the domain box and its tails.
#[test]
fn closed_form_hvps_match_autograd() {
    let _g = lock();
    let mut checked = 0;
    for (i, n) in ALL.iter().enumerate() {
        let t = target(n);
        tch::manual_seed(900 + i as i64);
        for scale in [0.5, 1.0, 1.5] {
            let x = points_in_domain(t.as_ref(), 32, scale);
            let v = Tensor::randn(x.size(), (Kind::Double, Device::Cpu));
            let Some(h64) = t.score_hvp(&x, &v) else {
                continue;
            };
            let e = excess(&h64, &autograd_hvp(t.as_ref(), &x, &v), 1e-9);
            assert!(
                e <= 0.0,
                "{n}, scale {scale}: float64 Hv off by {e} beyond tolerance"
            );
            let (x32, v32) = (x.to_kind(Kind::Float), v.to_kind(Kind::Float));
            let h32 = t.score_hvp(&x32, &v32).expect("the float32 batch too");
            let want = autograd_hvp(
                t.as_ref(),
                &x32.to_kind(Kind::Double),
                &v32.to_kind(Kind::Double),
            );
            let e = excess(&h32.to_kind(Kind::Double), &want, 1e-6);
            assert!(
                e <= 0.0,
                "{n}, scale {scale}: float32 Hv off by {e} beyond tolerance"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "at least one target (funnel) has a closed-form Hv"
    );
}
