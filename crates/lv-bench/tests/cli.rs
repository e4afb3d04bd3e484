//! End-to-end tests of the `lv` binary on tiny configurations (CPU).

use std::path::{Path, PathBuf};
use std::process::Command;

fn lv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lv"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lv-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const TINY: &str = r#"
target = "gmm9"
method = "pis"
loss = "lv"
seed = 7
checkpoint_every = 2
log_every = 1
[sde]
steps = 5
[train]
steps = 6
batch = 16
explore_scale = 1.5
explore_steps = 4
[model.mlp]
width = 16
[ema]
last_steps = 3
[eval]
n = 64
chunk = 64
every = 3
n_during = 32
n_metrics = 32
n_sinkhorn_sde = 32
"#;

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("tiny.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Starts `lv train --quiet --config CFG --out RUN` in the background.
fn spawn_train(cfg: &Path, run: &Path) -> std::process::Child {
    lv().args(["train", "--quiet", "--config"])
        .arg(cfg)
        .arg("--out")
        .arg(run)
        .spawn()
        .unwrap()
}

fn model_tensors(run: &Path) -> Vec<(String, Vec<f32>)> {
    let t = tch::Tensor::read_safetensors(run.join("checkpoint.safetensors")).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = t
        .into_iter()
        .filter(|(k, _)| k.starts_with("model.") || k.starts_with("ema."))
        .map(|(k, t)| {
            let f = t.to_kind(tch::Kind::Float).view([-1]);
            (k, Vec::<f32>::try_from(&f).unwrap())
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn interrupted_and_resumed_run_equals_uninterrupted() {
    let dir = tmp("resume");
    let cfg = write_config(&dir, TINY);
    let a = dir.join("a");
    let b = dir.join("b");
    let st = lv()
        .args(["train", "--quiet", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&a)
        .status()
        .unwrap();
    assert!(st.success());
    let st = lv()
        .args(["train", "--quiet", "--stop-after", "3", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&b)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        !b.join("results.json").exists(),
        "the interrupted run must not have finished"
    );
    // What a SIGKILL can leave: a checkpoint.json one save behind the tensor file (killed
    // between the two renames) and curve lines past the checkpoint, the last one cut short.
    let meta_path = b.join("checkpoint.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    assert_eq!(meta["counters"]["step"], 3);
    meta["counters"]["step"] = 2.into();
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    let mut curve = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    curve.push_str("{\"step\": 4, \"loss\": 123.0}\n{\"step\": 5, \"lo");
    std::fs::write(b.join("metrics.jsonl"), curve).unwrap();
    let st = lv()
        .args(["train", "--quiet", "--resume"])
        .arg(&b)
        .status()
        .unwrap();
    assert!(st.success());
    // The resumed curve is the uninterrupted one (wall-clock seconds aside).
    let curve = |run: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("seconds");
                if let Some(e) = v.get_mut("eval").and_then(|e| e.as_object_mut()) {
                    e.remove("sample_seconds");
                }
                v
            })
            .collect()
    };
    assert_eq!(curve(&a), curve(&b));
    let (ta, tb) = (model_tensors(&a), model_tensors(&b));
    assert!(!ta.is_empty());
    assert_eq!(ta.len(), tb.len());
    for ((ka, va), (kb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(ka, kb);
        assert_eq!(va, vb, "tensor {ka} differs after resuming");
    }
    for f in [
        "config.toml",
        "metrics.jsonl",
        "results.json",
        "samples.npy",
        "samples.png",
        "curves.png",
    ] {
        assert!(b.join(f).exists(), "missing {f}");
    }
    let res: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("results.json")).unwrap()).unwrap();
    for k in [
        "log_z_is",
        "log_z_elbo",
        "log_z_error_is",
        "log_z_error_elbo",
        "ess",
        "seconds",
        "skipped_steps",
        "filtered_samples",
        "w2",
        "sinkhorn_sde",
        "sinkhorn_div",
        "mmd_median",
        "log_z_error_lb_ito",
        "rel_error_is",
        "rel_error_elbo",
        "rel_error_lb_ito",
        "avg_marginal_stddev",
        "stddev_error_per_coordinate",
        "stddev_reference",
        "metric_sizes",
    ] {
        assert!(!res[k].is_null(), "results.json lacks `{k}`");
    }
    // gmm9 (log Z = 0): rel = abs / (0 + 1e-8); exact stds; per-coordinate errors for d = 2.
    let rel = res["rel_error_is"].as_f64().unwrap();
    let abs = res["log_z_error_is"].as_f64().unwrap();
    assert!(
        (rel - abs / 1e-8).abs() <= 1e-6 * rel.abs().max(1.0),
        "{rel} vs {abs}"
    );
    assert_eq!(res["stddev_reference"]["kind"], "exact");
    assert_eq!(
        res["stddev_error_per_coordinate"].as_array().unwrap().len(),
        2
    );
    assert_eq!(
        res["metric_sizes"]["sinkhorn_sde"],
        serde_json::json!([32, 32])
    );
    // lv eval and lv sample on the finished run.
    let st = lv()
        .arg("eval")
        .arg(&b)
        .args(["--set", "eval.n=32"])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let npy = dir.join("s.npy");
    let st = lv()
        .arg("sample")
        .arg(&b)
        .args(["-n", "10", "--out"])
        .arg(&npy)
        .status()
        .unwrap();
    assert!(st.success());
    let arr: ndarray::Array2<f32> = ndarray_npy::read_npy(&npy).unwrap();
    assert_eq!(arr.dim(), (10, 2));
}

/// `lv eval` on a finished run reproduces the run's own final evaluation: the same EMA
/// weights, noise and clip values. The run passes both clip milestones with clips that bind
/// (the network's output clipped at 0.002 × 5² at the end), so evaluating with the initial
/// clip values would give other estimates.
#[test]
fn lv_eval_reproduces_the_final_evaluation() {
    let dir = tmp("reeval");
    let text = TINY
        .replace(
            "[train]\n",
            "[train]\nclip_milestones = [2, 4]\nlr = 0.05\n",
        )
        .replace("[model.mlp]", "[model]\nclip_model = 0.002\n[model.mlp]");
    let cfg = write_config(&dir, &text);
    let run = dir.join("run");
    let st = lv()
        .args(["train", "--quiet", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&run)
        .status()
        .unwrap();
    assert!(st.success());
    let trained: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
    let out = lv().arg("eval").arg(&run).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in ["log_z_is", "log_z_elbo", "log_z_lb_ito", "ess", "lv"] {
        assert!(trained[k].is_f64(), "results.json lacks `{k}`");
        assert_eq!(
            trained[k], again[k],
            "`{k}` of lv eval differs from the run's"
        );
    }
}

#[test]
fn bad_configurations_fail_before_training() {
    let dir = tmp("bad");
    let cfg = write_config(&dir, TINY);
    for (set, needle) in [
        ("train.stepz=3", "stepz"),
        ("target=nowhere", "nowhere"),
        ("method=mcmc", "mcmc"),
        ("dim=3", "dimension 3"),
        ("train.batch=\"x\"", "invalid type"),
    ] {
        let out = lv()
            .args(["train", "--quiet", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(dir.join("r"))
            .args(["--set", set])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{set} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle),
            "{set}: error does not name `{needle}`: {err}"
        );
        assert!(
            !dir.join("r").join("checkpoint.json").exists(),
            "{set}: training started"
        );
    }
    let out = lv().args(["--device", "cuda", "doctor"]).output().unwrap();
    if tch::Cuda::device_count() == 0 {
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("no CUDA device"));
    }
}

#[test]
fn metrics_command_reads_files_and_reports_bad_input() {
    let dir = tmp("metrics");
    let a = dir.join("a.csv");
    let b = dir.join("b.csv");
    let rows = |shift: f64| -> String {
        (0..40)
            .map(|i| format!("{},{}\n", i as f64 * 0.1 + shift, (i % 7) as f64))
            .collect()
    };
    std::fs::write(&a, format!("x,y\n{}", rows(0.5))).unwrap();
    std::fs::write(&b, rows(0.0)).unwrap();
    let out = lv()
        .arg("metrics")
        .arg(&a)
        .arg(&b)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!((v["w2"].as_f64().unwrap() - 0.5).abs() < 1e-9, "{v}");
    for k in ["sinkhorn_sde", "sinkhorn_div", "mmd_median", "mmd_unbiased"] {
        assert!(v[k].is_number(), "{k} missing: {v}");
    }
    std::fs::write(&b, "1,2\n3,nan\n").unwrap();
    let out = lv().arg("metrics").arg(&a).arg(&b).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("b.csv") && err.to_lowercase().contains("nan"),
        "{err}"
    );
}

#[test]
fn sigkill_mid_run_then_resume_completes() {
    let dir = tmp("kill");
    let cfg = write_config(
        &dir,
        &TINY.replace("steps = 6\nbatch", "steps = 400\nbatch"),
    );
    let run = dir.join("r");
    let mut child = spawn_train(&cfg, &run);
    // Wait for a few checkpoints, then SIGKILL (Child::kill sends SIGKILL on Unix).
    let t0 = std::time::Instant::now();
    loop {
        let step = std::fs::read_to_string(run.join("checkpoint.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["counters"]["step"].as_u64())
            .unwrap_or(0);
        if step >= 6 || t0.elapsed().as_secs() > 60 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !run.join("results.json").exists(),
        "the run finished before it was killed"
    );
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("checkpoint.json")).unwrap())
            .unwrap();
    let at_kill = meta["counters"]["step"].as_u64().unwrap();
    assert!(at_kill >= 2);
    let st = lv()
        .args(["train", "--quiet", "--resume"])
        .arg(&run)
        .status()
        .unwrap();
    assert!(st.success());
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("checkpoint.json")).unwrap())
            .unwrap();
    assert_eq!(meta["counters"]["step"].as_u64().unwrap(), 400);
    assert!(run.join("results.json").exists());
}

#[test]
fn sub_trajectory_training_runs_and_is_validated() {
    let dir = tmp("subtraj");
    let text = TINY
        .replace(
            "method = \"pis\"",
            "method = \"dis\"\ncontrol = \"potential\"",
        )
        .replace(
            "explore_scale = 1.5\nexplore_steps = 4\n",
            "[train.subtraj]\nprob = 0.5\n",
        );
    let cfg = write_config(&dir, &text);
    let st = lv()
        .args(["train", "--quiet", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(dir.join("ok"))
        .status()
        .unwrap();
    assert!(st.success());
    assert!(dir.join("ok/results.json").exists());
    // Sub-trajectory training without the potential control is refused before training.
    let out = lv()
        .args(["train", "--quiet", "--config"])
        .arg(&cfg)
        .args(["--set", "control=\"default\"", "--out"])
        .arg(dir.join("bad"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("train.subtraj"));
}

#[test]
fn second_writer_is_refused_and_readers_work_while_training() {
    let dir = tmp("lock");
    let cfg = write_config(
        &dir,
        &TINY
            .replace("steps = 6\n", "steps = 3000\n")
            .replace("checkpoint_every = 2", "checkpoint_every = 20")
            .replace("every = 3\n", "every = 0\n"),
    );
    let run = dir.join("run");
    let mut first = spawn_train(&cfg, &run);
    // Wait for the first checkpoint (the trainer holds the lock from before its first step).
    let t0 = std::time::Instant::now();
    while !run.join("checkpoint.safetensors").exists() {
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint after 120 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let config_before = std::fs::read(run.join("config.toml")).unwrap();
    let refused = |args: &[&str]| {
        let out = lv().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.code(), err)
    };
    let run_s = run.display().to_string();
    let cfg_s = cfg.display().to_string();
    for args in [
        vec!["train", "--quiet", "--config", &cfg_s, "--out", &run_s],
        vec!["train", "--quiet", "--resume", &run_s],
    ] {
        let (code, err) = refused(&args);
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first trainer finished before the check; make the run longer"
        );
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(
            err.contains("in use by another `lv train`"),
            "{args:?}: {err}"
        );
    }
    // Readers: sampling and evaluating the latest checkpoint while it trains.
    let s = dir.join("s.npy");
    let (code, err) = refused(&[
        "sample",
        &run_s,
        "-n",
        "7",
        "--out",
        &s.display().to_string(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = refused(&["eval", &run_s, "--set", "eval.n=32"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("being trained"), "{err}");
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first trainer finished too early"
    );
    assert!(
        !run.join("results.json").exists(),
        "lv eval wrote into a training folder"
    );
    let status = first.wait().unwrap();
    assert!(status.success());
    // Nothing duplicated or lost: one loss line per step 1..=3000, the config untouched.
    assert_eq!(
        std::fs::read(run.join("config.toml")).unwrap(),
        config_before
    );
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=3000).collect::<Vec<u64>>());
    assert!(run.join("results.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_eval_times_the_final_evaluation_and_the_periodic_metrics() {
    let d = tmp("bench-eval");
    let cfg = d.join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    // A plain config takes no row.
    let out = lv()
        .args(["bench-eval", "--row", "pis-lv-gmm9", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = lv()
        .args([
            "bench-eval",
            "--rounds",
            "2",
            "--json",
            "--set",
            "eval.n=200",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["n"], 200);
    assert_eq!(v["grid_steps"], 5);
    assert!(v["eval_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(v["metrics_n"], 32);
    assert!(v["metrics_seconds"].as_f64().unwrap() > 0.0);
    let bad = lv()
        .args(["bench-eval", "--rounds", "0", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--rounds must be in [1, 1000]"));
}

#[test]
fn bench_step_times_a_preset_row_with_its_own_settings() {
    let preset = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/cpu.toml");
    let out = lv()
        .args(["bench-step", "--config"])
        .arg(&preset)
        .args([
            "--row",
            "ou_dds-lv_biased-robot4",
            "--batch",
            "16",
            "--steps-grid",
            "8",
            "--set",
            "model.mlp.width=8",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["config"], "ou_dds-lv_biased-robot4-b16-n8");
    assert_eq!(v["batch"], 16);
    assert_eq!(v["steps_grid"], 8);
    assert!(v["last_loss"].as_f64().unwrap().is_finite());
    // The row names method, loss and target; flags that would contradict it are refused.
    let bad = lv()
        .args(["bench-step", "--loss", "kl", "--config"])
        .arg(&preset)
        .args(["--row", "ou_dds-lv_biased-robot4"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--loss cannot be combined with --config")
    );
    let bad = lv()
        .args(["bench-step", "--row", "pis-lv-gmm9"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--row and --set need --config"));
}
