//! `lv bench-step`: training steps per second of one configuration.
//!
//! Builds method, target and controls exactly as `lv train` does ([`crate::run::build`]), a
//! [`Trainer`] with the paper's optimiser settings (Adam 5e-3, weight decay 1e-7, gradient
//! clipping 1.0), runs `--warmup` steps and then times `--iters` steps. The thread count is
//! the global `--threads` (default 1; 0 = libtorch's default), already applied by `main`.
//!
//! `--breakdown` additionally times the parts of a step (simulation without gradients,
//! loss with its graph, backward, and the full step) to show what dominates.

use crate::config::RunConfig;
use anyhow::{Context, Result};
use lv_core::loss::batch_loss;
use lv_core::sim::{replay_lv, simulate, Controls, SimOptions};
use lv_core::train::Trainer;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchStepArgs {
    /// Sampler: pis, dis, dds, dds_exp, bridge.
    #[arg(long, default_value = "pis")]
    pub method: String,
    /// Loss: lv, kl, kl_ito, lv_traj, moment.
    #[arg(long, default_value = "lv")]
    pub loss: String,
    /// Target registry name (`lv targets`).
    #[arg(long, default_value = "gmm9")]
    pub target: String,
    /// Trajectories per step.
    #[arg(long, default_value_t = 2048)]
    pub batch: usize,
    /// Euler–Maruyama steps of the time grid.
    #[arg(long, default_value_t = 200)]
    pub steps_grid: usize,
    /// Timed training steps.
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Untimed warm-up steps before the timed ones.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// LV family: simulate step by step with the graph instead of the batched replay.
    #[arg(long)]
    pub no_replay: bool,
    /// Also time the parts of a step (simulation, loss graph, backward).
    #[arg(long)]
    pub breakdown: bool,
    /// LV replay rows per chunk (the trainer's `train.replay_rows`; 0 = the whole N·B-row
    /// replay at once). Default: the trainer's default (8,192).
    #[arg(long)]
    pub replay_rows: Option<usize>,
    /// LV family above 8 × replay_rows rows: use the chunked replay instead of the direct
    /// backward through the kept controls (`train.lv_direct = false`).
    #[arg(long)]
    pub no_direct: bool,
    /// Direct LV path: keep the network in autograd instead of the control's native trunk
    /// (`train.native_trunk = false`).
    #[arg(long)]
    pub no_native: bool,
    /// Batch shards (`train.batch_shards`): 0 = auto (one per thread when it pays), 1 = one
    /// batch on all libtorch threads.
    #[arg(long)]
    pub shards: Option<usize>,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The configuration label used in tables: `pis-lv-gmm9-b2048-n200`.
pub fn config_label(a: &BenchStepArgs) -> String {
    format!(
        "{}-{}-{}-b{}-n{}",
        a.method, a.loss, a.target, a.batch, a.steps_grid
    )
}

pub fn run(args: &BenchStepArgs, ov: &crate::run::Overrides) -> Result<()> {
    anyhow::ensure!(args.iters >= 1, "--iters must be ≥ 1");
    let text = format!(
        "target = {:?}\nmethod = {:?}\nloss = {:?}\n[sde]\nsteps = {}\n[train]\nsteps = {}\nbatch = {}\nreplay = {}\n",
        args.target,
        args.method,
        args.loss,
        args.steps_grid,
        (args.warmup + args.iters).max(1),
        args.batch,
        !args.no_replay,
    );
    let mut cfg = RunConfig::parse(&text, &[]).context("bench-step configuration")?;
    if let Some(d) = ov.device {
        cfg.device = d;
    }
    let threads = ov.threads.unwrap_or(1);
    cfg.threads = threads;
    let res = cfg.validate()?;
    res.runtime.install();
    let built = crate::run::build(&res)?;
    let controls = match &built.v {
        Some(v) => Controls::with_v(built.u.as_ref(), v.as_ref()),
        None => Controls::new(built.u.as_ref()),
    };
    let mut settings = res.cfg.train.clone();
    settings.max_rnd = settings.max_rnd.filter(|_| res.loss.detached());
    if let Some(r) = args.replay_rows {
        settings.replay_rows = r;
    }
    if args.no_direct {
        settings.lv_direct = false;
    }
    if args.no_native {
        settings.native_trunk = false;
    }
    if let Some(s) = args.shards {
        settings.batch_shards = s;
    }
    let mut trainer = Trainer::new(
        built.method()?,
        built.target.as_ref(),
        controls,
        res.loss,
        settings,
        built.device,
        None,
    );
    let one_step = |tr: &mut Trainer<'_>| -> f64 { tr.step(&mut ()).loss };
    for _ in 0..args.warmup {
        one_step(&mut trainer);
    }
    let c0 = cpu_seconds();
    let t0 = Instant::now();
    let mut loss = f64::NAN;
    for _ in 0..args.iters {
        loss = one_step(&mut trainer);
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds().zip(c0).map(|(b, a)| b - a);
    let steps_per_s = args.iters as f64 / secs;
    // Steps per CPU-second of the whole process: robust to other load on a shared machine
    // (with one thread it approximates the steps/s of an idle machine).
    let cpu_steps_per_s = cpu.filter(|&c| c > 0.0).map(|c| args.iters as f64 / c);
    let parts = if args.breakdown {
        Some(breakdown(&mut trainer, args.iters.min(5)))
    } else {
        None
    };
    let label = config_label(args);
    let mut lv_path = if res.loss.detached() && args.no_replay {
        "step-by-step".to_string()
    } else {
        trainer.grad_path().to_string()
    };
    let shards = trainer.shards();
    if shards > 1 {
        lv_path = format!("{lv_path}, {shards} batch shards");
    }
    if args.json {
        let mut obj = serde_json::json!({
            "config": label,
            "loss": args.loss,
            "threads": threads,
            "steps_per_s": steps_per_s,
            "method": args.method,
            "target": args.target,
            "batch": args.batch,
            "steps_grid": args.steps_grid,
            "iters": args.iters,
            "warmup": args.warmup,
            "replay": !args.no_replay,
            "replay_rows": args.replay_rows,
            "lv_direct": !args.no_direct,
            "native_trunk": !args.no_native,
            "lv_path": lv_path,
            "batch_shards": shards,
            "seconds": secs,
            "cpu_seconds": cpu,
            "cpu_steps_per_s": cpu_steps_per_s,
            "torch_threads": tch::get_num_threads(),
            "last_loss": loss,
        });
        if let Some(p) = &parts {
            obj["breakdown_ms"] = serde_json::to_value(p)?;
        }
        println!("{obj}");
    } else {
        println!(
            "{label} ({}, threads {threads}): {steps_per_s:.3} steps/s ({:.1} ms/step, {} steps, last loss {loss:.4})",
            lv_path,
            1e3 * secs / args.iters as f64,
            args.iters
        );
        if let Some(p) = &parts {
            for (k, v) in p {
                println!("  {k:<22} {v:9.1} ms");
            }
        }
    }
    Ok(())
}

/// Mean milliseconds of the parts of a step over `reps` repetitions.
fn breakdown(tr: &mut Trainer<'_>, reps: usize) -> Vec<(String, f64)> {
    let reps = reps.max(1);
    let d = tr.target.dim() as i64;
    let n = tr.settings.batch as i64;
    let mode = tr.loss.mode();
    let mut sim_nograd = 0.0;
    let mut loss_graph = 0.0;
    let mut backward = 0.0;
    let mut full = 0.0;
    for _ in 0..reps {
        let x0 = tr.method.prior.sample(n, d, tr.device);
        // Simulation alone, without gradients (what the replay starts from).
        let t = Instant::now();
        let mut opts = SimOptions::new(mode);
        opts.record = tr.loss.detached() && tr.settings.replay;
        let out = tch::no_grad(|| simulate(tr.method, tr.target, tr.controls, &x0, opts));
        let _ = f64::try_from(out.rnd.sum(tch::Kind::Float));
        sim_nograd += t.elapsed().as_secs_f64();
        // The loss with its graph (replay for LV with replay, else the graph-building simulation).
        let t = Instant::now();
        let rnd = match out.recording {
            Some(rec) => replay_lv(tr.method, &tr.method.grid, tr.controls, &rec),
            None => {
                simulate(
                    tr.method,
                    tr.target,
                    tr.controls,
                    &x0,
                    SimOptions::new(mode),
                )
                .rnd
            }
        };
        let lv = batch_loss(tr.loss, &rnd, tr.settings.max_rnd, tr.target.dim(), None);
        let _ = f64::try_from(&lv.loss);
        loss_graph += t.elapsed().as_secs_f64();
        let t = Instant::now();
        tr.adam.zero_grad();
        if lv.loss.requires_grad() {
            lv.loss.backward();
        }
        backward += t.elapsed().as_secs_f64();
        tr.adam.zero_grad();
        let t = Instant::now();
        tr.step(&mut ());
        full += t.elapsed().as_secs_f64();
    }
    // The two per-step costs of the simulation, alone: target score and control evaluation.
    let x = tr.method.prior.sample(n, d, tr.device) + 0.5;
    let steps = tr.method.grid.steps();
    let needs_score = tr.controls.u.needs_target_score();
    let score = tr.target.score(&x);
    let mut score_s = 0.0;
    let mut ctrl_s = 0.0;
    for _ in 0..reps {
        let t = Instant::now();
        if needs_score {
            for _ in 0..steps {
                let _ = tch::no_grad(|| tr.target.score(&x));
            }
        }
        score_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        for k in 0..steps {
            let tk = tr.method.grid.points()[k];
            let _ = tch::no_grad(|| tr.controls.u.eval(tk, &x, Some(&score)));
        }
        ctrl_s += t.elapsed().as_secs_f64();
    }
    // The direct LV path: simulation keeping the control graphs, then dL/dR and the one
    // backward through them.
    let (mut direct_sim, mut direct_bwd) = (0.0, 0.0);
    let direct = tr.loss.detached() && tr.settings.replay && tr.controls.v.is_none();
    if direct {
        for _ in 0..reps {
            let x0 = tr.method.prior.sample(n, d, tr.device);
            tr.adam.zero_grad();
            let t = Instant::now();
            let mut opts = SimOptions::new(mode);
            opts.keep_controls = true;
            let tape = tr.settings.native_trunk && tr.controls.u.start_tape();
            let out = simulate(tr.method, tr.target, tr.controls, &x0, opts);
            let _ = f64::try_from(out.rnd.sum(tch::Kind::Float));
            direct_sim += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let kept = out.kept.expect("kept controls");
            let r_leaf = out.rnd.detach().set_requires_grad(true);
            let lv = batch_loss(tr.loss, &r_leaf, tr.settings.max_rnd, tr.target.dim(), None);
            lv.loss.backward();
            kept.backward(&r_leaf.grad());
            if tape {
                tr.controls.u.finish_tape();
            }
            direct_bwd += t.elapsed().as_secs_f64();
        }
        tr.adam.zero_grad();
    }
    let ms = |s: f64| 1e3 * s / reps as f64;
    let mut v = vec![(
        if tr.loss.detached() && tr.settings.replay {
            "simulate (no grad, rec)"
        } else {
            "simulate (no grad)"
        }
        .to_string(),
        ms(sim_nograd),
    )];
    v.push((
        if tr.loss.detached() && tr.settings.replay {
            "replay + loss"
        } else {
            "simulate (graph) + loss"
        }
        .to_string(),
        ms(loss_graph),
    ));
    v.push(("backward".to_string(), ms(backward)));
    if direct {
        v.push(("direct: sim (kept graph)".to_string(), ms(direct_sim)));
        v.push(("direct: loss + backward".to_string(), ms(direct_bwd)));
    }
    v.push((format!("  of sim: score x{steps}"), ms(score_s)));
    v.push((format!("  of sim: u.eval x{steps}"), ms(ctrl_s)));
    v.push(("full step".to_string(), ms(full)));
    v
}

/// User + system CPU time of this process (all threads), from `/proc/self/stat`
/// (Linux; clock ticks of 1/100 s). `None` where unavailable.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); `rest` starts at field 3.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
