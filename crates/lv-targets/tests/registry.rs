//! Tests of the target registry: every name builds with consistent info, unknown names and
//! bad dimensions are clear errors, log-densities have the right shapes, kinds and precision.

mod common;

use common::*;
use lv_core::checked_log_density;
use lv_targets::*;
use tch::{Device, Kind, Tensor};

#[test]
fn registry_builds_every_target_with_consistent_info() {
    let _g = lock();
    assert_eq!(names(), ALL.to_vec());
    let infos = list();
    assert_eq!(infos.len(), ALL.len());
    for info in &infos {
        let t = target(&info.name);
        assert_eq!(t.name(), info.name);
        assert_eq!(t.dim(), info.dim, "{}", info.name);
        assert_eq!(t.log_z(), info.log_z, "{}", info.name);
        assert_eq!(t.sampler().is_some(), info.has_sampler, "{}", info.name);
        assert_eq!(
            t.reference_samples().is_some(),
            info.has_reference_samples,
            "{}",
            info.name
        );
        assert!(
            info.has_sampler || info.has_reference_samples || info.name == "lgcp",
            "{}: neither sampler nor reference samples",
            info.name
        );
        assert_eq!(t.domain().len(), t.dim());
        assert!(t.domain().iter().all(|(a, b)| a < b));
    }
    let dims: Vec<(String, usize)> = infos.iter().map(|i| (i.name.clone(), i.dim)).collect();
    let expect = [
        ("gmm9", 2),
        ("funnel10", 10),
        ("mw5", 5),
        ("mw50", 50),
        ("dw1", 1),
        ("gauss", 1),
        ("rings", 2),
        ("lgcp", 1600),
        ("fab40", 2),
        ("gmm25", 2),
        ("manywell32", 32),
        ("manywell64", 64),
        ("gmm40_50d", 50),
        ("mos50", 50),
        ("robot4", 10),
        ("dw4", 8),
    ];
    for (n, d) in expect {
        assert!(
            dims.contains(&(n.to_string(), d)),
            "{n} should have d = {d}"
        );
    }
}

#[test]
fn unknown_name_lists_known_names() {
    let _g = lock();
    let err = format!(
        "{:#}",
        by_name("nope").err().expect("unknown name must fail")
    );
    assert!(err.contains("nope"), "{err}");
    for n in ALL {
        assert!(err.contains(n), "{err} should list {n}");
    }
}

#[test]
fn mode_centres_of_mixtures() {
    let _g = lock();
    let cases = [
        ("gmm9", 9, 2),
        ("gmm25", 25, 2),
        ("fab40", 40, 2),
        ("gmm40_2d", 40, 2),
        ("gmm40_5d", 40, 5),
        ("gmm40_50d", 40, 50),
        ("mos50", 10, 50),
    ];
    for (n, k, d) in cases {
        let c = mode_centres(n).unwrap_or_else(|| panic!("{n} has mode centres"));
        assert_eq!(c.len(), k, "{n}");
        assert!(c.iter().all(|m| m.len() == d), "{n}");
    }
    assert!(mode_centres("funnel10").is_none());
    assert!(mode_centres("nope").is_none());
    // Anchors: gmm9 grid order and the first GMM40 (d = 2) mean from the data README.
    assert_eq!(mode_centres("gmm9").unwrap()[1], vec![-5.0, 0.0]);
    let g = mode_centres("gmm40_2d").unwrap();
    assert_eq!(g[0], vec![-15.758228302001953, 18.116531372070312]);
}

#[test]
fn bad_dimension_is_a_clear_error() {
    let _g = lock();
    for n in ALL {
        let t = target(n);
        let d = t.dim() as i64;
        let x = Tensor::zeros([3, d + 1], (Kind::Float, Device::Cpu));
        let err = format!("{:#}", checked_log_density(t.as_ref(), &x).err().unwrap());
        assert!(err.contains(n), "{err}");
        assert!(err.contains(&d.to_string()), "{err}");
        assert!(err.contains(&(d + 1).to_string()), "{err}");
        let x1 = Tensor::zeros([d], (Kind::Float, Device::Cpu));
        assert!(
            checked_log_density(t.as_ref(), &x1).is_err(),
            "{n}: 1-D input"
        );
    }
}

#[test]
fn log_density_shapes_kinds_and_precision() {
    let _g = lock();
    tch::manual_seed(0);
    for n in ALL {
        let t = target(n);
        let x64 = points_in_domain(t.as_ref(), 7, 0.5);
        let x32 = x64.to_kind(Kind::Float);
        let l64 = checked_log_density(t.as_ref(), &x64).unwrap();
        let l32 = checked_log_density(t.as_ref(), &x32).unwrap();
        assert_eq!(l64.size(), vec![7], "{n}");
        assert_eq!(l64.kind(), Kind::Double, "{n}");
        assert_eq!(l32.kind(), Kind::Float, "{n}");
        let a: Vec<f64> = Vec::try_from(&l64).unwrap();
        let b: Vec<f64> = Vec::try_from(&l32.to_kind(Kind::Double)).unwrap();
        for (u, v) in a.iter().zip(&b) {
            assert!(u.is_finite(), "{n}: non-finite log density {u}");
            // float32 evaluation of inputs rounded to float32: loose relative agreement.
            assert!(
                (u - v).abs() <= 1e-3 * (1.0 + u.abs()),
                "{n}: f64 {u} vs f32 {v}"
            );
        }
        let s = t.score(&x32);
        assert_eq!(s.size(), x32.size(), "{n}");
        assert_eq!(s.kind(), Kind::Float, "{n}");
    }
}
