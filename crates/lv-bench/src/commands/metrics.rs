//! `lv metrics A B`: sample metrics between a model sample A and a reference sample B.

use anyhow::{Context, Result};
use clap::Args;
use lv_metrics::{compute_report, load_samples, render_table, ReportOptions};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct MetricsArgs {
    /// Model sample (.npy float32/float64 [n, d], or CSV with one sample per row).
    pub a: PathBuf,
    /// Reference sample (same formats).
    pub b: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Particle systems: P particles of dimension d/P (adds `w2_geometric`).
    #[arg(long)]
    pub particles: Option<usize>,
    /// Override ε of both Sinkhorn conventions.
    #[arg(long)]
    pub eps: Option<f64>,
    /// Samples used by the sde_sampler Sinkhorn (the paper uses 100,000; slow on a CPU).
    #[arg(long, default_value_t = 10_000)]
    pub max_sinkhorn_sde: usize,
}

pub fn run(args: &MetricsArgs, seed: u64) -> Result<()> {
    let a = load_samples(&args.a).with_context(|| format!("model sample {}", args.a.display()))?;
    let b =
        load_samples(&args.b).with_context(|| format!("reference sample {}", args.b.display()))?;
    let opts = ReportOptions {
        eps: args.eps,
        particles: args.particles,
        max_sinkhorn_sde: args.max_sinkhorn_sde,
        seed,
        ..ReportOptions::default()
    };
    let report = compute_report(&a, &b, &opts)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", render_table(&report));
    }
    Ok(())
}
