//! Bad input, table-driven: every case is something a user can type (a key at 0, negative,
//! NaN or huge; a broken or foreign file; a folder in the wrong state; an absurd flag). Each
//! must end with exit code 1 (our error) or 2 (clap's usage error), never a panic (101), an
//! abort or a signal, and its error line must name the problem. Nothing already written may
//! be lost: the trained fixture run is checked unchanged at the end.

use ndarray::{Array1, Array2};
use std::path::{Path, PathBuf};
use std::process::Command;

fn lv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lv"))
}

const TINY: &str = r#"
target = "gmm9"
method = "pis"
loss = "lv"
seed = 3
checkpoint_every = 2
log_every = 1
[sde]
steps = 4
[train]
steps = 4
batch = 16
[model.mlp]
width = 16
[ema]
last_steps = 2
[eval]
n = 64
chunk = 64
every = 0
n_during = 32
n_metrics = 32
n_sinkhorn_sde = 32
"#;

struct Fixture {
    dir: PathBuf,
    cfg: PathBuf,
    run: PathBuf,
}

impl Fixture {
    fn p(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

fn setup() -> Fixture {
    let dir = std::env::temp_dir().join(format!("lv-bad-input-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let run = dir.join("run");
    let out = lv()
        .args(["train", "--quiet", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fixture run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Sample files.
    let good = Array2::from_shape_fn((20, 2), |(i, j)| (i + j) as f32 * 0.1);
    ndarray_npy::write_npy(dir.join("good.npy"), &good).unwrap();
    let good3 = Array2::from_shape_fn((20, 3), |(i, j)| (i * j) as f32 * 0.1);
    ndarray_npy::write_npy(dir.join("good3.npy"), &good3).unwrap();
    std::fs::write(dir.join("empty.npy"), b"").unwrap();
    let bytes = std::fs::read(dir.join("good.npy")).unwrap();
    std::fs::write(dir.join("truncated.npy"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(dir.join("header_only.npy"), &bytes[..40]).unwrap();
    let ints = Array2::from_shape_fn((20, 2), |(i, j)| (i + j) as i64);
    ndarray_npy::write_npy(dir.join("int.npy"), &ints).unwrap();
    ndarray_npy::write_npy(dir.join("one_d.npy"), &Array1::from_elem(20, 1.0f32)).unwrap();
    let mut nan = good.clone();
    nan[[3, 1]] = f32::NAN;
    ndarray_npy::write_npy(dir.join("nan.npy"), &nan).unwrap();
    ndarray_npy::write_npy(dir.join("zero_rows.npy"), &Array2::<f32>::zeros((0, 2))).unwrap();
    std::fs::write(dir.join("text.npy"), "not a numpy file at all, just text\n").unwrap();
    std::fs::write(dir.join("bad.csv"), "1,2\n3,four\n").unwrap();
    std::fs::write(dir.join("ragged.csv"), "1,2\n3,4,5\n").unwrap();
    std::fs::write(dir.join("bad.toml"), "target = \"gmm9\n[train\n").unwrap();
    // A torn checkpoint: the run's tensor file cut in half, in a copy of the run folder.
    let torn = dir.join("torn");
    copy_run(&run, &torn);
    let ck = std::fs::read(torn.join("checkpoint.safetensors")).unwrap();
    std::fs::write(torn.join("checkpoint.safetensors"), &ck[..ck.len() / 2]).unwrap();
    // A foreign checkpoint: a run folder whose config asks for another network.
    let foreign = dir.join("foreign");
    copy_run(&run, &foreign);
    let text = std::fs::read_to_string(foreign.join("config.toml")).unwrap();
    std::fs::write(
        foreign.join("config.toml"),
        text.replace("width = 16", "width = 24"),
    )
    .unwrap();
    // A checkpoint that is not safetensors at all.
    let garbage = dir.join("garbage");
    copy_run(&run, &garbage);
    std::fs::write(
        garbage.join("checkpoint.safetensors"),
        b"\xff\xff\xff\xff garbage",
    )
    .unwrap();
    // A folder with a config but no checkpoint.
    let no_ckpt = dir.join("no_ckpt");
    std::fs::create_dir_all(&no_ckpt).unwrap();
    std::fs::copy(run.join("config.toml"), no_ckpt.join("config.toml")).unwrap();
    Fixture { dir, cfg, run }
}

fn copy_run(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["config.toml", "checkpoint.safetensors", "checkpoint.json"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

/// One case: the arguments after `lv` and a fragment the error line must contain.
struct Case {
    args: Vec<String>,
    expect: &'static str,
}

fn case(args: &[&str], expect: &'static str) -> Case {
    Case {
        args: args.iter().map(|s| s.to_string()).collect(),
        expect,
    }
}

fn cases(f: &Fixture) -> Vec<Case> {
    let cfg = f.cfg.display().to_string();
    let run = f.run.display().to_string();
    let fresh = f.p("fresh");
    let preset = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs/quick.toml")
        .display()
        .to_string();
    let train_set = |set: &str, expect: &'static str| {
        case(
            &[
                "train", "--quiet", "--config", &cfg, "--out", &fresh, "--set", set,
            ],
            expect,
        )
    };
    let metrics =
        |a: &str, b: &str, expect: &'static str| case(&["metrics", &f.p(a), &f.p(b)], expect);
    let mut v = vec![
        // Numeric keys at 0, negative, NaN, infinite, huge.
        train_set("train.steps=0", "train.steps"),
        train_set("train.steps=-1", "train.steps"),
        train_set("train.batch=0", "train.batch"),
        train_set("train.batch=1", "train.batch"),
        train_set("train.batch=4000000000", "needs about"),
        train_set("train.lr=0", "train.lr"),
        train_set("train.lr=-0.1", "train.lr"),
        train_set("train.lr=nan", "train.lr"),
        train_set("train.lr=inf", "train.lr"),
        train_set("train.weight_decay=-1", "train.weight_decay"),
        train_set("train.grad_clip=0", "train.grad_clip"),
        train_set("train.max_rnd=nan", "train.max_rnd"),
        train_set("train.lr_schedule=[0, 0.9]", "train.lr_schedule[0]"),
        train_set("train.lr_schedule=[100, -1.0]", "train.lr_schedule[1]"),
        train_set("train.clip_factor=0", "train.clip_factor"),
        train_set("train.explore_scale=nan", "train.explore_scale"),
        train_set("train.explore_scale=0.5", "train.explore_scale"),
        train_set("train.initial_repeats=0", "train.initial_repeats"),
        train_set("train.initial_repeats=3", "train.initial_repeats"),
        train_set("train.batch_shards=1000", "train.batch_shards"),
        train_set("train.subtraj.prob=2.0", "train.subtraj.prob"),
        train_set("sde.steps=0", "sde.steps"),
        train_set("sde.steps=100000000", "sde.steps"),
        train_set("model.mlp.width=0", "model.mlp.width"),
        train_set("model.mlp.width=-5", "model.mlp.width"),
        train_set("model.mlp.num_layers=1", "model.mlp.num_layers"),
        train_set("model.mlp.num_freqs=0", "model.mlp.num_freqs"),
        train_set("model.mlp.freq_min=nan", "model.mlp.freq_min"),
        train_set("model.clip_model=nan", "model.clip_model"),
        train_set("model.clip_score=-1", "model.clip_score"),
        train_set("ema.every=0", "ema.every"),
        train_set("ema.cap=2.0", "ema.cap"),
        train_set("ema.constant_decay=-0.5", "ema.constant_decay"),
        train_set("eval.n=0", "eval.n"),
        train_set("eval.chunk=0", "eval.chunk"),
        train_set("eval.n_metrics=0", "eval.n_metrics"),
        train_set("eval.n_metrics=10000000000", "eval.n_metrics"),
        train_set("checkpoint_every=0", "checkpoint_every"),
        train_set("log_every=0", "log_every"),
        train_set("threads=100000", "threads"),
        train_set("lv_traj_k=0", "lv_traj"),
        case(
            &[
                "train",
                "--quiet",
                "--config",
                &cfg,
                "--out",
                &fresh,
                "--set",
                "loss=\"lv_traj\"",
                "--set",
                "lv_traj_k=1",
            ],
            "K ≥ 2",
        ),
        // Names and override syntax.
        train_set("target=nowhere", "nowhere"),
        train_set("method=mcmc", "mcmc"),
        train_set("train.stepz=3", "stepz"),
        train_set("garbage", "key=value"),
        train_set("=3", "empty key"),
        train_set("train.steps.x=1", "not a table"),
        train_set("train.batch=\"many\"", "invalid type"),
        // Presets and rows.
        case(
            &["train", "--config", &preset, "--out", &fresh],
            "is a preset",
        ),
        case(
            &[
                "train",
                "--config",
                &cfg,
                "--row",
                "pis-lv-gmm9",
                "--out",
                &fresh,
            ],
            "--row needs a preset",
        ),
        case(
            &[
                "train", "--config", &preset, "--row", "pis-lv", "--out", &fresh,
            ],
            "<method>-<loss>-<target>",
        ),
        case(&["config", "show", "pis-lv-nowhere"], "nowhere"),
        case(
            &["config", "show", "pis-lv-gmm9", "--preset", "nope"],
            "nope",
        ),
        // Config files and run folders.
        case(
            &["train", "--config", &f.p("missing.toml"), "--out", &fresh],
            "missing.toml",
        ),
        case(
            &["train", "--config", &f.p("bad.toml"), "--out", &fresh],
            "invalid TOML",
        ),
        case(
            &["train", "--quiet", "--config", &cfg, "--out", &run],
            "already holds a run",
        ),
        case(
            &["train", "--quiet", "--resume", &f.p("no_ckpt")],
            "no checkpoint",
        ),
        case(
            &["train", "--quiet", "--resume", &f.p("nowhere")],
            "nowhere",
        ),
        case(&["eval", &f.p("torn")], "corrupt or not safetensors"),
        case(&["eval", &f.p("garbage")], "corrupt or not safetensors"),
        case(&["eval", &f.p("foreign")], "shape"),
        case(&["eval", &f.p("nowhere")], "not a run folder"),
        case(&["eval", &run, "--set", "eval.n=0"], "eval.n"),
        case(&["eval", &run, "--set", "eval.chunk=-3"], "eval.chunk"),
        // Sampling.
        case(&["sample", &run, "-n", "0", "--out", &f.p("s.npy")], "-n"),
        case(
            &[
                "sample",
                &run,
                "-n",
                "100000000000000",
                "--out",
                &f.p("s.npy"),
            ],
            "-n",
        ),
        case(&["sample", &run, "-n", "-4", "--out", &f.p("s.npy")], "-4"),
        case(
            &["sample", &f.p("nowhere"), "-n", "5", "--out", &f.p("s.npy")],
            "not a run folder",
        ),
        case(
            &[
                "sample",
                &run,
                "-n",
                "5",
                "--out",
                &f.p("no/such/dir/s.npy"),
            ],
            "s.npy",
        ),
        case(
            &["sample", &f.p("torn"), "-n", "5", "--out", &f.p("s.npy")],
            "corrupt or not safetensors",
        ),
        // Sample files for `lv metrics`.
        metrics("empty.npy", "good.npy", "empty"),
        metrics("truncated.npy", "good.npy", "truncated.npy"),
        metrics("header_only.npy", "good.npy", "header_only.npy"),
        metrics("int.npy", "good.npy", "dtype"),
        metrics("one_d.npy", "good.npy", "2-D"),
        metrics("nan.npy", "good.npy", "non-finite"),
        metrics("zero_rows.npy", "good.npy", "no samples"),
        metrics("text.npy", "good.npy", "text.npy"),
        metrics("good.npy", "good3.npy", "dimension"),
        metrics("missing.npy", "good.npy", "missing.npy"),
        metrics("bad.csv", "good.npy", "bad.csv"),
        metrics("ragged.csv", "good.npy", "ragged.csv"),
        // Global flags.
        case(&["--threads", "100000", "targets"], "--threads"),
        case(&["--threads", "-1", "targets"], "-1"),
        case(&["--device", "tpu", "doctor"], "tpu"),
        case(&["--seed", "nan", "targets"], "nan"),
        case(&["train", "--quiet"], "--config"),
    ];
    v.push(case(&["bogus-command"], "bogus-command"));
    v
}

#[test]
fn bad_input_table() {
    let f = setup();
    let before = std::fs::read(f.run.join("checkpoint.safetensors")).unwrap();
    let results_before = std::fs::read(f.run.join("results.json")).unwrap();
    let table = cases(&f);
    assert!(table.len() >= 40, "only {} cases", table.len());
    let mut failures = Vec::new();
    let mut report = String::new();
    for c in &table {
        let out = lv().args(&c.args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        let line = err
            .lines()
            .find(|l| l.starts_with("error"))
            .unwrap_or("")
            .to_string();
        let code = out.status.code();
        let ok_code = matches!(code, Some(1) | Some(2));
        // Our own errors (exit 1) are exactly one line; clap's usage errors (exit 2) add a
        // usage block, which may hold the name (a missing required argument).
        let one_line = code != Some(1) || err.trim().lines().count() == 1;
        let named = if code == Some(2) {
            err.contains(c.expect)
        } else {
            line.contains(c.expect)
        };
        report += &format!("{:?} -> {:?}: {line}\n", c.args, code);
        if !(ok_code && one_line && named) {
            failures.push(format!(
                "lv {}: exit {code:?}, expected `{}` in the error line; stderr:\n{err}",
                c.args.join(" "),
                c.expect
            ));
        }
    }
    eprintln!("{report}");
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
    // Nothing already written was lost or changed.
    assert_eq!(
        std::fs::read(f.run.join("checkpoint.safetensors")).unwrap(),
        before
    );
    assert_eq!(
        std::fs::read(f.run.join("results.json")).unwrap(),
        results_before
    );
    assert!(!f.dir.join("fresh").join("checkpoint.safetensors").exists());
    let _ = std::fs::remove_dir_all(&f.dir);
}
