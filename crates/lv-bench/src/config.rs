//! Run configuration: TOML plus `--set key=value` overrides, parsed strictly (unknown keys
//! and wrong types are errors naming the key) and validated once, before any training.

use anyhow::{bail, Context, Result};
use lv_core::loss::LossKind;
use lv_core::method::MethodKind;
use lv_core::train::TrainSettings;
use lv_nets::ctrl::CtrlConfig;
use lv_nets::ema::EmaConfig;
use lv_nets::DeviceChoice;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A training run, as written in `configs/<preset>/<method>-<loss>-<target>.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Registry name of the target (`lv targets`).
    pub target: String,
    /// `pis`, `dis`, `dds`, `dds_exp`, `bridge`.
    pub method: String,
    /// `kl`, `kl_ito`, `lv`, `lv_traj`, `moment`.
    pub loss: String,
    /// K of `lv_traj` (trajectories per initial point).
    #[serde(default = "default_k")]
    pub lv_traj_k: usize,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub device: DeviceChoice,
    /// libtorch intra-op threads (0 = libtorch's default).
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Control parametrisation: the method's default (`score` for PIS/DDS, `lerp` for DIS,
    /// lerp-target/lerp-prior for the bridge), or `potential` (DIS: u = σ∇ₓclip(Φ), needed by
    /// sub-trajectory training), or `clipped` (score-free: u = clip(NN)).
    #[serde(default)]
    pub control: Option<String>,
    /// Optional check: the state dimension the network is built for (must equal the target's).
    #[serde(default)]
    pub dim: Option<usize>,
    #[serde(default)]
    pub sde: SdeConfig,
    #[serde(default)]
    pub train: TrainSettings,
    #[serde(default)]
    pub model: CtrlConfig,
    #[serde(default)]
    pub ema: EmaConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    /// Save a checkpoint every this many steps (and at the end).
    #[serde(default = "default_ckpt")]
    pub checkpoint_every: usize,
    /// Write a metrics line every this many steps.
    #[serde(default = "default_log")]
    pub log_every: usize,
}

fn default_k() -> usize {
    16
}
fn default_seed() -> u64 {
    1
}
fn default_threads() -> usize {
    1
}
fn default_ckpt() -> usize {
    500
}
fn default_log() -> usize {
    50
}

/// The time grid.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SdeConfig {
    /// Number of Euler–Maruyama steps (ignored by `dds_exp`, whose cosine grid is fixed).
    pub steps: usize,
}

impl Default for SdeConfig {
    fn default() -> Self {
        Self { steps: 200 }
    }
}

/// Evaluation settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Trajectories of the final evaluation (paper: 100,000).
    pub n: usize,
    /// Trajectories per evaluation chunk (memory bound).
    pub chunk: usize,
    /// Evaluate every this many steps during training (0 = only at the end).
    pub every: usize,
    /// Trajectories of the intermediate evaluations.
    pub n_during: usize,
    /// Samples used for the sample metrics (W2, debiased Sinkhorn, MMD) against the reference.
    pub n_metrics: usize,
    /// Samples used for the sde_sampler Sinkhorn (paper: 100,000; slow on a CPU).
    pub n_sinkhorn_sde: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            n: 100_000,
            chunk: 10_000,
            every: 500,
            n_during: 2_000,
            n_metrics: 2_000,
            n_sinkhorn_sde: 2_000,
        }
    }
}

/// A validated configuration: parsed names and checked numbers.
pub struct Resolved {
    pub cfg: RunConfig,
    pub method: MethodKind,
    pub loss: LossKind,
}

impl RunConfig {
    /// Reads a TOML file, applies `key=value` overrides (dotted keys, TOML values; a value
    /// that does not parse as TOML is taken as a string), and deserialises strictly.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text, overrides).with_context(|| format!("config {}", path.display()))
    }

    /// [`RunConfig::load`] from text.
    pub fn parse(text: &str, overrides: &[String]) -> Result<Self> {
        let mut value: toml::Value = toml::from_str(text).context("invalid TOML")?;
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        let cfg: RunConfig = value
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{}", e.message()))
            .context("invalid configuration")?;
        Ok(cfg)
    }

    /// Checks names and numbers; errors name the key or value.
    pub fn validate(self) -> Result<Resolved> {
        let method: MethodKind = self.method.parse().context("key `method`")?;
        let loss = LossKind::parse(&self.loss, self.lv_traj_k).context("key `loss`")?;
        let target = lv_targets::by_name(&self.target).context("key `target`")?;
        if let Some(d) = self.dim {
            if d != target.dim() {
                bail!(
                    "key `dim`: the network is configured for dimension {d}, but target `{}` has dimension {}",
                    self.target,
                    target.dim()
                );
            }
        }
        let t = &self.train;
        if t.steps == 0 {
            bail!("key `train.steps` must be ≥ 1");
        }
        if t.batch < 2 {
            bail!("key `train.batch` must be ≥ 2 (got {})", t.batch);
        }
        if let LossKind::LvTraj { k } = loss {
            if t.batch % k != 0 {
                bail!(
                    "key `train.batch` ({}) must be a multiple of `lv_traj_k` ({k})",
                    t.batch
                );
            }
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            bail!("key `train.lr` must be a positive number (got {})", t.lr);
        }
        if t.explore_scale < 1.0 {
            bail!(
                "key `train.explore_scale` must be ≥ 1 (got {})",
                t.explore_scale
            );
        }
        if t.explore_scale > 1.0 && !loss.detached() {
            bail!(
                "key `train.explore_scale`: off-policy exploration is valid for the LV family only, not for `{}`",
                loss.name()
            );
        }
        if self.sde.steps == 0 {
            bail!("key `sde.steps` must be ≥ 1");
        }
        if self.model.clip_model <= 0.0 || self.model.clip_score <= 0.0 {
            bail!("keys `model.clip_model` and `model.clip_score` must be positive");
        }
        if self.eval.n == 0 || self.eval.chunk == 0 {
            bail!("keys `eval.n` and `eval.chunk` must be ≥ 1");
        }
        match self.control.as_deref() {
            None | Some("default") | Some("clipped") => {}
            Some("potential") => {
                if method != MethodKind::Dis {
                    bail!(
                        "key `control`: `potential` is wired for `dis` only (got `{}`)",
                        self.method
                    );
                }
            }
            Some(other) => {
                bail!("key `control`: unknown `{other}` (expected default, clipped, potential)")
            }
        }
        if self.train.subtraj.is_some() {
            if self.control.as_deref() != Some("potential") || loss != LossKind::Lv {
                bail!("key `train.subtraj` needs `control = \"potential\"`, `method = \"dis\"` and `loss = \"lv\"`");
            }
            let p = self.train.subtraj.as_ref().map(|s| s.prob).unwrap_or(0.0);
            if !(0.0..=1.0).contains(&p) {
                bail!("key `train.subtraj.prob` must be in [0, 1] (got {p})");
            }
        }
        if method == MethodKind::Bridge && loss == LossKind::Moment {
            bail!("the moment loss is not wired for the bridge in this version");
        }
        if method == MethodKind::Bridge && target.zero_com().is_some() {
            bail!(
                "key `method`: target `{}` keeps states in the zero-centre-of-mass subspace, \
                 which the bridge (inference control with a divergence term) does not support; \
                 use pis, dis or dds",
                self.target
            );
        }
        Ok(Resolved {
            cfg: self,
            method,
            loss,
        })
    }
}

/// Applies one `a.b.c=value` override to a TOML tree.
fn apply_override(root: &mut toml::Value, spec: &str) -> Result<()> {
    let (key, raw) = spec
        .split_once('=')
        .with_context(|| format!("--set `{spec}`: expected key=value"))?;
    let key = key.trim();
    if key.is_empty() {
        bail!("--set `{spec}`: empty key");
    }
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("parsed key"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = root;
    for p in &parts[..parts.len() - 1] {
        let table = cur
            .as_table_mut()
            .with_context(|| format!("--set `{key}`: `{p}` is not a table"))?;
        cur = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    cur.as_table_mut()
        .with_context(|| format!("--set `{key}`: parent is not a table"))?
        .insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        "target = \"gmm9\"\nmethod = \"pis\"\nloss = \"lv\"\n[train]\nsteps = 10\nbatch = 8\n";

    #[test]
    fn parses_and_overrides() {
        let c = RunConfig::parse(BASE, &["train.steps=20".into(), "sde.steps=50".into()]).unwrap();
        assert_eq!(c.train.steps, 20);
        assert_eq!(c.sde.steps, 50);
        let r = c.validate().unwrap();
        assert_eq!(r.loss, LossKind::Lv);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = RunConfig::parse(BASE, &["train.stepz=3".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("stepz"), "{e:#}");
        let e = RunConfig::parse(&format!("{BASE}bogus = 1\n"), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("bogus"), "{e:#}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = RunConfig::parse(BASE, &["train.batch=\"many\"".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("invalid type"), "{e:#}");
    }

    #[test]
    fn bad_values_fail_validation() {
        let bad = |o: &str| {
            let c = RunConfig::parse(BASE, &[o.into()]).unwrap();
            format!("{:#}", c.validate().err().expect("invalid"))
        };
        assert!(bad("target=nowhere").contains("nowhere"));
        assert!(bad("method=mcmc").contains("mcmc"));
        assert!(bad("loss=elbo").contains("elbo"));
        assert!(bad("dim=7").contains("dimension 7"));
        let c =
            RunConfig::parse(BASE, &["target=\"dw4\"".into(), "method=\"bridge\"".into()]).unwrap();
        let e = format!(
            "{:#}",
            c.validate().err().expect("bridge on dw4 is rejected")
        );
        assert!(
            e.contains("zero-centre-of-mass") && e.contains("dw4"),
            "{e}"
        );
        assert!(bad("train.batch=1").contains("train.batch"));
        let c =
            RunConfig::parse(BASE, &["loss=kl".into(), "train.explore_scale=2.0".into()]).unwrap();
        assert!(format!("{:#}", c.validate().err().unwrap()).contains("explore_scale"));
    }
}
