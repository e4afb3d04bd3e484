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
use lv_core::optim::{clip_grad_norm, grad_norm};
use lv_core::sim::{replay_lv, simulate, Controls, Mode, Recording, SimOptions};
use lv_core::train::Trainer;
use std::time::Instant;
use tch::{Kind, Tensor};

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
    /// Experimental (LV, uniform grids): replay in chunks of this many time steps, each
    /// backpropagated with dL/dR (a vector–Jacobian product), instead of one replay graph
    /// over all N·B rows. 0 = the trainer's own step.
    #[arg(long, default_value_t = 0)]
    pub replay_chunk: usize,
    /// With `--replay-chunk`: check once that the chunked gradient equals the full replay's.
    #[arg(long)]
    pub check_chunked: bool,
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
    lv_nets::set_threads(threads);
    let built = crate::run::build(&res)?;
    let controls = match &built.v {
        Some(v) => Controls::with_v(built.u.as_ref(), v.as_ref()),
        None => Controls::new(built.u.as_ref()),
    };
    let mut settings = res.cfg.train.clone();
    settings.max_rnd = settings.max_rnd.filter(|_| res.loss.detached());
    let mut trainer = Trainer::new(
        &built.method,
        built.target.as_ref(),
        controls,
        res.loss,
        settings,
        built.device,
        None,
    );
    let chunk = args.replay_chunk;
    if chunk > 0 {
        anyhow::ensure!(
            res.loss.detached() && !args.no_replay,
            "--replay-chunk needs an LV-family loss and the replay"
        );
        if args.check_chunked {
            let rel = check_chunked(&mut trainer, chunk);
            eprintln!("chunked vs full replay gradient: max |Δg| / max |g| = {rel:.2e}");
        }
    }
    let one_step = |tr: &mut Trainer<'_>| -> f64 {
        if chunk > 0 {
            chunked_step(tr, chunk)
        } else {
            tr.step(&mut ()).loss
        }
    };
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
            "replay_chunk": args.replay_chunk,
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
            if args.no_replay {
                "step-by-step".to_string()
            } else if chunk > 0 {
                format!("replay in chunks of {chunk} steps")
            } else {
                "replay".to_string()
            },
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
    v.push((format!("  of sim: score x{steps}"), ms(score_s)));
    v.push((format!("  of sim: u.eval x{steps}"), ms(ctrl_s)));
    v.push(("full step".to_string(), ms(full)));
    v
}

/// An LV recording of one batch (no gradients) and its R `[n]`.
fn record(tr: &Trainer<'_>) -> (Recording, Tensor) {
    let d = tr.target.dim() as i64;
    let x0 = tr
        .method
        .prior
        .sample(tr.settings.batch as i64, d, tr.device);
    let mut opts = SimOptions::new(Mode::Lv);
    opts.record = true;
    opts.noise_scale = tr.noise_scale();
    let out = tch::no_grad(|| simulate(tr.method, tr.target, tr.controls, &x0, opts));
    (out.recording.expect("recording requested"), out.rnd)
}

/// Accumulates into the parameters' `.grad` the gradient of the loss whose dL/dR is `g`,
/// replaying `chunk` time steps at a time (each chunk's graph is freed after its backward).
fn chunked_backward(tr: &Trainer<'_>, rec: &Recording, g: &Tensor, chunk: usize) {
    let n = rec.n;
    let steps = rec.ts.len();
    let zeros = Tensor::zeros([n], (rec.xs.kind(), rec.xs.device()));
    let mut start = 0;
    while start < steps {
        let len = chunk.min(steps - start);
        let rows = |t: &Tensor| t.narrow(0, (start as i64) * n, (len as i64) * n);
        let sub = Recording {
            ts: rec.ts[start..start + len].to_vec(),
            xs: rows(&rec.xs),
            scores: rec.scores.as_ref().map(rows),
            ws: rows(&rec.ws),
            dws: rows(&rec.dws),
            constant: zeros.shallow_clone(),
            n,
        };
        // `replay_lv` reads dt(k) by the chunk-local index: exact on uniform grids only.
        let rc = replay_lv(tr.method, &tr.method.grid, tr.controls, &sub);
        (rc * g).sum(Kind::Float).backward();
        start += len;
    }
}

/// dL/dR of the trainer's loss at R (a small autograd call on `[n]`), and the loss.
fn loss_grad(tr: &Trainer<'_>, rnd: &Tensor) -> (Tensor, Tensor) {
    let r = rnd.detach().set_requires_grad(true);
    let lv = tch::with_grad(|| {
        batch_loss(
            tr.loss,
            &r,
            tr.settings.max_rnd,
            tr.target.dim(),
            tr.log_z.as_ref(),
        )
    });
    let g = Tensor::run_backward(&[&lv.loss], &[&r], false, false).remove(0);
    (g, lv.loss.detach())
}

/// One LV step with the chunked replay: record, dL/dR, chunked backward, then the trainer's
/// update rule (finiteness check, gradient clipping, Adam). Returns the loss.
fn chunked_step(tr: &mut Trainer<'_>, chunk: usize) -> f64 {
    tr.adam.zero_grad();
    let (rec, rnd) = record(tr);
    let (g, loss) = loss_grad(tr, &rnd);
    chunked_backward(tr, &rec, &g, chunk);
    let gn = grad_norm(tr.params());
    let ok = loss.isfinite().logical_and(&gn.isfinite());
    let host = Vec::<f32>::try_from(Tensor::stack(
        &[ok.to_kind(Kind::Float), loss.to_kind(Kind::Float)],
        0,
    ))
    .expect("2 values");
    tr.counters.step += 1;
    if host[0] > 0.5 {
        if let Some(c) = tr.settings.grad_clip {
            clip_grad_norm(tr.params(), &gn, c);
        }
        tr.adam.step();
        tr.counters.successful += 1;
    }
    host[1] as f64
}

/// Max |g_chunked − g_full| / max |g_full| on one recording.
fn check_chunked(tr: &mut Trainer<'_>, chunk: usize) -> f64 {
    let (rec, rnd) = record(tr);
    let grads = |tr: &Trainer<'_>| -> Tensor {
        let gs: Vec<Tensor> = tr
            .params()
            .iter()
            .filter_map(|p| {
                let g = p.grad();
                g.defined().then(|| g.flatten(0, -1).copy())
            })
            .collect();
        Tensor::cat(&gs, 0)
    };
    tr.adam.zero_grad();
    let full = replay_lv(tr.method, &tr.method.grid, tr.controls, &rec);
    let lv = batch_loss(
        tr.loss,
        &full,
        tr.settings.max_rnd,
        tr.target.dim(),
        tr.log_z.as_ref(),
    );
    lv.loss.backward();
    let g_full = grads(tr);
    tr.adam.zero_grad();
    let (g, _) = loss_grad(tr, &rnd);
    chunked_backward(tr, &rec, &g, chunk);
    let g_chunk = grads(tr);
    tr.adam.zero_grad();
    let diff = (&g_chunk - &g_full).abs().max().double_value(&[]);
    diff / g_full.abs().max().double_value(&[]).max(1e-30)
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
