//! Path-space losses on a batch of log-RNDs R (spec §2, §3.6).
//!
//! The losses of the LV paper are multiplied by 1/d; the later papers' LV variants
//! (`lv_biased` of RSMC, `vargrad` of Sendera et al.) are not, as in their code. Samples whose
//! R is non-finite or ≥ `max_rnd` are filtered (masked out, no host synchronisation) and
//! counted by the caller.

use crate::sim::{kept_mask, Mode};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The name of a loss as a config writes it (`loss = "lv_traj"`); [`LossName::with_k`] adds
/// the K of `lv_traj` to make a [`LossKind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossName {
    Kl,
    KlIto,
    Lv,
    LvTraj,
    /// Also accepted as `tb` (trajectory balance).
    #[serde(alias = "tb")]
    Moment,
    LvBiased,
    #[serde(rename = "vargrad")]
    VarGrad,
}

impl LossName {
    /// The loss, with K trajectories per initial point for `lv_traj` (K ≥ 2; ignored by the
    /// others).
    pub fn with_k(self, k: usize) -> Result<LossKind> {
        Ok(match self {
            Self::Kl => LossKind::Kl,
            Self::KlIto => LossKind::KlIto,
            Self::Lv => LossKind::Lv,
            Self::LvTraj => {
                if k < 2 {
                    bail!("loss `lv_traj` needs K ≥ 2 trajectories per initial point (got {k})");
                }
                LossKind::LvTraj { k }
            }
            Self::Moment => LossKind::Moment,
            Self::LvBiased => LossKind::LvBiased,
            Self::VarGrad => LossKind::VarGrad,
        })
    }

    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kl => "kl",
            Self::KlIto => "kl_ito",
            Self::Lv => "lv",
            Self::LvTraj => "lv_traj",
            Self::Moment => "moment",
            Self::LvBiased => "lv_biased",
            Self::VarGrad => "vargrad",
        }
    }
}

impl std::fmt::Display for LossName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A path-space loss.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LossKind {
    /// Reverse KL: mean of R over kept samples, Itô term dropped, gradient through X.
    Kl,
    /// Reverse KL with the Itô term kept in the sample mean.
    KlIto,
    /// Log-variance: unbiased (n − 1) variance of R over kept samples, trajectories driven by
    /// the detached control (no backpropagation through the solver).
    Lv,
    /// LV per initial point: B initial points × K trajectories each; the mean over the B
    /// groups of the unbiased variance over their K trajectories (K > 1).
    LvTraj { k: usize },
    /// Moment / trajectory balance: mean of (R + c)² with a learned scalar c ≈ log Z.
    Moment,
    /// RSMC's LV baseline (`loss_type = lv` of nolerk/gfn-smc-jax): mean_i (R_i − R̄)² over
    /// the kept samples, the **biased** variance (divisor n), no learned log Z, not scaled
    /// by 1/d.
    LvBiased,
    /// Sendera et al.'s VarGrad (`tb-avg`): ½·mean_i (R_i − R̄)² over the kept samples
    /// (divisor n), not scaled by 1/d.
    #[serde(rename = "vargrad")]
    VarGrad,
}

impl LossKind {
    /// Parses `kl`, `kl_ito`, `lv`, `lv_traj` (needs `k`), `moment` (alias `tb`),
    /// `lv_biased`, `vargrad`.
    pub fn parse(name: &str, k: usize) -> Result<Self> {
        let name = match name {
            "kl" => LossName::Kl,
            "kl_ito" => LossName::KlIto,
            "lv" => LossName::Lv,
            "lv_traj" => LossName::LvTraj,
            "moment" | "tb" => LossName::Moment,
            "lv_biased" => LossName::LvBiased,
            "vargrad" => LossName::VarGrad,
            other => bail!(
                "unknown loss `{other}`: expected kl, kl_ito, lv, lv_traj, moment, lv_biased, \
                 vargrad"
            ),
        };
        name.with_k(k)
    }

    /// Short name used in configs and tables.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Kl => "kl",
            Self::KlIto => "kl_ito",
            Self::Lv => "lv",
            Self::LvTraj { .. } => "lv_traj",
            Self::Moment => "moment",
            Self::LvBiased => "lv_biased",
            Self::VarGrad => "vargrad",
        }
    }

    /// The simulation mode of the training trajectories.
    pub fn mode(&self) -> Mode {
        match self {
            Self::Kl => Mode::Kl,
            Self::KlIto => Mode::KlIto,
            Self::Lv | Self::LvTraj { .. } | Self::Moment | Self::LvBiased | Self::VarGrad => {
                Mode::Lv
            }
        }
    }

    /// Whether the trajectories are detached (LV family), so the batched replay applies.
    pub fn detached(&self) -> bool {
        self.mode() == Mode::Lv
    }
}

/// The loss of a batch.
pub struct LossValue {
    /// Scalar loss (× 1/d for the LV paper's losses).
    pub loss: Tensor,
    /// Number of kept samples (a float scalar on the device, read only when logging).
    pub kept: Tensor,
}

/// Computes the loss from R `[n]` (spec §2, §3.6). `log_z` is the learned c of the moment
/// loss. For `LvTraj`, R is laid out as B consecutive groups of K.
pub fn batch_loss(
    kind: LossKind,
    rnd: &Tensor,
    max_rnd: Option<f64>,
    dim: usize,
    log_z: Option<&Tensor>,
) -> LossValue {
    let mask = kept_mask(rnd, max_rnd);
    let kept = mask.sum(Kind::Float);
    let r0 = rnd.where_self(&mask.to_kind(Kind::Bool), &rnd.zeros_like());
    let per_dim = 1.0 / dim as f64;
    let loss = match kind {
        LossKind::Kl | LossKind::KlIto => (&r0 * &mask).sum(Kind::Float) / &kept * per_dim,
        LossKind::Lv => masked_var(&r0, &mask, None) * per_dim,
        LossKind::LvTraj { k } => masked_var(&r0, &mask, Some(k as i64)) * per_dim,
        LossKind::Moment => {
            let c = log_z.expect("the moment loss needs a learned log Z parameter");
            ((&r0 + c).square() * &mask).sum(Kind::Float) / &kept * per_dim
        }
        LossKind::LvBiased => masked_biased_var(&r0, &mask),
        LossKind::VarGrad => masked_biased_var(&r0, &mask) * 0.5,
    };
    LossValue { loss, kept }
}

/// Biased (divisor n) variance over the masked entries: mean_i (R_i − R̄)².
fn masked_biased_var(r0: &Tensor, mask: &Tensor) -> Tensor {
    let n = mask.sum(Kind::Float);
    let mean = (r0 * mask).sum(Kind::Float) / &n;
    ((r0 - mean).square() * mask).sum(Kind::Float) / n
}

/// Unbiased (n − 1) variance over the masked entries; with `groups = Some(K)`, the mean over
/// consecutive groups of K of the per-group unbiased variance (groups with < 2 kept samples
/// are left out).
fn masked_var(r0: &Tensor, mask: &Tensor, groups: Option<i64>) -> Tensor {
    match groups {
        None => {
            let n = mask.sum(Kind::Float);
            let mean = (r0 * mask).sum(Kind::Float) / &n;
            ((r0 - mean).square() * mask).sum(Kind::Float) / (n - 1.0)
        }
        Some(k) => {
            let r = r0.reshape([-1, k]);
            let m = mask.reshape([-1, k]);
            let n = m.sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
            let mean = (&r * &m).sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
                / n.unsqueeze(1).clamp_min(1.0);
            let ss =
                ((&r - mean).square() * &m).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
            let valid = n.ge(2.0).to_kind(Kind::Float);
            let var = ss / (&n - 1.0).clamp_min(1.0);
            (var * &valid).sum(Kind::Float) / valid.sum(Kind::Float)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    #[test]
    fn lv_is_the_unbiased_variance_over_kept_samples() {
        let r = t(&[1.0, 2.0, f32::NAN, 4.0, 1e9]);
        let out = batch_loss(LossKind::Lv, &r, Some(1e8), 2, None);
        // kept: 1, 2, 4 → mean 7/3, unbiased var = ((4/3)² + (1/3)² + (5/3)²)/2 = 7/3.
        assert!((out.loss.double_value(&[]) - 7.0 / 3.0 / 2.0).abs() < 1e-6);
        assert_eq!(out.kept.double_value(&[]), 3.0);
    }

    #[test]
    fn kl_is_the_mean() {
        let r = t(&[1.0, 3.0, f32::INFINITY]);
        let out = batch_loss(LossKind::Kl, &r, None, 1, None);
        assert!((out.loss.double_value(&[]) - 2.0).abs() < 1e-6);
    }

    #[test]
    fn lv_traj_averages_group_variances() {
        let r = t(&[0.0, 2.0, 10.0, 10.0, 1.0, 1.0]);
        let out = batch_loss(LossKind::LvTraj { k: 2 }, &r, None, 1, None);
        // groups (0,2): var 2; (10,10): 0; (1,1): 0 → mean 2/3.
        assert!((out.loss.double_value(&[]) - 2.0 / 3.0).abs() < 1e-6);
        // A constant shift per group cancels.
        let r2 = t(&[5.0, 7.0, -3.0, -3.0, 0.0, 0.0]);
        let out2 = batch_loss(LossKind::LvTraj { k: 2 }, &r2, None, 1, None);
        assert!((out2.loss.double_value(&[]) - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn moment_loss_at_the_optimal_c_equals_biased_variance() {
        let r = t(&[1.0, 2.0, 3.0]);
        let c = Tensor::from(-2.0f32);
        let out = batch_loss(LossKind::Moment, &r, None, 1, Some(&c));
        assert!((out.loss.double_value(&[]) - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn lv_biased_and_vargrad_are_the_biased_variance_unscaled() {
        let r = t(&[1.0, 2.0, f32::NAN, 4.0, 1e9]);
        // kept: 1, 2, 4 → mean 7/3; Σ(r − mean)² = 16/9 + 1/9 + 25/9 = 42/9; /3 = 14/9.
        let lv = batch_loss(LossKind::LvBiased, &r, Some(1e8), 5, None);
        assert!((lv.loss.double_value(&[]) - 14.0 / 9.0).abs() < 1e-6);
        assert_eq!(lv.kept.double_value(&[]), 3.0);
        let vg = batch_loss(LossKind::VarGrad, &r, Some(1e8), 5, None);
        assert!((vg.loss.double_value(&[]) - 7.0 / 9.0).abs() < 1e-6);
        // The RSMC variance equals (n − 1)/n times the unbiased one (and lacks the 1/d).
        let unbiased = batch_loss(LossKind::Lv, &r, Some(1e8), 1, None);
        let ratio = lv.loss.double_value(&[]) / unbiased.loss.double_value(&[]);
        assert!((ratio - 2.0 / 3.0).abs() < 1e-6);
        assert_eq!(LossKind::parse("vargrad", 0).unwrap(), LossKind::VarGrad);
        assert_eq!(LossKind::parse("lv_biased", 0).unwrap(), LossKind::LvBiased);
        assert_eq!(LossKind::LvBiased.mode(), Mode::Lv);
    }

    #[test]
    fn parse_names() {
        assert_eq!(LossKind::parse("lv", 0).unwrap(), LossKind::Lv);
        assert!(LossKind::parse("lv_traj", 1).is_err());
        assert!(LossKind::parse("elbo", 0)
            .unwrap_err()
            .to_string()
            .contains("unknown loss"));
    }
}
