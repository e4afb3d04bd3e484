//! The committed record of a table's runs: `docs/results/<table>-<preset>-runs/<row>-seed<s>.json`,
//! one file per (row, seed) holding the SHA-256 of the run's resolved configuration and its
//! `results.json`.
//!
//! A (row, seed) whose run folder is gone (another machine, a later session) is taken from
//! its record when the hash equals that of its present resolved configuration, so a table can
//! grow by seeds or rows without retraining what it already holds. A record whose hash
//! differs is stale: the row is trained again and the record replaced. Records are written
//! only from run folders whose `config.sha256` matches, and `--force` ignores them.

use super::{Job, ReproduceArgs, TableSpec};
use crate::run::{write_atomic, RunResults};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One archived (row, seed).
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// SHA-256 of the resolved configuration the run trained with.
    config_sha256: String,
    results: RunResults,
}

/// Where a table's records live: `<docs>/<table>-<preset>-runs/`.
pub(super) fn dir(args: &ReproduceArgs, spec: &TableSpec) -> PathBuf {
    args.docs
        .join(format!("{}-{}-runs", spec.name, args.preset))
}

fn path(dir: &Path, job: &Job) -> PathBuf {
    dir.join(format!("{}-seed{}.json", job.key, job.seed))
}

/// The archived results of `job`, if a record exists for its present configuration; a
/// missing, unreadable or stale record is `None`.
pub(super) fn lookup(dir: &Path, job: &Job) -> Option<RunResults> {
    let text = std::fs::read_to_string(path(dir, job)).ok()?;
    let rec: Record = serde_json::from_str(&text).ok()?;
    (rec.config_sha256 == job.hash).then_some(rec.results)
}

/// Records `results` as `job`'s (atomic write).
pub(super) fn record(dir: &Path, job: &Job, results: &RunResults) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let rec = Record {
        config_sha256: job.hash.clone(),
        results: results.clone(),
    };
    write_atomic(
        &path(dir, job),
        serde_json::to_string_pretty(&rec)?.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(hash: &str) -> Job {
        Job {
            key: "pis-lv-gmm9".into(),
            seed: 2,
            config: PathBuf::from("configs/quick.toml"),
            dir: PathBuf::from("results/x"),
            hash: hash.into(),
            steps: 10,
        }
    }

    fn results() -> RunResults {
        let text = r#"{"method":"pis","loss":"lv","target":"gmm9","seed":2,"steps":10,
            "batch":8,"grid_steps":5,"log_z_is":-0.01,"log_z_elbo":-0.2,"log_z_lb_ito":-0.3,
            "ess":0.5,"lv":1.5,"eval_n":100,"eval_non_finite":0,"seconds":1.25,
            "skipped_steps":0,"filtered_samples":0,"target_evals":60,"log_z_ref":0.0,
            "log_z_error_is":0.01,"log_z_error_elbo":0.2,"log_z_error_lb_ito":0.3,
            "rel_error_is":0.01,"rel_error_elbo":0.2,"rel_error_lb_ito":0.3,
            "non_finite_samples":0}"#;
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn a_record_is_found_for_its_own_configuration_only() {
        let dir = std::env::temp_dir().join(format!("lv-archive-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let j = job("abc");
        assert!(lookup(&dir, &j).is_none(), "nothing recorded yet");
        record(&dir, &j, &results()).unwrap();
        assert_eq!(lookup(&dir, &j), Some(results()));
        assert!(
            lookup(&dir, &job("abd")).is_none(),
            "a changed configuration makes the record stale"
        );
        let mut other_seed = job("abc");
        other_seed.seed = 3;
        assert!(lookup(&dir, &other_seed).is_none());
        std::fs::write(path(&dir, &j), "{not json").unwrap();
        assert!(
            lookup(&dir, &j).is_none(),
            "an unreadable record is ignored"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
