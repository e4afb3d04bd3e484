//! The commands of `lv` that are not a training run or a table: `lv metrics` (sample metrics
//! of two sample files), `lv targets` (the registry), `lv bench-step` (one timed training
//! step) and `lv bench-eval` (a run's evaluations, timed). The run commands (`lv train`, `eval`, `sample`) are in [`crate::run`], `lv reproduce`
//! in [`crate::tables`].

pub mod bench_eval;
pub mod bench_step;
pub mod metrics;
pub mod targets;
