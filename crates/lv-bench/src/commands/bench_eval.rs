//! `lv bench-eval`: the time of a run's evaluations, which are part of every run's wall time.
//!
//! Builds the run of `--config [--row]` exactly as `lv train` does ([`crate::run::build`]),
//! with freshly initialised weights (the cost of an evaluation does not depend on them), and
//! times, median over `--rounds`:
//! - **final evaluation**: [`lv_core::estimate::evaluate`] of `eval.n` trajectories in chunks
//!   of `eval.chunk` — the two passes of the final results (log Ẑ_IS with the Itô term, the
//!   ELBO without it) on the row's time grid (`evaluate_plain` for annealed rows);
//! - **periodic metrics**: the sample metrics of one evaluation under the fixed-reference
//!   protocol, `eval.n_metrics` model samples against the fixed reference set
//!   ([`crate::run::FixedReference::metrics`]; drawing the set once is not timed), when the
//!   target has a reference.
//!
//! Thread count: the global `--threads` (default 1).

use crate::preset::{load_run_config, Preset};
use crate::run::{annealed_trainer, build, controls_of, FixedReference, Sampler};
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchEvalArgs {
    /// Run config or preset file.
    #[arg(long, default_value = "configs/paper.toml")]
    pub config: PathBuf,
    /// The row of a preset file (default for a preset: pis-lv-gmm9).
    #[arg(long)]
    pub row: Option<String>,
    /// Override a key: `--set eval.n=100000` (repeatable).
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// Timed rounds (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Print one JSON line instead of a table row.
    #[arg(long)]
    pub json: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

pub fn run(args: &BenchEvalArgs, ov: &crate::run::Overrides) -> Result<()> {
    if args.rounds == 0 || args.rounds > 1000 {
        bail!("--rounds must be in [1, 1000] (got {})", args.rounds);
    }
    let row = match (&args.row, Preset::is_preset(&args.config)?) {
        (None, true) => Some("pis-lv-gmm9"),
        (r, _) => r.as_deref(),
    };
    let mut cfg = load_run_config(&args.config, row, &args.set)?;
    if let Some(d) = ov.device {
        cfg.device = d;
    }
    cfg.threads = ov.threads.unwrap_or(1);
    let res = cfg.validate()?;
    res.runtime.install();
    tch::manual_seed(res.runtime.seed as i64);
    let b = build(&res)?;
    let e = &res.cfg.eval;
    let label = format!("{}-{}-{}", res.cfg.method, res.cfg.loss, res.cfg.target);
    let mut eval_s = Vec::new();
    let mut samples = None;
    for _ in 0..args.rounds {
        let t0 = Instant::now();
        let x = match &b.sampler {
            Sampler::Diffusion(method) => {
                let out = lv_core::estimate::evaluate(
                    method,
                    b.target.as_ref(),
                    controls_of(&b),
                    e.n,
                    e.chunk,
                    b.device,
                    res.cfg.train.native_eval,
                );
                out.samples
            }
            Sampler::Annealed { parts, betas } => {
                let tr = annealed_trainer(&b, parts, betas, res.loss)?;
                tr.evaluate_plain(e.n, e.chunk).1
            }
        };
        eval_s.push(t0.elapsed().as_secs_f64());
        samples = Some(x);
    }
    let grid_steps = match &b.sampler {
        Sampler::Diffusion(m) => m.grid.steps(),
        Sampler::Annealed { parts, .. } => parts.sampler.steps,
    };
    let samples = samples.expect("at least one round");
    let mut metrics_s = Vec::new();
    if let Ok(fixed) = FixedReference::new(b.target.as_ref(), e.n_metrics) {
        let m = e.n_metrics.min(samples.size()[0] as usize) as i64;
        let x = samples.narrow(0, 0, m);
        for _ in 0..args.rounds {
            let t0 = Instant::now();
            fixed.metrics(&x)?;
            metrics_s.push(t0.elapsed().as_secs_f64());
        }
    }
    let ev = median(eval_s);
    let ms = (!metrics_s.is_empty()).then(|| median(metrics_s));
    let threads = res.cfg.threads;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "config": label, "n": e.n, "chunk": e.chunk, "grid_steps": grid_steps,
                "threads": threads, "eval_seconds": ev,
                "trajectories_per_s": e.n as f64 / ev,
                "metrics_n": e.n_metrics, "metrics_seconds": ms,
            })
        );
    } else {
        println!(
            "| config | trajectories | grid steps | threads | final evaluation (s) | trajectories/s | periodic metrics at n_metrics (s) |"
        );
        println!("|---|---|---|---|---|---|---|");
        println!(
            "| {label} | {} | {grid_steps} | {threads} | {ev:.2} | {:.0} | {} |",
            e.n,
            e.n as f64 / ev,
            ms.map_or("none (no reference)".into(), |s| format!(
                "{s:.2} ({})",
                e.n_metrics
            ))
        );
    }
    Ok(())
}
