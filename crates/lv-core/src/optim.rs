//! Adam with coupled L2 weight decay (torch.optim.Adam semantics, not AdamW), StepLR and
//! global-norm gradient clipping, on plain tensors so that the optimizer state can be
//! checkpointed and restored exactly.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// A group of parameters sharing a learning rate.
pub struct ParamGroup {
    pub params: Vec<Tensor>,
    /// Base learning rate of the group (the schedule multiplies it).
    pub lr: f64,
}

/// Adam state of one parameter.
struct Slot {
    m: Tensor,
    v: Tensor,
}

/// Adam as torch.optim.Adam: g ← g + wd·θ; m ← β₁m + (1 − β₁)g; v ← β₂v + (1 − β₂)g²;
/// θ ← θ − (lr/(1 − β₁ᵗ))·m/(√v/√(1 − β₂ᵗ) + ε).
pub struct Adam {
    pub groups: Vec<ParamGroup>,
    slots: Vec<Vec<Slot>>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Number of updates done (t).
    pub t: u64,
    /// Multiplier applied to every group's lr (the schedule).
    pub lr_factor: f64,
}

impl Adam {
    pub fn new(groups: Vec<ParamGroup>, weight_decay: f64) -> Self {
        let slots = groups
            .iter()
            .map(|g| {
                g.params
                    .iter()
                    .map(|p| Slot {
                        m: p.zeros_like().detach(),
                        v: p.zeros_like().detach(),
                    })
                    .collect()
            })
            .collect();
        Self {
            groups,
            slots,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            t: 0,
            lr_factor: 1.0,
        }
    }

    /// All parameters, in group order.
    pub fn params(&self) -> impl Iterator<Item = &Tensor> {
        self.groups.iter().flat_map(|g| g.params.iter())
    }

    /// Sets every gradient to zero (or leaves it undefined).
    pub fn zero_grad(&self) {
        for p in self.params() {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// One Adam update from the current gradients (undefined gradients count as zero).
    pub fn step(&mut self) {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        tch::no_grad(|| {
            for (g, slots) in self.groups.iter().zip(self.slots.iter_mut()) {
                let lr = g.lr * self.lr_factor;
                for (p, s) in g.params.iter().zip(slots.iter_mut()) {
                    let grad = p.grad();
                    let grad = if grad.defined() { grad } else { p.zeros_like() };
                    // Coupled L2 (a new tensor: the stored gradient is left untouched).
                    let grad = if self.weight_decay != 0.0 {
                        grad + p * self.weight_decay
                    } else {
                        grad
                    };
                    let _ =
                        s.m.g_mul_scalar_(self.beta1)
                            .g_add_(&(&grad * (1.0 - self.beta1)));
                    let _ =
                        s.v.g_mul_scalar_(self.beta2)
                            .g_add_(&(grad.square() * (1.0 - self.beta2)));
                    let denom = s.v.sqrt() / bc2.sqrt() + self.eps;
                    let mut p = p.shallow_clone();
                    let _ = p.g_sub_(&(&s.m / denom * (lr / bc1)));
                }
            }
        });
    }

    /// The optimizer state as named tensors (for checkpoints).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (gi, slots) in self.slots.iter().enumerate() {
            for (pi, s) in slots.iter().enumerate() {
                out.push((format!("adam.{gi}.{pi}.m"), s.m.shallow_clone()));
                out.push((format!("adam.{gi}.{pi}.v"), s.v.shallow_clone()));
            }
        }
        out.push(("adam.t".into(), Tensor::from(self.t as i64)));
        out.push(("adam.lr_factor".into(), Tensor::from(self.lr_factor)));
        out
    }

    /// Restores [`Adam::state`]; errors name the missing entry or the shape mismatch.
    pub fn load_state(&mut self, named: &[(String, Tensor)]) -> anyhow::Result<()> {
        let get = |k: &str| {
            named
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, t)| t)
                .ok_or_else(|| anyhow::anyhow!("optimizer state has no entry `{k}`"))
        };
        tch::no_grad(|| -> anyhow::Result<()> {
            for (gi, slots) in self.slots.iter_mut().enumerate() {
                for (pi, s) in slots.iter_mut().enumerate() {
                    for (name, dst) in [("m", &mut s.m), ("v", &mut s.v)] {
                        let src = get(&format!("adam.{gi}.{pi}.{name}"))?;
                        if src.size() != dst.size() {
                            anyhow::bail!(
                                "optimizer state `adam.{gi}.{pi}.{name}` has shape {:?}, expected {:?}",
                                src.size(),
                                dst.size()
                            );
                        }
                        dst.copy_(src);
                    }
                }
            }
            Ok(())
        })?;
        self.t = get("adam.t")?.int64_value(&[]) as u64;
        self.lr_factor = get("adam.lr_factor")?.double_value(&[]);
        Ok(())
    }
}

/// StepLR: lr factor γ^⌊step/every⌋ (paper: every 100 steps, γ = 0.02^(100/60000)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepLr {
    pub every: usize,
    pub gamma: f64,
}

impl StepLr {
    /// The paper's decay from lr to 0.02·lr over `steps` steps, applied every 100 steps.
    pub fn paper(steps: usize) -> Self {
        Self {
            every: 100,
            gamma: 0.02f64.powf(100.0 / steps as f64),
        }
    }

    /// The factor after `updates` scheduler steps.
    pub fn factor(&self, updates: usize) -> f64 {
        self.gamma.powi((updates / self.every.max(1)) as i32)
    }
}

/// A multi-step schedule (optax's `piecewise_constant_schedule`, RSMC's `multistep`): the
/// factor is γ^k after `updates` updates, k = the number of milestones ≤ `updates`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrMilestones {
    /// Update counts at which the factor is multiplied by γ (increasing).
    pub at: Vec<usize>,
    pub gamma: f64,
}

impl LrMilestones {
    /// The factor after `updates` updates.
    pub fn factor(&self, updates: usize) -> f64 {
        let k = self.at.iter().filter(|&&m| m <= updates).count();
        self.gamma.powi(k as i32)
    }
}

/// The lr factor after `updates` successful updates of StepLR and the milestones together
/// (their factors multiply); `None` when neither is set (the factor is then left as it is).
pub fn schedule_factor(
    step_lr: Option<(usize, f64)>,
    milestones: Option<&LrMilestones>,
    updates: usize,
) -> Option<f64> {
    let a = step_lr.map(|(every, gamma)| StepLr { every, gamma }.factor(updates));
    let b = milestones.map(|m| m.factor(updates));
    (a.is_some() || b.is_some()).then(|| a.unwrap_or(1.0) * b.unwrap_or(1.0))
}

/// The global L2 norm of the gradients, as a device scalar (no host synchronisation).
pub fn grad_norm(params: &[Tensor]) -> Tensor {
    let sq: Vec<Tensor> = params
        .iter()
        .filter_map(|p| {
            let g = p.grad();
            g.defined().then(|| g.square().sum(Kind::Float))
        })
        .collect();
    if sq.is_empty() {
        return Tensor::from(0.0f32);
    }
    Tensor::stack(&sq, 0).sum(Kind::Float).sqrt()
}

/// Scales the gradients so that their global L2 norm is at most `max_norm`
/// (coefficient min(1, max_norm/(‖g‖ + 1e-6)), as torch's clip_grad_norm_), on the device.
pub fn clip_grad_norm(params: &[Tensor], norm: &Tensor, max_norm: f64) {
    let coef = (norm + 1e-6)
        .reciprocal()
        .g_mul_scalar(max_norm)
        .clamp_max(1.0);
    tch::no_grad(|| {
        for p in params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.g_mul_(&coef);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milestones_multiply_at_each_count_reached() {
        let m = LrMilestones {
            at: vec![20_000, 30_000],
            gamma: 0.3,
        };
        assert_eq!(m.factor(0), 1.0);
        assert_eq!(m.factor(19_999), 1.0);
        assert!((m.factor(20_000) - 0.3).abs() < 1e-15);
        assert!((m.factor(35_000) - 0.09).abs() < 1e-15);
    }

    #[test]
    fn adam_minimises_a_quadratic_and_matches_torch_first_step() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut adam = Adam::new(
            vec![ParamGroup {
                params: vec![p.shallow_clone()],
                lr: 0.1,
            }],
            0.0,
        );
        // First Adam step moves each coordinate by lr·sign(g) (up to ε).
        adam.zero_grad();
        p.square().sum(Kind::Float).backward();
        adam.step();
        let v = Vec::<f32>::try_from(&p.detach()).unwrap();
        assert!(
            (v[0] - 0.9).abs() < 1e-5 && (v[1] + 1.9).abs() < 1e-5,
            "{v:?}"
        );
        for _ in 0..300 {
            adam.zero_grad();
            p.square().sum(Kind::Float).backward();
            adam.step();
        }
        assert!(p.abs().max().double_value(&[]) < 0.05);
    }

    #[test]
    fn state_round_trip() {
        let p = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let mk = || {
            Adam::new(
                vec![ParamGroup {
                    params: vec![p.shallow_clone()],
                    lr: 0.1,
                }],
                1e-7,
            )
        };
        let mut a = mk();
        p.square().sum(Kind::Float).backward();
        a.step();
        let st = a.state();
        let mut b = mk();
        b.load_state(&st).unwrap();
        assert_eq!(b.t, 1);
        assert!(b.load_state(&st[..1]).is_err());
    }

    #[test]
    fn step_lr_paper_decay() {
        let s = StepLr::paper(60000);
        assert!((s.factor(60000) - 0.02).abs() < 1e-9);
        assert_eq!(s.factor(99), 1.0);
        assert!((s.gamma - 0.993501).abs() < 1e-6);
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let p = Tensor::from_slice(&[3.0f32, 4.0]).set_requires_grad(true);
        (p.square().sum(Kind::Float) * 0.5).backward(); // grad = (3, 4), norm 5
        let params = vec![p.shallow_clone()];
        let n = grad_norm(&params);
        assert!((n.double_value(&[]) - 5.0).abs() < 1e-5);
        clip_grad_norm(&params, &n, 1.0);
        assert!((grad_norm(&params).double_value(&[]) - 1.0).abs() < 1e-4);
    }
}
