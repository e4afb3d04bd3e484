//! Rough release timings: `cargo run --release -p lv-metrics --example timing [--large]`.
//! Set `RAYON_NUM_THREADS=1` for single-core numbers.

use std::time::Instant;

use lv_metrics::{
    geometric_w2, mmd_median, sinkhorn_divergence, sinkhorn_sde, w2_exact, DivergenceOptions,
    SdeSinkhornOptions,
};
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

fn cloud(n: usize, d: usize, seed: u64, shift: f64) -> Array2<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_fn((n, d), |_| rng.sample::<f64, _>(StandardNormal) + shift)
}

fn time<T: std::fmt::Debug>(name: &str, f: impl FnOnce() -> T) {
    let t = Instant::now();
    let v = f();
    println!("{name:<40} {:>9.3} s   {v:?}", t.elapsed().as_secs_f64());
}

/// `--cost-files F…`: time the assignment on raw little-endian f64 square
/// matrices (written by `benches/baselines/scipy_lsa.py --dump DIR`), with
/// our solver and with the `lsap` port of SciPy's.
fn cost_files(files: &[String]) {
    for f in files {
        let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("{f}: {e}"));
        let c: Vec<f64> = bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let n = (c.len() as f64).sqrt().round() as usize;
        assert_eq!(n * n, c.len(), "{f}: not a square matrix");
        let mut best = f64::INFINITY;
        let mut total = 0.0;
        for _ in 0..3 {
            let t = Instant::now();
            let a = lv_metrics::lap::solve(n, &c).unwrap();
            best = best.min(t.elapsed().as_secs_f64());
            total = a.total_cost(&c);
        }
        println!(
            "lv lap::solve  {f}: {best:.3} s (best of 3), mean cost {:.9}",
            total / n as f64
        );
        let t = Instant::now();
        let (r, k) = lsap::solve(n, n, &c, false).unwrap();
        let tot: f64 = r.iter().zip(&k).map(|(&i, &j)| c[i * n + j]).sum();
        println!(
            "lsap::solve    {f}: {:.3} s, mean cost {:.9}",
            t.elapsed().as_secs_f64(),
            tot / n as f64
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(p) = args.iter().position(|a| a == "--cost-files") {
        cost_files(&args[p + 1..]);
        return;
    }
    let large = std::env::args().any(|a| a == "--large");
    if args.iter().any(|a| a == "--sde") {
        let x = cloud(2000, 2, 1, 0.0);
        let y = cloud(2000, 2, 2, 0.5);
        for _ in 0..3 {
            time("sinkhorn_sde 2000x2000 d=2 (100 it)", || {
                let o = sinkhorn_sde(x.view(), y.view(), &SdeSinkhornOptions::default()).unwrap();
                (o.value, o.iterations)
            });
        }
        return;
    }
    kernel_only();
    if std::env::args().any(|a| a == "--kernel") {
        return;
    }
    for d in [2, 50] {
        let x = cloud(2000, d, 1, 0.0);
        let y = cloud(2000, d, 2, 0.5);
        time(&format!("w2_exact n=2000 d={d}"), || {
            w2_exact(x.view(), y.view()).unwrap()
        });
    }
    let x = cloud(2000, 2, 1, 0.0);
    let y = cloud(2000, 2, 2, 0.5);
    time("sinkhorn_sde 2000x2000 d=2 (100 it)", || {
        let o = sinkhorn_sde(x.view(), y.view(), &SdeSinkhornOptions::default()).unwrap();
        (o.value, o.iterations)
    });
    time("sinkhorn_divergence 2000x2000 d=2", || {
        let o = sinkhorn_divergence(x.view(), y.view(), &DivergenceOptions::default()).unwrap();
        (
            o.divergence,
            o.xy.iterations,
            o.xx.iterations,
            o.yy.iterations,
        )
    });
    let x50 = cloud(2000, 50, 1, 0.0);
    let y50 = cloud(2000, 50, 2, 0.5);
    time("sinkhorn_divergence 2000x2000 d=50", || {
        let o = sinkhorn_divergence(x50.view(), y50.view(), &DivergenceOptions::default()).unwrap();
        (
            o.divergence,
            o.xy.iterations,
            o.xx.iterations,
            o.yy.iterations,
        )
    });
    time("mmd_median 2000x2000 d=2", || {
        mmd_median(x.view(), y.view()).unwrap().mmd
    });
    let p = cloud(2000, 8, 3, 0.0);
    let q = cloud(2000, 8, 4, 0.0);
    time("geometric_w2 2000 DW-4", || {
        geometric_w2(p.view(), q.view(), 4).unwrap()
    });
    if large {
        let x = cloud(20_000, 2, 1, 0.0);
        let y = cloud(20_000, 2, 2, 0.5);
        let opts = SdeSinkhornOptions {
            max_iter: 10,
            ..Default::default()
        };
        time("sinkhorn_sde 20k x 20k streaming, 10 it", || {
            sinkhorn_sde(x.view(), y.view(), &opts).unwrap().value
        });
    }
}

#[allow(dead_code)]
fn kernel_only() {
    let m = 2000;
    let g: Vec<f64> = (0..m).map(|i| (i as f64).sin()).collect();
    let c: Vec<f64> = (0..m).map(|i| (i as f64).cos().abs()).collect();
    let mut buf = vec![0.0; m];
    let t = Instant::now();
    let mut s = 0.0;
    for _ in 0..2000 {
        s += lv_metrics::fastmath::lse_shift(&g, &c, &mut buf, 10.0);
    }
    let el = t.elapsed().as_secs_f64();
    println!("lse kernel: {:.2} ns/elem ({s})", el / 4e6 * 1e9);
    let t = Instant::now();
    let mut s = 0.0;
    for k in 0..4_000_000 {
        s += lv_metrics::fastmath::exp(-(k as f64) * 1e-6);
    }
    println!(
        "scalar exp: {:.2} ns ({s})",
        t.elapsed().as_secs_f64() / 4e6 * 1e9
    );
}
