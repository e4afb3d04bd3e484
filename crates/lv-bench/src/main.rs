//! The `lv` command line.

use anyhow::Result;
use clap::{Parser, Subcommand};
use lv_nets::{select_device, set_threads, DeviceChoice, RuntimeInfo};

use lv_bench::commands::{bench_eval, bench_step, metrics, targets};
use lv_bench::{run, tables};

#[derive(Parser)]
#[command(
    name = "lv",
    version,
    about = "Diffusion samplers trained with path-space divergences (log-variance loss)"
)]
struct Cli {
    /// Device: cpu, cuda or auto (the first GPU if libtorch sees one, else the CPU).
    /// Default: cpu, or the run config's `device`; when given, it overrides the config.
    #[arg(long, global = true)]
    device: Option<DeviceChoice>,
    /// libtorch intra-op threads (0 = libtorch's default; default 1: on small CPUs
    /// libtorch's default threading is many times slower). Overrides the config's `threads`.
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Seed for torch's generator and the Rust RNG (default 1). Overrides the config's `seed`.
    #[arg(long, global = true)]
    seed: Option<u64>,
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
    /// Evaluate a trained run again: log Z (IS, ELBO), ESS and sample metrics.
    Eval(run::EvalArgs),
    /// Draw samples from a trained run (EMA weights) into a .npy file.
    Sample(run::SampleArgs),
    /// Sample metrics between a model sample A and a reference sample B (W2, Sinkhorn in
    /// both conventions, MMD, geometric W2 for particle systems).
    Metrics(metrics::MetricsArgs),
    /// Measure training steps per second of a configuration (used by `cargo xtask bench`).
    BenchStep(bench_step::BenchStepArgs),
    /// Time a run's final evaluation and its periodic sample metrics (untrained weights).
    BenchEval(bench_eval::BenchEvalArgs),
    /// Reproduce a benchmark table (`cargo xtask reproduce-table` runs this).
    Reproduce(tables::ReproduceArgs),
    /// Inspect configurations.
    #[command(subcommand)]
    Config(ConfigCmd),
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the resolved configuration of a preset row (what `lv train` would run).
    Show {
        /// The row: `<method>-<loss>-<target>` (e.g. `pis-lv-gmm9`).
        row: String,
        /// Preset name (`configs/<preset>.toml`) or path of a preset file.
        #[arg(long, default_value = "quick")]
        preset: String,
        /// Override a key: `--set train.steps=500` (repeatable).
        #[arg(long = "set")]
        set: Vec<String>,
    },
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    if let Some(t) = cli.threads {
        if t > lv_bench::config::MAX_THREADS {
            anyhow::bail!(
                "--threads must be in [0, {}] (got {t})",
                lv_bench::config::MAX_THREADS
            );
        }
    }
    lv_core::par::tune_allocator();
    let seed = cli.seed.unwrap_or(1);
    set_threads(cli.threads.unwrap_or(1));
    tch::manual_seed(seed as i64);
    let choice = cli.device.unwrap_or_default();
    let device = select_device(choice)?;
    let overrides = run::Overrides {
        device: cli.device,
        threads: cli.threads,
        seed: cli.seed,
    };
    match cli.cmd {
        Cmd::Doctor => {
            print!("{}", RuntimeInfo::collect().render());
            println!("device        : {device:?} (--device {choice})");
        }
        Cmd::Targets { json } => targets::run(json)?,
        Cmd::Train(args) => {
            let dir = run::train(&args, &overrides)?;
            eprintln!("run folder: {}", dir.display());
        }
        Cmd::Eval(args) => run::eval(&args, &overrides)?,
        Cmd::Sample(args) => run::sample(&args, &overrides)?,
        Cmd::Metrics(args) => metrics::run(&args, seed)?,
        Cmd::BenchStep(args) => bench_step::run(&args, &overrides)?,
        Cmd::BenchEval(args) => bench_eval::run(&args, &overrides)?,
        Cmd::Reproduce(args) => tables::run(&args, &overrides)?,
        Cmd::Config(ConfigCmd::Show { row, preset, set }) => {
            let path = lv_bench::preset::preset_path(&tables::repo_root(), &preset);
            let cfg = lv_bench::preset::Preset::load(&path)?.resolve(&row, &set)?;
            // Validated too, so a row that would not train says why here.
            let res = cfg.validate()?;
            print!("{}", toml::to_string_pretty(&res.cfg)?);
        }
    }
    Ok(())
}
