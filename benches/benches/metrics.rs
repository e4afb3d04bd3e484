//! Criterion benchmarks of `lv-metrics`: exact W2, both Sinkhorn
//! conventions, the streaming Sinkhorn at 20k × 20k, and MMD.
//!
//! Run with `cargo bench -p benches --bench metrics`. Single-core numbers:
//! `RAYON_NUM_THREADS=1 cargo bench -p benches --bench metrics`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use lv_metrics::{
    mmd_median, sinkhorn_divergence, sinkhorn_sde, w2_exact, DivergenceOptions, SdeSinkhornOptions,
};
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n × d` standard-normal-ish cloud (Box–Muller on `rand`'s uniform, so no
/// `rand_distr` dependency), shifted by `shift` in every coordinate.
fn cloud(n: usize, d: usize, seed: u64, shift: f64) -> Array2<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_fn((n, d), |_| {
        let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = rng.gen();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() + shift
    })
}

fn bench_w2(c: &mut Criterion) {
    let mut g = c.benchmark_group("w2_exact");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    for d in [2usize, 50] {
        let x = cloud(2000, d, 1, 0.0);
        let y = cloud(2000, d, 2, 0.5);
        g.bench_function(format!("n2000_d{d}"), |b| {
            b.iter(|| w2_exact(black_box(x.view()), black_box(y.view())).unwrap())
        });
    }
    g.finish();
}

fn bench_sinkhorn(c: &mut Criterion) {
    let x = cloud(2000, 2, 3, 0.0);
    let y = cloud(2000, 2, 4, 0.5);
    let mut g = c.benchmark_group("sinkhorn_2000");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    g.bench_function("sde_eps1e-3_100it_d2", |b| {
        let opts = SdeSinkhornOptions::default();
        b.iter(|| sinkhorn_sde(black_box(x.view()), black_box(y.view()), &opts).unwrap())
    });
    // The same solve without live-set pruning (every row summed densely): the ratio to the
    // row above is what the pruning gives at ε = 1e-3.
    g.bench_function("sde_eps1e-3_100it_d2_dense", |b| {
        let opts = SdeSinkhornOptions {
            prune: false,
            ..Default::default()
        };
        b.iter(|| sinkhorn_sde(black_box(x.view()), black_box(y.view()), &opts).unwrap())
    });
    g.bench_function("divergence_default_eps_d2", |b| {
        let opts = DivergenceOptions::default();
        b.iter(|| sinkhorn_divergence(black_box(x.view()), black_box(y.view()), &opts).unwrap())
    });
    g.finish();
}

fn bench_sinkhorn_streaming(c: &mut Criterion) {
    // 20k × 20k never materialises the 3.2 GB cost matrix. A full 100-iteration
    // solve takes minutes, so this times 5 iterations (+ the final transport
    // pass); per-iteration cost scales linearly.
    let x = cloud(20_000, 2, 5, 0.0);
    let y = cloud(20_000, 2, 6, 0.5);
    let opts = SdeSinkhornOptions {
        max_iter: 5,
        ..Default::default()
    };
    let mut g = c.benchmark_group("sinkhorn_streaming_20k");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(5));
    g.bench_function("sde_5it_d2", |b| {
        b.iter(|| sinkhorn_sde(black_box(x.view()), black_box(y.view()), &opts).unwrap())
    });
    g.finish();
}

fn bench_mmd(c: &mut Criterion) {
    let x = cloud(2000, 2, 7, 0.0);
    let y = cloud(2000, 2, 8, 0.5);
    let mut g = c.benchmark_group("mmd_2000");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    g.bench_function("median_heuristic_d2", |b| {
        b.iter(|| mmd_median(black_box(x.view()), black_box(y.view())).unwrap())
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_w2,
    bench_sinkhorn,
    bench_sinkhorn_streaming,
    bench_mmd
);
criterion_main!(benches);
