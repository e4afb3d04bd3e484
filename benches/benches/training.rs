//! Training-step, simulation and evaluation benchmarks (one libtorch thread, CPU).
//!
//! - `train_step/<method>-<loss>-<target>-b<B>-n<N>`: one [`Trainer::step`] (LV with the
//!   batched replay, or KL with the gradient through the trajectory) of PIS on gmm9 and DIS on
//!   funnel10, at the paper's batch 2048 with 200 steps and at batch 256 with 100 steps;
//! - `simulate/...`: the simulation alone (no gradients, LV mode, no recording);
//! - `evaluate/pis-gmm9-n200-100k`: one evaluation (two passes) of 100,000 trajectories in
//!   chunks of 10,000.
//!
//! Controls are built as `lv train` builds them (ScoreCtrl for PIS, LerpCtrl for DIS, default
//! `CtrlConfig`). The large cases take seconds per iteration on a small CPU, so every group
//! uses 10 samples; filter with `cargo bench --bench training -- <substring>`.

use criterion::{criterion_group, criterion_main, Criterion};
use lv_core::loss::LossKind;
use lv_core::method::Method;
use lv_core::sim::{simulate, Controls, Mode, SimOptions};
use lv_core::train::{TrainSettings, Trainer};
use lv_core::{Control, Target};
use lv_nets::ctrl::{CtrlConfig, LerpCtrl, ScoreCtrl};
use std::hint::black_box;
use std::time::Duration;
use tch::{nn::VarStore, Device};

/// Method, target and control of one configuration, built like `lv_bench::run::build`.
struct Setup {
    _vs: VarStore,
    method: Method,
    target: Box<dyn Target>,
    u: Box<dyn Control>,
}

fn setup(method: &str, target: &str, steps: usize) -> Setup {
    tch::manual_seed(1);
    let target = lv_targets::by_name(target).expect("registered target");
    let method = Method::from_kind(method.parse().expect("method"), steps).expect("method");
    let vs = VarStore::new(Device::Cpu);
    let d = target.dim() as i64;
    let root = vs.root();
    let cfg = CtrlConfig::default();
    let u: Box<dyn Control> = match method.kind {
        lv_core::method::MethodKind::Dis => {
            let sde = method.sde;
            Box::new(
                LerpCtrl::new(
                    &(&root / "u"),
                    d,
                    &cfg,
                    std::sync::Arc::new(move |t| sde.sigma(t)),
                    method.grid.t_end(),
                    1.0,
                )
                .unwrap(),
            )
        }
        _ => Box::new(ScoreCtrl::new(&(&root / "u"), d, &cfg).unwrap()),
    };
    Setup {
        _vs: vs,
        method,
        target,
        u,
    }
}

const CASES: [(&str, &str); 2] = [("pis", "gmm9"), ("dis", "funnel10")];
const SIZES: [(usize, usize); 2] = [(256, 100), (2048, 200)];

fn train_step(c: &mut Criterion) {
    tch::set_num_threads(1);
    lv_core::par::tune_allocator();
    let mut g = c.benchmark_group("train_step");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (m, t) in CASES {
        for loss in [LossKind::Lv, LossKind::Kl] {
            for (batch, steps) in SIZES {
                let s = setup(m, t, steps);
                let settings = TrainSettings {
                    batch,
                    max_rnd: if loss.detached() { Some(1e8) } else { None },
                    ..TrainSettings::default()
                };
                let mut tr = Trainer::new(
                    &s.method,
                    s.target.as_ref(),
                    Controls::new(s.u.as_ref()),
                    loss,
                    settings,
                    Device::Cpu,
                    None,
                );
                let name = format!("{m}-{}-{t}-b{batch}-n{steps}", loss.name());
                g.bench_function(&name, |b| b.iter(|| black_box(tr.step(&mut ()))));
            }
        }
    }
    g.finish();
}

fn simulation(c: &mut Criterion) {
    tch::set_num_threads(1);
    let mut g = c.benchmark_group("simulate");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (m, t) in CASES {
        for (batch, steps) in SIZES {
            let s = setup(m, t, steps);
            let controls = Controls::new(s.u.as_ref());
            let d = s.target.dim() as i64;
            let name = format!("{m}-{t}-b{batch}-n{steps}");
            g.bench_function(&name, |b| {
                b.iter(|| {
                    tch::no_grad(|| {
                        let x0 = s.method.prior.sample(batch as i64, d, Device::Cpu);
                        let out = simulate(
                            &s.method,
                            s.target.as_ref(),
                            controls,
                            &x0,
                            SimOptions::new(Mode::Lv),
                        );
                        black_box(f64::try_from(out.rnd.mean(tch::Kind::Float)).unwrap_or(0.0))
                    })
                })
            });
        }
    }
    g.finish();
}

fn evaluation(c: &mut Criterion) {
    tch::set_num_threads(1);
    let mut g = c.benchmark_group("evaluate");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    let s = setup("pis", "gmm9", 200);
    let controls = Controls::new(s.u.as_ref());
    for (name, native) in [
        ("pis-gmm9-n200-100k", false),
        ("pis-gmm9-n200-100k-native", true),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let out = lv_core::estimate::evaluate(
                    &s.method,
                    s.target.as_ref(),
                    controls,
                    100_000,
                    10_000,
                    Device::Cpu,
                    native,
                );
                black_box(out.estimates.log_z_is)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, train_step, simulation, evaluation);
criterion_main!(benches);
