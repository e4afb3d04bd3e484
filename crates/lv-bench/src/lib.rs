//! The library behind the `lv` command-line app; `src/main.rs` is the shell over it.
//!
//! - [`config`], [`preset`]: the typed run description (parse, compose a preset row,
//!   validate, resolve the runtime);
//! - [`run`]: `lv train`, `lv eval`, `lv sample` (build a run, the library driver, the run
//!   folder, the final evaluation and its typed `results.json`);
//! - [`tables`]: `lv reproduce` (a table of rows × seeds, its summary, markdown and Slurm
//!   scripts);
//! - [`plots`]: the PNGs of a run and of a table;
//! - [`commands`]: `lv metrics`, `lv targets`, `lv bench-step`;
//! - [`lock`], [`memory`]: the run-folder lock and the memory estimate checked before a run.

pub mod commands;
pub mod config;
pub mod lock;
pub mod memory;
pub mod plots;
pub mod preset;
pub mod run;
pub mod tables;
