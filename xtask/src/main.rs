//! Project automation (matklad's cargo-xtask convention), reached as `cargo xtask <cmd>`.
//!
//! Depends on no tch crate: it must run before libtorch exists, and it is what installs it.

mod bench;
mod fuzz;
mod libtorch;
mod python;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "lv project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Provision libtorch 2.13.0 (venv in the user cache + `.libtorch` symlink); idempotent.
    Setup,
    /// Print the libtorch found by setup and what the `lv` binary sees at run time.
    Doctor,
    /// Set up what is missing, build, and run the whole test suite: `cargo test --workspace`,
    /// then the Python packages' pytest suites against freshly built wheels.
    Test {
        /// Extra arguments passed to `cargo test` (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Training steps/s of `lv bench-step` on the standard configurations; with `--compare`
    /// also of the PyTorch baseline (benches/baselines/pytorch_step.py), with the ratio.
    Bench(bench::BenchArgs),
    /// Run each cargo-fuzz target of `fuzz/` for a bounded time (stable toolchain via
    /// RUSTC_BOOTSTRAP=1, no sanitizer) and report executions and findings.
    Fuzz(fuzz::FuzzArgs),
    /// Only the Python half of `test`: build (dev profile), install and pytest both packages.
    TestPython,
    /// Build the Python wheels (`lv_metrics`, `lv`) with maturin into target/wheels.
    Wheel(python::WheelArgs),
    /// Reproduce the benchmark tables (see the README).
    ReproduceTable {
        /// Extra arguments passed to `lv reproduce` (for example `--preset quick`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
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
    let root = repo_root()?;
    match cli.cmd {
        Cmd::Setup => {
            libtorch::ensure(&root)?;
        }
        Cmd::Doctor => {
            let lt = libtorch::ensure(&root)?;
            println!("libtorch (setup): {} ({})", lt.root.display(), lt.version);
            cargo(
                &root,
                &[
                    "run", "--quiet", "-p", "lv-bench", "--bin", "lv", "--", "doctor",
                ],
            )?;
        }
        Cmd::Test { args } => {
            libtorch::ensure(&root)?;
            let mut a = vec!["test", "--workspace"];
            if !args.is_empty() {
                a.push("--");
                a.extend(args.iter().map(String::as_str));
            }
            cargo(&root, &a)?;
            python::test(&root)?;
        }
        Cmd::TestPython => {
            libtorch::ensure(&root)?;
            python::test(&root)?;
        }
        Cmd::Wheel(args) => python::wheel(&root, &args)?,
        Cmd::Bench(args) => {
            libtorch::ensure(&root)?;
            bench::run(&root, &args)?;
        }
        Cmd::Fuzz(args) => {
            // The config and checkpoint targets link libtorch.
            let lt = libtorch::ensure(&root)?;
            fuzz::run(&root, &lt.root, &args)?;
        }
        Cmd::ReproduceTable { args } => {
            libtorch::ensure(&root)?;
            // Release: the dev profile builds the workspace at opt-level 1, which leaves the
            // native network kernels unvectorised (LV rows ran 3× slower that way).
            let mut a = vec![
                "run",
                "--release",
                "--quiet",
                "-p",
                "lv-bench",
                "--bin",
                "lv",
                "--",
                "reproduce",
            ];
            a.extend(args.iter().map(String::as_str));
            cargo(&root, &a)?;
        }
    }
    Ok(())
}

/// The workspace root (the folder holding the top-level `Cargo.toml`).
fn repo_root() -> Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = dir
        .parent()
        .context("xtask has no parent folder")?
        .to_path_buf();
    if !root.join("Cargo.toml").exists() {
        bail!("cannot find the workspace root above {}", dir.display());
    }
    Ok(root)
}

/// Runs `cargo <args>` in the workspace root, failing on a non-zero exit.
fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("running `{cargo} {}`", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
