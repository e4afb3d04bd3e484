//! A table's summary: every (row, seed) run's results.json collected into
//! `results/<table>/summary.{json,csv}`.

use super::{Job, ReproduceArgs, TableSpec};
use crate::run::{write_atomic, Metric, RunResults};
use anyhow::Result;
use serde::Serialize;

/// One (row, seed) of a table's summary: the run's results with the preset and row.
#[derive(Debug, Serialize)]
pub(super) struct SummaryRow {
    pub(super) preset: String,
    pub(super) row: String,
    #[serde(flatten)]
    pub(super) results: RunResults,
}

/// One (row, seed) of a table as committed beside its markdown
/// (`docs/results/<table>-<preset>.json`): the row's identity, time, log Z errors, ESS and
/// the sample metrics (keys of `lv metrics --json`), with the periodic summary where the
/// benchmark protocol ran.
#[derive(Debug, Serialize)]
pub(super) struct DocRow<'a> {
    target: &'a str,
    variant: Option<&'a str>,
    method: String,
    loss: String,
    seed: u64,
    seconds: f64,
    log_z_error_is: Option<f64>,
    log_z_error_elbo: Option<f64>,
    ess: f64,
    #[serde(flatten)]
    metrics: &'a lv_metrics::MetricsReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    periodic: Option<&'a crate::run::PeriodicMetrics>,
}

/// The [`DocRow`]s of a table's summary, in its order.
pub(super) fn doc_rows<'a>(spec: &'a TableSpec, summary: &'a [SummaryRow]) -> Vec<DocRow<'a>> {
    summary
        .iter()
        .map(|s| {
            let r = &s.results;
            let variant = spec
                .rows
                .iter()
                .find(|row| super::row_key(row) == s.row)
                .and_then(|row| row.variant.as_deref());
            DocRow {
                target: &r.target,
                variant,
                method: r.method.to_string(),
                loss: r.loss.to_string(),
                seed: r.seed,
                seconds: r.seconds,
                log_z_error_is: r.log_z_error_is,
                log_z_error_elbo: r.log_z_error_elbo,
                ess: r.ess,
                metrics: &r.metrics,
                periodic: r.periodic.as_ref(),
            }
        })
        .collect()
}

/// Reads every job's results into `results/<table>/summary.{json,csv}`: from its run folder
/// when that was trained with the job's configuration, else from the table's record of runs
/// ([`super::archive`]) when it holds the job for that configuration, else from whatever
/// `results.json` the run folder holds (runs from a Slurm array carry no hash).
pub(super) fn collect(
    spec: &TableSpec,
    args: &ReproduceArgs,
    jobs: &[Job],
) -> Result<Vec<SummaryRow>> {
    let archived = super::archive::dir(args, spec);
    let mut all = Vec::new();
    for j in jobs {
        let recorded = if super::is_done(j) {
            None
        } else {
            super::archive::lookup(&archived, j)
        };
        let results = match recorded {
            Some(r) => r,
            None => RunResults::read(&j.dir.join("results.json"))?,
        };
        all.push(SummaryRow {
            preset: args.preset.clone(),
            row: j.key.clone(),
            results,
        });
    }
    let dir = args.out.join(&spec.name);
    std::fs::create_dir_all(&dir)?;
    write_atomic(
        &dir.join("summary.json"),
        serde_json::to_string_pretty(&all)?.as_bytes(),
    )?;
    // CSV: the scalar fields of every row (the union of keys) and the mode-coverage fraction.
    let objects: Vec<serde_json::Map<String, serde_json::Value>> = all
        .iter()
        .map(|r| {
            let mut o = match serde_json::to_value(r) {
                Ok(serde_json::Value::Object(o)) => o,
                _ => Default::default(),
            };
            o.retain(|_, x| !x.is_object() && !x.is_array());
            if let Some(f) = r.results.value(Metric::ModeCoverageFraction) {
                o.insert(Metric::ModeCoverageFraction.name(), f.into());
            }
            o
        })
        .collect();
    let mut keys: Vec<String> = Vec::new();
    for o in &objects {
        for k in o.keys() {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    let mut csv = keys.join(",") + "\n";
    for o in &objects {
        let row: Vec<String> = keys
            .iter()
            .map(|k| match o.get(k) {
                None | Some(serde_json::Value::Null) => String::new(),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(x) => x.to_string(),
            })
            .collect();
        csv += &(row.join(",") + "\n");
    }
    write_atomic(&dir.join("summary.csv"), csv.as_bytes())?;
    Ok(all)
}
