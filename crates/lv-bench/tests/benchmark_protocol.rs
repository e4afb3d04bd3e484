//! The later benchmarks' evaluation protocol end to end: RSMC's LV variant (method `ou_dds`,
//! loss `lv_biased`) trained with `eval.protocol = "fixed_reference"` writes the benchmark
//! metrics of every evaluation and reports the last value, the mean of the last 5 and the
//! noise floor.

use lv_bench::run::{RunResults, SampleMetricsRecord};
use std::process::Command;

const CONFIG: &str = r#"
target = "gmm9"
method = "ou_dds"
loss = "lv_biased"
seed = 3
checkpoint_every = 100
log_every = 1
[sde]
steps = 8
prior_std = 4.0
[train]
steps = 6
batch = 32
lr_milestones = { at = [3, 5], gamma = 0.3 }
[model]
clip_model = 1e4
clip_score = 1e2
scale_init = 0.1
scale_per_dim = true
[model.mlp]
width = 16
[eval]
n = 128
chunk = 128
every = 2
n_during = 64
n_metrics = 64
n_sinkhorn_sde = 64
protocol = "fixed_reference"
"#;

#[test]
fn fixed_reference_protocol_reports_last_mean_and_noise_floor() {
    let dir = std::env::temp_dir().join(format!("lv-protocol-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let run = dir.join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_lv"))
        .args(["train", "--quiet", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<SampleMetricsRecord> = std::fs::read_to_string(run.join("sample_metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Evaluations during training at steps 2 and 4 (the last one is the final evaluation).
    assert_eq!(lines.iter().map(|r| r.step).collect::<Vec<_>>(), [2, 4]);
    let r = RunResults::read(&run.join("results.json")).unwrap();
    let p = r.periodic.as_ref().expect("periodic summary");
    assert_eq!(p.evaluations, 3);
    let last = r.metrics.sinkhorn_div.unwrap();
    let during: Vec<f64> = lines
        .iter()
        .map(|l| l.metrics.sinkhorn_div.unwrap())
        .collect();
    let mean = (during.iter().sum::<f64>() + last) / 3.0;
    assert!((p.mean_last.sinkhorn_div.unwrap() - mean).abs() < 1e-9 * mean.abs().max(1.0));
    let floor = p.noise_floor.sinkhorn_div.unwrap();
    assert!(floor > 0.0 && floor.is_finite());
    assert!(r.metrics.mmd_median.is_some() && p.noise_floor.mmd_median.is_some());
    // A bad protocol setting is a one-line error naming the key.
    let bad = CONFIG.replace("n_during = 64", "n_during = 16");
    std::fs::write(&cfg, bad).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lv"))
        .args(["train", "--quiet", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(dir.join("run2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("eval.n_during"), "{err}");
}
