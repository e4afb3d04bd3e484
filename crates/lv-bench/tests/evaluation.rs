//! The final evaluation's conventions: each sample metric on the sample size its config key
//! names (spec §10), Δstd against the target's exact stds, errors of every estimate.

use lv_bench::config::EvalConfig;
use lv_bench::run::{reference_stds, sample_metrics, StdReference, STD_REFERENCE_SAMPLES};
use ndarray::Array2;
use std::sync::Mutex;

/// torch's generator is global: tests that seed it run one at a time.
static GENERATOR: Mutex<()> = Mutex::new(());

#[test]
fn each_metric_uses_the_size_its_key_names() {
    let _g = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let target = lv_targets::by_name("gmm9").unwrap();
    tch::manual_seed(3);
    let x =
        lv_bench::run::to_array(&target.sampler().unwrap().sample(300, tch::Device::Cpu)).unwrap();
    let eval = EvalConfig {
        n_metrics: 50,
        n_sinkhorn_sde: 200,
        ..Default::default()
    };
    let m = sample_metrics(target.as_ref(), &x, &eval, 1)
        .unwrap()
        .unwrap();
    let sizes = m.metric_sizes.clone().expect("metric sizes");
    assert_eq!(sizes.w2, [50, 50], "{m:?}");
    assert_eq!(sizes.sinkhorn_div, [50, 50]);
    assert_eq!(sizes.mmd, [50, 50]);
    assert_eq!(sizes.sinkhorn_sde, [200, 200]);
    // Fewer model samples than the key: the size used says so.
    let small: Array2<f64> = x.slice(ndarray::s![..120, ..]).to_owned();
    let m = sample_metrics(target.as_ref(), &small, &eval, 1)
        .unwrap()
        .unwrap();
    assert_eq!(
        m.metric_sizes.expect("metric sizes").sinkhorn_sde,
        [120, 200]
    );
}

#[test]
fn std_reference_is_exact_where_known_else_large_fixed_samples() {
    let _g = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let gmm = lv_targets::by_name("gmm9").unwrap();
    let (s, src) = reference_stds(gmm.as_ref()).unwrap().unwrap();
    assert_eq!(src, StdReference::Exact);
    assert!((s[0] - (0.3f64 + 50.0 / 3.0).sqrt()).abs() < 1e-12);
    // The clipped funnel knows no exact stds: 1e6 exact samples with a fixed seed, the same
    // in every call (whatever the generator's state before).
    let f = lv_targets::by_name("funnel10_clip30").unwrap();
    tch::manual_seed(11);
    let (a, src) = reference_stds(f.as_ref()).unwrap().unwrap();
    assert_eq!(
        src,
        StdReference::Samples {
            n: STD_REFERENCE_SAMPLES
        }
    );
    tch::manual_seed(12);
    let (b, _) = reference_stds(f.as_ref()).unwrap().unwrap();
    assert_eq!(a, b);
    assert!((a[0] - 3.0).abs() < 0.02, "{a:?}");
}
