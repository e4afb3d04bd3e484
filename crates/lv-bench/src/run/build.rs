//! Building a run from a validated config: method, target, controls and their VarStore.

use crate::config::Resolved;
use anyhow::Result;
use lv_core::method::{Method, MethodKind};
use lv_core::sim::Controls;
use lv_core::{Control, Target};
use lv_nets::ctrl::{
    ClippedCtrl, ControlKind, LerpCtrl, LerpPriorCtrl, LerpTargetCtrl, PotentialCtrl, ScoreCtrl,
};
use std::rc::Rc;
use tch::{nn::VarStore, Device};

/// Everything a run needs, built from a [`Resolved`] config.
pub struct Built {
    pub vs: VarStore,
    pub method: Method,
    pub target: Box<dyn Target>,
    pub u: Box<dyn Control>,
    pub v: Option<Box<dyn Control>>,
    /// The potential Φ of `u` when `control = "potential"` (sub-trajectory training).
    pub potential: Option<Rc<PotentialCtrl>>,
    pub device: Device,
}

/// Builds method, target and controls.
pub fn build(res: &Resolved) -> Result<Built> {
    let cfg = &res.cfg;
    let device = res.runtime.device;
    let target = lv_targets::by_name(&cfg.target)?;
    let method = cfg.sde.method(res.method)?;
    let vs = VarStore::new(device);
    let d = target.dim() as i64;
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
        },
    };
    Ok(Built {
        vs,
        method,
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
