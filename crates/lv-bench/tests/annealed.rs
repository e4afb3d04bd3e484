//! End-to-end tests of the annealed samplers (`cmcd`, `scld`) through the `lv` binary:
//! training, exact resumption (β's parameters included), evaluation with the SMC estimate,
//! sampling, and the validation of the `[anneal]` section.

use std::path::{Path, PathBuf};
use std::process::Command;

fn lv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lv"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lv-anneal-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const TINY: &str = r#"
target = "gmm9"
method = "scld"
loss = "lv"
seed = 3
checkpoint_every = 2
log_every = 1
[sde]
steps = 6
[anneal]
pieces = 3
prior_std = 4.0
sigma_max = 3.0
resample = "systematic"
resample_threshold = 0.9
mcmc = "mala"
mcmc_step_size = 0.05
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
chunk = 32
every = 3
n_during = 32
n_metrics = 32
n_sinkhorn_sde = 32
"#;

fn tensors(run: &Path) -> Vec<(String, Vec<f32>)> {
    let t = tch::Tensor::read_safetensors(run.join("checkpoint.safetensors")).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = t
        .into_iter()
        .filter(|(k, _)| !k.starts_with("meta."))
        .map(|(k, t)| {
            let f = t.to_kind(tch::Kind::Float).view([-1]);
            (k, Vec::<f32>::try_from(&f).unwrap())
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn train(cfg: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    lv().args(["train", "--quiet", "--config"])
        .arg(cfg)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn scld_trains_resumes_exactly_evaluates_and_samples() {
    let dir = tmp("scld");
    let cfg = dir.join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let (a, b) = (dir.join("a"), dir.join("b"));
    assert!(train(&cfg, &a, &[]).status.success());
    assert!(train(&cfg, &b, &["--stop-after", "3"]).status.success());
    assert!(!b.join("results.json").exists());
    let st = lv()
        .args(["train", "--quiet", "--resume"])
        .arg(&b)
        .status()
        .unwrap();
    assert!(st.success());
    let (ta, tb) = (tensors(&a), tensors(&b));
    assert!(ta.iter().any(|(k, _)| k == "model.anneal_beta_logits"));
    assert!(ta.iter().any(|(k, _)| k.starts_with("adam.")));
    assert_eq!(ta.len(), tb.len());
    for ((ka, va), (kb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(ka, kb);
        assert_eq!(va, vb, "tensor {ka} differs after resuming");
    }
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["method"], "scld");
    assert_eq!(results["grid_steps"], 6);
    assert!(results["log_z_is"].as_f64().unwrap().is_finite());
    assert!(results["smc"]["log_z"].as_f64().unwrap().is_finite());
    assert!(results["smc"]["acceptance"].as_f64().unwrap() > 0.0);
    let ev = lv().arg("eval").arg(&a).output().unwrap();
    assert!(
        ev.status.success(),
        "{}",
        String::from_utf8_lossy(&ev.stderr)
    );
    let npy = dir.join("s.npy");
    let st = lv()
        .args(["sample", "-n", "10", "--out"])
        .arg(&npy)
        .arg(&a)
        .status()
        .unwrap();
    assert!(st.success() && npy.exists());
    // CMCD with KL: one piece, pathwise gradients.
    let c = dir.join("c");
    let out = train(
        &cfg,
        &c,
        &[
            "--set",
            "method=\"cmcd\"",
            "--set",
            "loss=\"kl\"",
            "--set",
            "anneal.pieces=1",
            "--set",
            "anneal.resample=\"none\"",
            "--set",
            "train.explore_scale=1.0",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_annealed_configurations_fail_before_training() {
    let dir = tmp("bad");
    let cfg = dir.join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    for (sets, needle) in [
        (vec!["method=\"cmcd\""], "anneal.pieces"),
        (vec!["anneal.pieces=4"], "divide"),
        (vec!["method=\"pis\""], "key `anneal`"),
        (vec!["loss=\"kl\""], "kl is wired for cmcd"),
        (vec!["loss=\"moment\""], "not available"),
        (vec!["anneal.resample_threshold=0.0"], "resample_threshold"),
        (vec!["anneal.sigma_min=5.0"], "sigma_min"),
        (vec!["anneal.mcmc_step_size=-1.0"], "step size"),
        (vec!["anneal.beta=\"wiggly\""], "anneal.beta"),
        (vec!["sde.sigma=1.0"], "sde.sigma"),
        (vec!["train.batch_shards=2"], "train.batch_shards"),
    ] {
        let args: Vec<String> = sets
            .iter()
            .flat_map(|s| ["--set".into(), s.to_string()])
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = train(&cfg, &dir.join("r"), &args);
        assert!(!out.status.success(), "{sets:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle),
            "{sets:?}: error does not name `{needle}`: {err}"
        );
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{sets:?}: not one line: {err}"
        );
        assert!(!dir.join("r").join("checkpoint.json").exists());
    }
}
