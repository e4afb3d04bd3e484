//! The `lv` command line.

use anyhow::Result;
use clap::{Parser, Subcommand};
use lv_nets::{select_device, set_threads, DeviceChoice, RuntimeInfo};

mod cli_metrics;
mod cli_targets;
mod config;
mod run;
mod smoke;

#[derive(Parser)]
#[command(
    name = "lv",
    version,
    about = "Diffusion samplers trained with path-space divergences (log-variance loss)"
)]
struct Cli {
    /// Device: cpu, cuda or auto (the first GPU if libtorch sees one, else the CPU).
    #[arg(long, global = true, default_value = "cpu")]
    device: DeviceChoice,
    /// libtorch intra-op threads (0 = libtorch's default). On small CPUs 1 is often fastest.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Seed for torch's generator and the Rust RNG.
    #[arg(long, global = true, default_value_t = 1)]
    seed: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the libtorch version and path, CUDA availability, device count and threads.
    Doctor,
    /// List the registered targets: name, dimension, log Z, reference samples.
    Targets {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Train a sampler from a TOML config (or resume a run).
    Train(run::TrainArgs),
    /// Sample metrics between a model sample A and a reference sample B (W2, Sinkhorn in
    /// both conventions, MMD, geometric W2 for particle systems).
    Metrics(cli_metrics::MetricsArgs),
    /// End-to-end smoke job used by `cargo xtask reproduce-table` until the table
    /// reproduction lands: it reproduces nothing.
    Reproduce(smoke::SmokeArgs),
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    set_threads(cli.threads);
    tch::manual_seed(cli.seed as i64);
    let device = select_device(cli.device)?;
    match cli.cmd {
        Cmd::Doctor => {
            print!("{}", RuntimeInfo::collect().render());
            println!("device        : {device:?} (--device {})", cli.device);
        }
        Cmd::Targets { json } => cli_targets::run(json)?,
        Cmd::Train(args) => {
            let seed = (cli.seed != 1).then_some(cli.seed);
            let dir = run::train(&args, seed)?;
            eprintln!("run folder: {}", dir.display());
        }
        Cmd::Metrics(args) => cli_metrics::run(&args, cli.seed)?,
        Cmd::Reproduce(args) => smoke::run(&args, device, cli.seed)?,
    }
    Ok(())
}
