//! The library behind the `lv` command: run configuration (parse + validate), training
//! runs and their folders, sample-metric and target listings, plots and the benchmark
//! tables. `src/main.rs` is the command-line shell over these modules.

pub mod bench_step;
pub mod cli_metrics;
pub mod cli_targets;
pub mod config;
pub mod lock;
pub mod memory;
pub mod plots;
pub mod preset;
pub mod run;
pub mod tables;
