//! Building a run from a validated config: method, target, controls and their VarStore.

use crate::config::{AnnealParts, Resolved};
use anyhow::{bail, Result};
use lv_core::anneal::{BetaKind, Betas};
use lv_core::method::{Method, MethodKind};
use lv_core::sim::Controls;
use lv_core::{Control, Target};
use lv_nets::ctrl::{
    ClippedCtrl, ControlKind, LerpCtrl, LerpPriorCtrl, LerpTargetCtrl, PotentialCtrl, ScoreCtrl,
};
use std::rc::Rc;
use tch::{nn::VarStore, Device};

/// The sampler of a run: a diffusion method, or an annealed sampler with its β schedule
/// (a learnt β's θ is the VarStore variable `anneal_beta_logits`, so checkpoints and the EMA
/// carry it).
pub enum Sampler {
    Diffusion(Method),
    Annealed { parts: AnnealParts, betas: Betas },
}

/// Everything a run needs, built from a [`Resolved`] config.
pub struct Built {
    pub vs: VarStore,
    pub sampler: Sampler,
    pub target: Box<dyn Target>,
    pub u: Box<dyn Control>,
    pub v: Option<Box<dyn Control>>,
    /// The potential Φ of `u` when `control = "potential"` (sub-trajectory training).
    pub potential: Option<Rc<PotentialCtrl>>,
    pub device: Device,
}

impl Built {
    /// The diffusion method; an error naming the command's limit for annealed runs.
    pub fn method(&self) -> Result<&Method> {
        match &self.sampler {
            Sampler::Diffusion(m) => Ok(m),
            Sampler::Annealed { .. } => bail!(
                "this command supports the diffusion methods only, not the annealed cmcd/scld"
            ),
        }
    }
}

/// Builds method, target and controls.
pub fn build(res: &Resolved) -> Result<Built> {
    let cfg = &res.cfg;
    let device = res.runtime.device;
    let target = lv_targets::by_name(&cfg.target)?;
    let vs = VarStore::new(device);
    let d = target.dim() as i64;
    if let Some(parts) = res.anneal.clone() {
        let root = vs.root();
        let betas = match parts.beta {
            BetaKind::Learnt => Betas::learnt_with(root.var(
                "anneal_beta_logits",
                &[parts.sampler.steps as i64],
                tch::nn::Init::Const(1.0),
            ))?,
            kind => Betas::new(kind, parts.sampler.steps, device)?,
        };
        let u: Box<dyn Control> = match res.control {
            ControlKind::Clipped => Box::new(ClippedCtrl::new(&(&root / "u"), d, &cfg.model)?),
            _ => Box::new(ScoreCtrl::new(&(&root / "u"), d, &cfg.model)?),
        };
        return Ok(Built {
            vs,
            sampler: Sampler::Annealed { parts, betas },
            target,
            u,
            v: None,
            potential: None,
            device,
        });
    }
    let method = cfg.sde.method(res.method)?;
    let sde = method.sde;
    let t_end = method.grid.t_end();
    let sigma = move || -> lv_nets::ctrl::SigmaFn { std::sync::Arc::new(move |t| sde.sigma(t)) };
    let root = vs.root();
    let mut potential = None;
    let (u, v): (Box<dyn Control>, Option<Box<dyn Control>>) = match (res.method, res.control) {
        (MethodKind::Dis, ControlKind::Potential) => {
            let p = Rc::new(PotentialCtrl::new(&(&root / "u"), d, &cfg.model, sigma())?);
            potential = Some(p.clone());
            (Box::new(p), None)
        }
        (MethodKind::Bridge, _) => (
            Box::new(LerpTargetCtrl::new(
                &(&root / "u"),
                d,
                &cfg.model,
                sigma(),
                t_end,
            )?),
            Some(Box::new(LerpPriorCtrl::new(
                &(&root / "v"),
                d,
                &cfg.model,
                sigma(),
                t_end,
                1.0,
            )?)),
        ),
        (_, ControlKind::Clipped) => (
            Box::new(ClippedCtrl::new(&(&root / "u"), d, &cfg.model)?),
            None,
        ),
        _ => match res.method {
            MethodKind::Pis | MethodKind::Dds | MethodKind::DdsExp | MethodKind::OuDds => (
                Box::new(ScoreCtrl::new(&(&root / "u"), d, &cfg.model)?),
                None,
            ),
            MethodKind::Dis => (
                Box::new(LerpCtrl::new(
                    &(&root / "u"),
                    d,
                    &cfg.model,
                    sigma(),
                    t_end,
                    1.0,
                )?),
                None,
            ),
            MethodKind::Bridge => unreachable!("the bridge is matched above"),
            MethodKind::Cmcd | MethodKind::Scld => unreachable!("annealed runs return above"),
        },
    };
    Ok(Built {
        vs,
        sampler: Sampler::Diffusion(method),
        target,
        u,
        v,
        potential,
        device,
    })
}

pub(crate) fn controls_of(b: &Built) -> Controls<'_> {
    match &b.v {
        Some(v) => Controls::with_v(b.u.as_ref(), v.as_ref()),
        None => Controls::new(b.u.as_ref()),
    }
}

/// The trainer of an annealed run (training, and the rollouts of `lv eval` and `lv sample`).
pub(crate) fn annealed_trainer<'a>(
    b: &'a Built,
    parts: &'a AnnealParts,
    betas: &'a Betas,
    loss: lv_core::loss::LossKind,
) -> Result<lv_core::anneal::AnnealedTrainer<'a>> {
    lv_core::anneal::AnnealedTrainer::new(
        &parts.sampler,
        betas,
        b.target.as_ref(),
        b.u.as_ref(),
        loss,
        parts.settings.clone(),
        b.device,
    )
}
