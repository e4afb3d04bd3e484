//! Run configuration: TOML plus `--set key=value` overrides, parsed strictly (unknown keys
//! and wrong types are errors naming the key) and validated once, before any training.

use crate::run::Protocol;
use anyhow::{bail, Context, Result};
use lv_core::loss::{LossKind, LossName};
use lv_core::method::{Method, MethodKind};
use lv_core::train::TrainSettings;
use lv_nets::ctrl::{ControlKind, CtrlConfig};
use lv_nets::ema::EmaConfig;
use lv_nets::DeviceChoice;
use serde::{Deserialize, Serialize};
use std::path::Path;

mod anneal;

pub use anneal::{AnnealConfig, AnnealParts, DiffusionKind, McmcSetting, ResampleSetting};

/// A training run: a full config file, or a row of a preset resolved by [`crate::preset`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Registry name of the target (`lv targets`).
    pub target: String,
    /// `pis`, `dis`, `dds`, `dds_exp`, `bridge`, `ou_dds`, or the annealed `cmcd`, `scld`.
    pub method: MethodKind,
    /// `kl`, `kl_ito`, `lv`, `lv_traj`, `moment` (or `tb`).
    pub loss: LossName,
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
    /// Control parametrisation ([`ControlKind`]): `default` (the method's own: score for
    /// PIS/DDS, lerp for DIS, lerp-target/lerp-prior for the bridge), `potential` (DIS:
    /// u = σ∇ₓclip(Φ), needed by sub-trajectory training) or `clipped` (score-free:
    /// u = clip(NN)). Absent means `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlKind>,
    /// Optional check: the state dimension the network is built for (must equal the target's).
    #[serde(default)]
    pub dim: Option<usize>,
    #[serde(default)]
    pub sde: SdeConfig,
    /// The annealed samplers' settings (`cmcd`, `scld` only; absent = the defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anneal: Option<AnnealConfig>,
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
    /// `ou_dds` only: the prior std σ₀ (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_std: Option<f64>,
    /// `ou_dds` only: the total noise Σa_n of the step scheme (default 6, as RSMC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_scale: Option<f64>,
    /// `pis` only: the diffusion σ of the Brownian reference dX = σ dW (default √0.2, the
    /// paper's; Sendera et al.: σ² = 5 for 25GMM, 1 for ManyWell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigma: Option<f64>,
    /// `pis` only: the horizon T (default 5, the paper's; Sendera et al.: 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t_end: Option<f64>,
}

impl Default for SdeConfig {
    fn default() -> Self {
        Self {
            steps: 200,
            prior_std: None,
            noise_scale: None,
            sigma: None,
            t_end: None,
        }
    }
}

impl SdeConfig {
    /// The method of `kind` on these settings; errors name the key.
    pub fn method(&self, kind: MethodKind) -> Result<Method> {
        let only = |key: &str, v: Option<f64>, for_kind: MethodKind| -> Result<()> {
            if v.is_some() && kind != for_kind {
                bail!("key `sde.{key}` applies to method `{for_kind}` only (method is `{kind}`)");
            }
            Ok(())
        };
        only("prior_std", self.prior_std, MethodKind::OuDds)?;
        only("noise_scale", self.noise_scale, MethodKind::OuDds)?;
        only("sigma", self.sigma, MethodKind::Pis)?;
        only("t_end", self.t_end, MethodKind::Pis)?;
        match kind {
            MethodKind::OuDds => {}
            MethodKind::Pis if self.sigma.is_some() || self.t_end.is_some() => {
                let sigma = self.sigma.unwrap_or(0.2f64.sqrt());
                let t_end = self.t_end.unwrap_or(5.0);
                lv_core::check::positive("sde.sigma", sigma)?;
                lv_core::check::positive("sde.t_end", t_end)?;
                return Method::pis_with(sigma, t_end, self.steps);
            }
            _ => return Method::from_kind(kind, self.steps),
        }
        let sigma0 = self.prior_std.unwrap_or(1.0);
        let noise_scale = self.noise_scale.unwrap_or(6.0);
        lv_core::check::positive("sde.prior_std", sigma0)?;
        lv_core::check::positive("sde.noise_scale", noise_scale)?;
        Method::ou_dds(self.steps, sigma0, noise_scale)
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
    /// Which evaluation protocol the sample metrics follow ([`Protocol`]): the LV paper's
    /// (`fresh`, default) or the later benchmarks' (`fixed_reference`: `n_metrics` samples
    /// against a fixed reference set at every evaluation, last value, mean of the last 5
    /// and the noise floor).
    #[serde(skip_serializing_if = "is_fresh")]
    pub protocol: Protocol,
}

fn is_fresh(p: &Protocol) -> bool {
    *p == Protocol::Fresh
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
            protocol: Protocol::Fresh,
        }
    }
}

impl EvalConfig {
    /// Checks the sizes; errors name the key as `{prefix}n` etc.
    pub fn check(&self, prefix: &str) -> Result<()> {
        use lv_core::check::{count, MAX_COUNT};
        count(&format!("{prefix}n"), self.n, 1, MAX_COUNT)?;
        count(&format!("{prefix}chunk"), self.chunk, 1, MAX_COUNT)?;
        count(&format!("{prefix}every"), self.every, 0, MAX_COUNT)?;
        count(&format!("{prefix}n_during"), self.n_during, 1, MAX_COUNT)?;
        count(&format!("{prefix}n_metrics"), self.n_metrics, 2, MAX_COUNT)?;
        count(
            &format!("{prefix}n_sinkhorn_sde"),
            self.n_sinkhorn_sde,
            2,
            MAX_COUNT,
        )?;
        Ok(())
    }
}

/// Most Euler steps of a grid (`sde.steps`).
pub const MAX_SDE_STEPS: usize = 1_000_000;
/// Most libtorch threads (`threads`, `--threads`).
pub const MAX_THREADS: usize = 1024;

/// Where and how a run computes, resolved once from its config (after the command-line flags
/// were applied to it): the device (`auto` decided, `cuda` checked), libtorch's intra-op
/// threads and the seed. Everything that runs receives this value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Runtime {
    pub device: tch::Device,
    pub threads: usize,
    pub seed: u64,
}

impl Runtime {
    /// Sets libtorch's threads of this process (the seed is applied per step by the driver).
    pub fn install(&self) {
        lv_nets::set_threads(self.threads);
    }
}

/// A validated configuration: parsed names and checked numbers.
pub struct Resolved {
    pub cfg: RunConfig,
    pub method: MethodKind,
    pub loss: LossKind,
    /// The control parametrisation (`control`, absent = [`ControlKind::Default`]).
    pub control: ControlKind,
    /// The annealed sampler of `cmcd` / `scld` runs.
    pub anneal: Option<AnnealParts>,
    /// Device, threads and seed.
    pub runtime: Runtime,
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
        let mut value = toml::Value::Table(parse_toml(text)?);
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        deserialize_config(value)
    }

    /// Checks names and numbers; errors name the key or value.
    pub fn validate(self) -> Result<Resolved> {
        let method = self.method;
        let loss = self.loss.with_k(self.lv_traj_k).context("key `loss`")?;
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
        use lv_core::check::{count, MAX_COUNT};
        self.train.check("train.")?;
        self.model.check("model.")?;
        self.ema.check("ema.")?;
        self.eval.check("eval.")?;
        count("sde.steps", self.sde.steps, 1, MAX_SDE_STEPS)?;
        if self.eval.protocol == Protocol::FixedReference
            && self.eval.every > 0
            && self.eval.n_during < self.eval.n_metrics
        {
            bail!(
                "key `eval.n_during` ({}) must be at least `eval.n_metrics` ({}) with \
                 eval.protocol = \"fixed_reference\" (every evaluation computes the metrics)",
                self.eval.n_during,
                self.eval.n_metrics
            );
        }
        let anneal = if method.is_annealed() {
            let parts = self.anneal.clone().unwrap_or_default().resolve(
                method,
                self.sde.steps,
                &self.train,
            )?;
            if !matches!(
                loss,
                LossKind::Kl | LossKind::Lv | LossKind::LvBiased | LossKind::VarGrad
            ) {
                bail!(
                    "key `loss`: `{}` is not available for `{method}`: expected kl, lv, \
                     lv_biased, vargrad",
                    loss.name()
                );
            }
            if loss == LossKind::Kl && method != MethodKind::Cmcd {
                bail!(
                    "key `loss`: kl is wired for cmcd (one piece, no resampling), not `{method}`"
                );
            }
            if target.zero_com().is_some() {
                bail!(
                    "key `method`: target `{}` keeps states in the zero-centre-of-mass subspace, \
                     which `{method}` does not support",
                    self.target
                );
            }
            for (key, set) in [
                ("sde.prior_std", self.sde.prior_std.is_some()),
                ("sde.noise_scale", self.sde.noise_scale.is_some()),
                ("sde.sigma", self.sde.sigma.is_some()),
                ("sde.t_end", self.sde.t_end.is_some()),
                ("train.subtraj", self.train.subtraj.is_some()),
                // Batch sharding is wired for the diffusion trainer only.
                ("train.batch_shards", self.train.batch_shards > 1),
            ] {
                if set {
                    bail!("key `{key}` does not apply to `{method}` (see `[anneal]`)");
                }
            }
            Some(parts)
        } else {
            if self.anneal.is_some() {
                bail!("key `anneal` applies to the annealed methods cmcd and scld only (method is `{method}`)");
            }
            self.sde.method(self.method)?;
            None
        };
        count("lv_traj_k", self.lv_traj_k, 1, MAX_COUNT)?;
        count("threads", self.threads, 0, MAX_THREADS)?;
        count("checkpoint_every", self.checkpoint_every, 1, MAX_COUNT)?;
        count("log_every", self.log_every, 1, MAX_COUNT)?;
        let t = &self.train;
        if let LossKind::LvTraj { k } = loss {
            if !t.batch.is_multiple_of(k) {
                bail!(
                    "key `train.batch` ({}) must be a multiple of `lv_traj_k` ({k})",
                    t.batch
                );
            }
            if t.initial_repeats != 1 && t.initial_repeats != k {
                bail!(
                    "key `train.initial_repeats` ({}) conflicts with `lv_traj_k` ({k}): for `lv_traj` the K of the loss sets the repeats",
                    t.initial_repeats
                );
            }
        }
        let (d, m) = (target.dim(), &self.model.mlp);
        let (width, layers, freqs) = (m.width as usize, m.num_layers, m.num_freqs as usize);
        let rows = (t.batch / t.initial_repeats.max(1)).max(1) * t.initial_repeats.max(1);
        if self.device == DeviceChoice::Cpu {
            let per_row = crate::memory::train_bytes_per_row(d, width, layers, freqs);
            crate::memory::ensure_fits(
                &format!(
                    "training (batch {} × {} steps, d = {d}, width {width})",
                    t.batch, self.sde.steps
                ),
                crate::memory::train_bytes(rows, self.sde.steps, per_row),
                "lower `train.batch` or `sde.steps`",
            )?;
        }
        let e = &self.eval;
        crate::memory::ensure_fits(
            &format!(
                "evaluation (eval.n = {}, eval.chunk = {}, eval.n_metrics = {})",
                e.n, e.chunk, e.n_metrics
            ),
            crate::memory::eval_bytes(e.n, e.chunk, d, width, e.n_metrics, e.n_sinkhorn_sde),
            "lower `eval.n`, `eval.chunk` or `eval.n_metrics`",
        )?;
        if t.explore_scale > 1.0 && !loss.detached() {
            bail!(
                "key `train.explore_scale`: off-policy exploration is valid for the LV family only, not for `{}`",
                loss.name()
            );
        }
        let control = self.control.unwrap_or_default();
        if control == ControlKind::Potential && method != MethodKind::Dis {
            bail!("key `control`: `potential` is wired for `dis` only (got `{method}`)");
        }
        if self.train.subtraj.is_some() {
            if control != ControlKind::Potential || loss != LossKind::Lv {
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
        let runtime = Runtime {
            device: lv_nets::select_device(self.device).context("key `device`")?,
            threads: self.threads,
            seed: self.seed,
        };
        Ok(Resolved {
            cfg: self,
            method,
            loss,
            control,
            anneal,
            runtime,
        })
    }
}

/// Parses TOML text; the error is one line (the message and where, without toml's multi-line
/// source snippet).
pub fn parse_toml(text: &str) -> Result<toml::Table> {
    toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| line_col(text, s.start))
            .map_or(String::new(), |(l, c)| format!(" at line {l}, column {c}"));
        anyhow::anyhow!("invalid TOML{at}: {}", e.message().trim())
    })
}

/// Deserialises a TOML tree strictly into a [`RunConfig`]; a type error names its key.
pub fn deserialize_config(value: toml::Value) -> Result<RunConfig> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.into_inner().message().trim().replace('\n', " ");
        if path.is_empty() || path == "." {
            anyhow::anyhow!("invalid configuration: {msg}")
        } else {
            anyhow::anyhow!("invalid configuration: key `{path}`: {msg}")
        }
    })
}

/// 1-based line and column of byte offset `at` in `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let mut end = at.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Applies one `a.b.c=value` override to a TOML tree.
pub fn apply_override(root: &mut toml::Value, spec: &str) -> Result<()> {
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
        // Names fail at parse time (typed fields), numbers and combinations at validation.
        let bad = |o: &str| match RunConfig::parse(BASE, &[o.into()]) {
            Err(e) => format!("{e:#}"),
            Ok(c) => format!("{:#}", c.validate().err().expect("invalid")),
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
        assert!(bad("control=\"lerp\"").contains("unknown variant `lerp`"));
        let tb = RunConfig::parse(BASE, &["loss=\"tb\"".into()]).unwrap();
        assert_eq!(tb.validate().unwrap().loss, LossKind::Moment);
        let c =
            RunConfig::parse(BASE, &["loss=kl".into(), "train.explore_scale=2.0".into()]).unwrap();
        assert!(format!("{:#}", c.validate().err().unwrap()).contains("explore_scale"));
    }
}
