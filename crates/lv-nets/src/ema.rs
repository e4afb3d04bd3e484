//! Exponential moving average of the parameters (spec §7).
//!
//! Paper schedule ([`EmaSchedule::Warmup`], spec §7): the EMA is called once per successful
//! optimizer step. On call c (1-based) it acts only when c is a multiple of `every` (default
//! 5): calls 5, 10, …, so the last call of a run whose length is a multiple of `every` is an
//! update. If c ≤ `start` (default total_steps − 1500) the shadow becomes a plain copy of the
//! parameters; afterwards
//!   shadow ← decay·shadow + (1 − decay)·param, decay = min(cap, 1 − (1 + e)^(−power)),
//! with e = c − start − 1, power 0.9 and cap 0.9999. For a 60 000-step run the first average
//! is at c = 58 505 (e = 4) and the last at c = 60 000 (e = 1 499, decay ≈ 0.99861): in effect
//! an average over roughly the last 1 500 steps.
//!
//! [`EmaSchedule::Constant`] is a plain EMA with a fixed decay (shadow initialised to the
//! parameters at construction, then updated on the same `every` rule).
//!
//! The EMA holds shallow handles of the live parameters (sharing storage with the
//! `VarStore`) and detached shadow copies; [`Ema::swap`] exchanges the two in place, so
//! evaluation can run with the EMA weights and the training weights are restored by a second
//! swap ([`Ema::with_shadow`] does both).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::Tensor;

/// Settings of the EMA (defaults: the paper's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmaConfig {
    /// Act on every `every`-th call (default 5).
    pub every: u64,
    /// Upper bound of the decay (default 0.9999).
    pub cap: f64,
    /// Exponent of the warm-up rule 1 − (1 + e)^(−power) (default 0.9).
    pub power: f64,
    /// Call index up to which the shadow is a plain copy. `None`: total_steps − `last_steps`.
    pub start: Option<u64>,
    /// Length of the averaging tail when `start` is `None` (default 1500).
    pub last_steps: u64,
    /// Use a constant decay instead of the warm-up rule.
    pub constant_decay: Option<f64>,
}

impl Default for EmaConfig {
    fn default() -> Self {
        Self {
            every: 5,
            cap: 0.9999,
            power: 0.9,
            start: None,
            last_steps: 1500,
            constant_decay: None,
        }
    }
}

impl EmaConfig {
    /// Checks the settings; errors name the key as `{prefix}every` etc.
    pub fn check(&self, prefix: &str) -> Result<()> {
        use lv_core::check::{in_range, positive};
        if self.every == 0 {
            bail!("key `{prefix}every` must be ≥ 1 (got 0)");
        }
        in_range(&format!("{prefix}cap"), self.cap, 0.0, 1.0)?;
        positive(&format!("{prefix}power"), self.power)?;
        if let Some(d) = self.constant_decay {
            in_range(&format!("{prefix}constant_decay"), d, 0.0, 1.0)?;
        }
        Ok(())
    }

    /// The schedule for a run of `total_steps` optimizer steps.
    pub fn schedule(&self, total_steps: u64) -> EmaSchedule {
        match self.constant_decay {
            Some(decay) => EmaSchedule::Constant { decay },
            None => EmaSchedule::Warmup {
                start: self
                    .start
                    .unwrap_or_else(|| total_steps.saturating_sub(self.last_steps)),
                power: self.power,
                cap: self.cap,
            },
        }
    }
}

/// How the decay evolves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EmaSchedule {
    /// Copy until call `start`, then decay = min(cap, 1 − (1 + e)^(−power)),
    /// e = calls − start − 1.
    Warmup { start: u64, power: f64, cap: f64 },
    /// shadow ← decay·shadow + (1 − decay)·param.
    Constant { decay: f64 },
}

/// What one [`Ema::update`] call did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EmaAction {
    /// Not an `every`-th call.
    Skipped,
    /// The shadow was set to the parameters.
    Copied,
    /// The shadow was averaged with this decay.
    Averaged(f64),
}

/// Exponential moving average over named tensors.
#[derive(Debug)]
pub struct Ema {
    params: Vec<(String, Tensor)>,
    shadow: Vec<Tensor>,
    schedule: EmaSchedule,
    every: u64,
    calls: u64,
    swapped: bool,
}

impl Ema {
    /// An EMA of `params` (shallow handles, e.g. from `VarStore::variables()`); the shadow
    /// starts as a detached copy. `every` ≥ 1.
    /// Errors when `every` is 0 or a constant decay lies outside [0, 1].
    pub fn new(
        params: Vec<(String, Tensor)>,
        schedule: EmaSchedule,
        every: u64,
    ) -> anyhow::Result<Self> {
        if every < 1 {
            anyhow::bail!("key `ema.every` must be ≥ 1 (got {every})");
        }
        if let EmaSchedule::Constant { decay } = schedule {
            if !(0.0..=1.0).contains(&decay) {
                anyhow::bail!("key `ema.constant_decay` must be in [0, 1] (got {decay})");
            }
        }
        let shadow = params.iter().map(|(_, p)| p.detach().copy()).collect();
        Ok(Self {
            params,
            shadow,
            schedule,
            every,
            calls: 0,
            swapped: false,
        })
    }

    /// An EMA of all variables of `vs` (sorted by name), for a run of `total_steps` steps.
    /// Errors name the invalid setting ([`EmaConfig::check`]).
    pub fn from_var_store(
        vs: &VarStore,
        cfg: &EmaConfig,
        total_steps: u64,
    ) -> anyhow::Result<Self> {
        cfg.check("ema.")?;
        let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Self::new(params, cfg.schedule(total_steps), cfg.every)
    }

    /// Number of calls so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Sets the call counter (when resuming from a checkpoint).
    pub fn set_calls(&mut self, calls: u64) {
        self.calls = calls;
    }

    /// The schedule.
    pub fn schedule(&self) -> EmaSchedule {
        self.schedule
    }

    /// What call number `call` (1-based) does, without doing it: nothing unless `call` is a
    /// multiple of `every`; then a copy while `call ≤ start`, else an average.
    pub fn action_at(&self, call: u64) -> EmaAction {
        if call == 0 || !call.is_multiple_of(self.every) {
            return EmaAction::Skipped;
        }
        match self.schedule {
            EmaSchedule::Constant { decay } => EmaAction::Averaged(decay),
            EmaSchedule::Warmup { start, power, cap } => {
                if call <= start {
                    EmaAction::Copied
                } else {
                    EmaAction::Averaged(warmup_decay(call - start - 1, power, cap))
                }
            }
        }
    }

    /// One call (once per successful optimizer step).
    pub fn update(&mut self) -> EmaAction {
        assert!(
            !self.swapped,
            "Ema::update called while the EMA weights are swapped in"
        );
        self.calls += 1;
        let action = self.action_at(self.calls);
        tch::no_grad(|| match action {
            EmaAction::Skipped => {}
            EmaAction::Copied => {
                for ((_, p), s) in self.params.iter().zip(self.shadow.iter_mut()) {
                    s.copy_(p);
                }
            }
            EmaAction::Averaged(decay) => {
                for ((_, p), s) in self.params.iter().zip(self.shadow.iter_mut()) {
                    // s ← s + (1 − decay)(p − s)
                    let _ = s.lerp_(p, 1.0 - decay);
                }
            }
        });
        action
    }

    /// Exchanges the live parameters and the shadow in place. Call twice to restore.
    pub fn swap(&mut self) {
        tch::no_grad(|| {
            for ((_, p), s) in self.params.iter_mut().zip(self.shadow.iter_mut()) {
                let tmp = p.detach().copy();
                p.copy_(s);
                s.copy_(&tmp);
            }
        });
        self.swapped = !self.swapped;
    }

    /// Puts the EMA weights into the parameters (no-op if already swapped in).
    pub fn swap_in(&mut self) {
        if !self.swapped {
            self.swap();
        }
    }

    /// Restores the training weights (no-op if not swapped in).
    pub fn swap_out(&mut self) {
        if self.swapped {
            self.swap();
        }
    }

    /// Whether the EMA weights are currently in the parameters.
    pub fn is_swapped(&self) -> bool {
        self.swapped
    }

    /// Runs `f` with the EMA weights swapped in, restoring the training weights afterwards.
    pub fn with_shadow<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let was = self.swapped;
        self.swap_in();
        let r = f();
        if !was {
            self.swap_out();
        }
        r
    }

    /// The EMA weights as named tensors (detached; the training weights if swapped in).
    pub fn shadow(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(self.shadow.iter())
            .map(|((n, p), s)| {
                let t = if self.swapped {
                    p.detach()
                } else {
                    s.shallow_clone()
                };
                (n.clone(), t.copy())
            })
            .collect()
    }

    /// Copies the EMA weights into the same-named variables of `vs` (e.g. a separate
    /// evaluation model). Errors on a missing name or a shape mismatch.
    pub fn copy_to(&self, vs: &VarStore) -> Result<()> {
        crate::checkpoint::load_into_var_store(vs, &self.shadow())?;
        Ok(())
    }

    /// Replaces the shadow by named tensors (resuming); every name must be present.
    pub fn load_shadow(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        if self.swapped {
            bail!("Ema::load_shadow while the EMA weights are swapped in");
        }
        for ((name, _), s) in self.params.iter().zip(self.shadow.iter_mut()) {
            let Some((_, t)) = tensors.iter().find(|(n, _)| n == name) else {
                bail!("EMA shadow tensor `{name}` missing");
            };
            if t.size() != s.size() {
                bail!(
                    "EMA shadow tensor `{name}`: shape {:?}, expected {:?}",
                    t.size(),
                    s.size()
                );
            }
            tch::no_grad(|| s.copy_(t));
        }
        Ok(())
    }
}

/// min(cap, 1 − (1 + e)^(−power)) for e ≥ 1; 0 for e ≤ 0 (as in `ema_pytorch`).
pub fn warmup_decay(e: u64, power: f64, cap: f64) -> f64 {
    if e == 0 {
        return 0.0;
    }
    (1.0 - (1.0 + e as f64).powf(-power)).clamp(0.0, cap)
}

/// The EMA as the training driver's weight average ([`lv_core::driver::Averager`]).
impl lv_core::driver::Averager for Ema {
    fn update(&mut self) {
        Ema::update(self);
    }
    fn swap_in(&mut self) {
        Ema::swap_in(self);
    }
    fn swap_out(&mut self) {
        Ema::swap_out(self);
    }
    fn state(&self) -> (Vec<(String, Tensor)>, u64) {
        (self.shadow(), self.calls())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn one_param(v: f64) -> (Tensor, Vec<(String, Tensor)>) {
        let p = Tensor::full([3], v, (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let list = vec![("w".to_string(), p.shallow_clone())];
        (p, list)
    }

    fn set(p: &Tensor, v: f64) {
        tch::no_grad(|| {
            let _ = p.shallow_clone().fill_(v);
        });
    }

    fn val(t: &Tensor) -> f64 {
        t.double_value(&[0])
    }

    #[test]
    fn paper_schedule_numbers() {
        let (_p, list) = one_param(0.0);
        let ema = Ema::new(list, EmaConfig::default().schedule(60_000), 5).unwrap();
        assert_eq!(
            ema.schedule(),
            EmaSchedule::Warmup {
                start: 58_500,
                power: 0.9,
                cap: 0.9999
            }
        );
        // Spec §7: act on every 5th call (5, 10, …), copy until call 58 500.
        assert_eq!(ema.action_at(1), EmaAction::Skipped);
        assert_eq!(ema.action_at(4), EmaAction::Skipped);
        assert_eq!(ema.action_at(5), EmaAction::Copied);
        assert_eq!(ema.action_at(58_500), EmaAction::Copied);
        assert_eq!(ema.action_at(58_501), EmaAction::Skipped);
        // First average: c = 58 505, e = 4, decay = 1 − 5^−0.9.
        let EmaAction::Averaged(d) = ema.action_at(58_505) else {
            panic!("expected an average")
        };
        assert!((d - (1.0 - 5f64.powf(-0.9))).abs() < 1e-15);
        // The last call of the run is an update: c = 60 000, e = 60 000 − 58 500 − 1 = 1 499.
        assert_eq!(ema.action_at(59_996), EmaAction::Skipped);
        let EmaAction::Averaged(d) = ema.action_at(60_000) else {
            panic!("expected an average")
        };
        assert!((d - (1.0 - 1500f64.powf(-0.9))).abs() < 1e-15);
        assert!((d - 0.99861).abs() < 5e-6, "{d}");
        // The cap binds for very long runs.
        assert_eq!(warmup_decay(100_000_000, 0.9, 0.9999), 0.9999);
        assert_eq!(warmup_decay(0, 0.9, 0.9999), 0.0);
    }

    #[test]
    fn copies_before_start_then_averages() {
        let (p, list) = one_param(0.0);
        let sched = EmaSchedule::Warmup {
            start: 10,
            power: 0.9,
            cap: 0.9999,
        };
        let mut ema = Ema::new(list, sched, 5).unwrap();
        let mut shadow_ref = 0.0f64;
        for c in 1..=40u64 {
            set(&p, c as f64);
            let a = ema.update();
            // Reference.
            if c % 5 == 0 {
                if c <= 10 {
                    shadow_ref = c as f64;
                    assert_eq!(a, EmaAction::Copied);
                } else {
                    let e = (c - 10 - 1) as f64;
                    let d = (1.0 - (1.0 + e).powf(-0.9)).min(0.9999);
                    shadow_ref = d * shadow_ref + (1.0 - d) * c as f64;
                    assert_eq!(a, EmaAction::Averaged(d));
                }
            }
            let s = val(&ema.shadow()[0].1);
            assert!(
                (s - shadow_ref).abs() < 1e-4 * (1.0 + shadow_ref),
                "c {c}: {s} vs {shadow_ref}"
            );
            if c == 10 {
                // Before (and at) start, the shadow equals the parameters after a copy call.
                assert_eq!(s, c as f64);
            }
        }
        assert!(!ema.shadow()[0].1.requires_grad());
    }

    #[test]
    fn constant_decay_and_swap() {
        let (p, list) = one_param(1.0);
        let mut ema = Ema::new(list, EmaSchedule::Constant { decay: 0.5 }, 1).unwrap();
        set(&p, 3.0);
        assert_eq!(ema.update(), EmaAction::Averaged(0.5));
        assert!((val(&ema.shadow()[0].1) - 2.0).abs() < 1e-6);
        set(&p, 4.0);
        ema.update();
        assert!((val(&ema.shadow()[0].1) - 3.0).abs() < 1e-6);
        // Evaluate with the EMA weights and restore.
        let inside = ema.with_shadow(|| val(&p));
        assert_eq!(inside, 3.0);
        assert_eq!(val(&p), 4.0);
        ema.swap_in();
        assert!(ema.is_swapped());
        assert_eq!(val(&p), 3.0);
        assert_eq!(val(&ema.shadow()[0].1), 3.0);
        ema.swap_out();
        assert_eq!(val(&p), 4.0);
        assert!(p.requires_grad());
    }

    #[test]
    fn var_store_round_trip() {
        let vs = VarStore::new(Device::Cpu);
        let _net = crate::fourier::FourierMlp::new(
            &vs.root(),
            2,
            2,
            &crate::fourier::MlpConfig::default(),
        )
        .unwrap();
        let mut ema = Ema::from_var_store(&vs, &EmaConfig::default(), 100).unwrap();
        ema.update();
        let shadow = ema.shadow();
        assert_eq!(shadow.len(), vs.variables().len());
        let vs2 = VarStore::new(Device::Cpu);
        let _net2 = crate::fourier::FourierMlp::new(
            &vs2.root(),
            2,
            2,
            &crate::fourier::MlpConfig::default(),
        )
        .unwrap();
        ema.copy_to(&vs2).unwrap();
        let (a, b) = (vs.variables(), vs2.variables());
        for (n, t) in &a {
            assert_eq!(t.size(), b[n].size());
            assert!(t.allclose(&b[n], 0.0, 0.0, false), "{n}");
        }
        let mut ema2 = Ema::from_var_store(&vs2, &EmaConfig::default(), 100).unwrap();
        ema2.load_shadow(&shadow).unwrap();
        assert!(ema2.load_shadow(&shadow[1..]).is_err());
    }

    #[test]
    fn config_from_json() {
        let cfg: EmaConfig = serde_json::from_str(r#"{"constant_decay": 0.99}"#).unwrap();
        assert_eq!(cfg.schedule(10), EmaSchedule::Constant { decay: 0.99 });
        let cfg: EmaConfig = serde_json::from_str(r#"{"start": 7}"#).unwrap();
        assert!(matches!(
            cfg.schedule(10),
            EmaSchedule::Warmup { start: 7, .. }
        ));
        assert!(matches!(
            EmaConfig::default().schedule(1000),
            EmaSchedule::Warmup { start: 0, .. }
        ));
    }
}
