//! `lv bench-step`: training steps per second of one configuration.
//!
//! Builds method, target and controls exactly as `lv train` does ([`crate::run::build`]), a
//! [`Trainer`] with the paper's optimiser settings (Adam 5e-3, weight decay 1e-7, gradient
//! clipping 1.0), runs `--warmup` steps and then times `--iters` steps. The thread count is
//! the global `--threads` (default 1; 0 = libtorch's default), already applied by `main`.
//!
//! With `--config FILE [--row ROW] [--set key=value]…` the run is the one `lv train` would
//! build from that config or preset row (method, loss, target, network, clips, prior scale,
//! optimiser and trainer settings as configured); `--batch` and `--steps-grid` then override
//! `train.batch` and `sde.steps` only when given, and `--method`/`--loss`/`--target` are
//! refused (the row names them). Without `--config` the run is the standard configuration of
//! the flags.
//!
//! `--breakdown` additionally times the parts of a step (simulation without gradients,
//! loss with its graph, backward, and the full step) to show what dominates.

use crate::config::RunConfig;
use crate::preset::load_run_config;
use anyhow::{Context, Result};
use lv_core::loss::batch_loss;
use lv_core::sim::{replay_lv, simulate, Controls, SimOptions};
use lv_core::train::Trainer;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchStepArgs {
    /// Run config or preset file whose run is timed (instead of --method/--loss/--target).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The row of a preset `--config` (`<method>-<loss>-<target>`).
    #[arg(long)]
    pub row: Option<String>,
    /// With `--config`: override a key, `--set model.mlp.width=128` (repeatable).
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// Sampler: pis, dis, dds, dds_exp, bridge, ou_dds (default pis).
    #[arg(long)]
    pub method: Option<String>,
    /// Loss: lv, kl, kl_ito, lv_traj, moment, lv_biased, vargrad (default lv).
    #[arg(long)]
    pub loss: Option<String>,
    /// Target registry name (`lv targets`; default gmm9).
    #[arg(long)]
    pub target: Option<String>,
    /// Trajectories per step (default 2048, or the config's `train.batch`).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Steps of the time grid (default 200, or the config's `sde.steps`).
    #[arg(long)]
    pub steps_grid: Option<usize>,
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
    /// KL family: the adjoint path with the native trunk (`train.kl_adjoint = true`)
    /// instead of autograd through the trajectory.
    #[arg(long, conflicts_with = "no_native")]
    pub kl_adjoint: bool,
    /// Batch shards (`train.batch_shards`): 0 = auto (one per thread when it pays), 1 = one
    /// batch on all libtorch threads.
    #[arg(long)]
    pub shards: Option<usize>,
    /// Also report the step's GEMM FLOPs, libtorch's measured sgemm rate on the trunk's
    /// shapes and the FLOP-limited steps/s they give (LV family, network trunk controls).
    #[arg(long)]
    pub flops: bool,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The GEMM floating-point operations of one LV-family training step on the direct path:
/// for every linear layer (in → out) of the trunk NN(t, x) the forward X·Wᵀ, the weight
/// gradient δᵀX and, except for the input layer (the states are detached, so ∂L/∂x is not
/// needed), the input gradient δ·W, each 2·in·out per row, over the B·N rows of a step:
/// 6·B·N·Σ in·out − 2·B·N·d·C. The time branches (one row per time step), bias, GELU, the
/// score and the loss are left out: they are O(B·N·C) against the GEMMs' O(B·N·C²).
pub fn lv_gemm_flops(dim: usize, mlp: &lv_nets::MlpConfig, rows: usize) -> f64 {
    let (d, c) = (dim as f64, mlp.width as f64);
    let hidden = mlp.num_layers.saturating_sub(2) as f64;
    let sum_in_out = d * c + hidden * c * c + c * d;
    rows as f64 * (6.0 * sum_in_out - 2.0 * d * c)
}

/// libtorch's sgemm rate (FLOP/s) on the trunk's hidden-layer shape [rows, C] × [C, C] in
/// the current thread setting: the median of 5 timings of enough products for ≈ 0.1 s each.
fn sgemm_rate(rows: i64, width: i64) -> f64 {
    let a = tch::Tensor::randn([rows, width], (tch::Kind::Float, tch::Device::Cpu));
    let w = tch::Tensor::randn([width, width], (tch::Kind::Float, tch::Device::Cpu));
    let out = tch::Tensor::zeros([rows, width], (tch::Kind::Float, tch::Device::Cpu));
    let flops_one = 2.0 * (rows * width * width) as f64;
    let reps = ((1e9 / flops_one) as usize).clamp(1, 100_000);
    let mut rates = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..reps {
            let _ = a.mm_out(&out, &w);
        }
        rates.push(flops_one * reps as f64 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    rates[2]
}

/// The configuration label used in tables: `pis-lv-gmm9-b2048-n200`.
pub fn config_label(cfg: &RunConfig) -> String {
    format!(
        "{}-{}-{}-b{}-n{}",
        cfg.method, cfg.loss, cfg.target, cfg.train.batch, cfg.sde.steps
    )
}

/// The run config of the flags: `--config [--row] [--set]` with `--batch`/`--steps-grid`
/// applied when given, or the standard configuration of `--method/--loss/--target`.
fn run_config(args: &BenchStepArgs) -> Result<RunConfig> {
    let steps = (args.warmup + args.iters).max(1);
    let Some(path) = &args.config else {
        anyhow::ensure!(
            args.row.is_none() && args.set.is_empty(),
            "--row and --set need --config"
        );
        let text = format!(
            "target = {:?}\nmethod = {:?}\nloss = {:?}\n[sde]\nsteps = {}\n[train]\nsteps = {}\nbatch = {}\nreplay = {}\n",
            args.target.as_deref().unwrap_or("gmm9"),
            args.method.as_deref().unwrap_or("pis"),
            args.loss.as_deref().unwrap_or("lv"),
            args.steps_grid.unwrap_or(200),
            steps,
            args.batch.unwrap_or(2048),
            !args.no_replay,
        );
        return RunConfig::parse(&text, &[]).context("bench-step configuration");
    };
    for (flag, given) in [
        ("--method", args.method.is_some()),
        ("--loss", args.loss.is_some()),
        ("--target", args.target.is_some()),
    ] {
        anyhow::ensure!(
            !given,
            "{flag} cannot be combined with --config (the config names it; use --set)"
        );
    }
    let mut set = args.set.clone();
    set.push(format!("train.steps={steps}"));
    if let Some(b) = args.batch {
        set.push(format!("train.batch={b}"));
    }
    if let Some(n) = args.steps_grid {
        set.push(format!("sde.steps={n}"));
    }
    if args.no_replay {
        set.push("train.replay=false".into());
    }
    load_run_config(path, args.row.as_deref(), &set)
}

pub fn run(args: &BenchStepArgs, ov: &crate::run::Overrides) -> Result<()> {
    anyhow::ensure!(args.iters >= 1, "--iters must be ≥ 1");
    let mut cfg = run_config(args)?;
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
    if args.kl_adjoint {
        settings.kl_adjoint = true;
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
    // The FLOP limit: only for the LV family on a trunk control (score, lerp, clipped).
    let flops = (args.flops
        && res.loss.detached()
        && !matches!(res.cfg.control, Some(lv_nets::ctrl::ControlKind::Potential)))
    .then(|| {
        let m = &res.cfg.model.mlp;
        let rows = res.cfg.train.batch * res.cfg.sde.steps;
        let mut f = lv_gemm_flops(built.target.dim(), m, rows);
        if built.v.is_some() {
            f *= 2.0;
        }
        let rate = sgemm_rate(res.cfg.train.batch as i64, m.width);
        (f, rate, rate / f)
    });
    let parts = if args.breakdown {
        Some(breakdown(&mut trainer, args.iters.min(5)))
    } else {
        None
    };
    let label = config_label(&res.cfg);
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
            "loss": res.cfg.loss.to_string(),
            "threads": threads,
            "steps_per_s": steps_per_s,
            "method": res.cfg.method.to_string(),
            "target": res.cfg.target,
            "batch": res.cfg.train.batch,
            "steps_grid": res.cfg.sde.steps,
            "row": args.row,
            "iters": args.iters,
            "warmup": args.warmup,
            "replay": !args.no_replay,
            "replay_rows": args.replay_rows,
            "lv_direct": !args.no_direct,
            "native_trunk": !args.no_native,
            "kl_adjoint": args.kl_adjoint,
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
        if let Some((f, rate, limit)) = flops {
            obj["gemm_flops_per_step"] = f.into();
            obj["sgemm_flops_per_s"] = rate.into();
            obj["gemm_limit_steps_per_s"] = limit.into();
            obj["fraction_of_limit"] = (steps_per_s / limit).into();
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
        if let Some((f, rate, limit)) = flops {
            println!(
                "  GEMM {:.2} GFLOP/step at libtorch's sgemm {:.1} GFLOP/s: limit {limit:.3} steps/s, this run {:.0} % of it",
                f / 1e9,
                rate / 1e9,
                100.0 * steps_per_s / limit
            );
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

#[cfg(test)]
mod tests {
    use super::lv_gemm_flops;

    #[test]
    fn gemm_flops_of_the_paper_trunk() {
        // d = 2, C = 64, 4 layers: Σ in·out = 2·64 + 2·64² + 64·2 = 8448 per row;
        // 6·8448 − 2·2·64 = 50,432 FLOPs per row, × B·N = 2048 · 200 rows.
        let m = lv_nets::MlpConfig::default();
        assert_eq!(lv_gemm_flops(2, &m, 1), 50_432.0);
        assert_eq!(lv_gemm_flops(2, &m, 2048 * 200), 50_432.0 * 409_600.0);
        let narrow = lv_nets::MlpConfig {
            width: 8,
            num_layers: 2,
            ..Default::default()
        };
        // No hidden layer: 6·(3·8 + 8·3) − 2·3·8 = 240.
        assert_eq!(lv_gemm_flops(3, &narrow, 1), 240.0);
    }
}
