//! The gradient paths of a full-trajectory batch, one function each ([`GradPath`]):
//! [`Trainer::batch_loss`] chooses the path once ([`Trainer::grad_path`]) and calls one of
//! these. Each returns the batch's loss and whether its backward pass is already done.

use super::shard::{add_fork_grads, Shard, ShardRun, TapeGuard};
use super::{GradPath, Trainer};
use crate::control::Control;
use crate::loss::LossValue;
use crate::sim::{replay_lv, replay_lv_steps, simulate, SimOptions};
use tch::{Kind, Tensor};

/// The loss of a batch from its R, `[n]` → loss and kept count.
pub(super) type LossOf<'l> = &'l dyn Fn(&Tensor) -> LossValue;

impl Trainer<'_> {
    /// [`GradPath::Graph`]: the loss on the graph of the step-by-step simulation; the caller
    /// backpropagates it.
    pub(super) fn graph_loss(
        &self,
        x0: &Tensor,
        opts: SimOptions,
        loss_of: LossOf,
    ) -> (LossValue, bool) {
        let out = simulate(self.method, self.target, self.controls, x0, opts);
        (loss_of(&out.rnd), false)
    }

    /// [`GradPath::Direct`]: g = dL/dR on a leaf copy of R, then one backward of
    /// Σ_k ⟨u_k, stopgrad(∂R/∂u_k · g)⟩ through the kept control graphs
    /// ([`crate::sim::KeptControls`]); `native`: the control runs its network natively.
    pub(super) fn direct_loss(
        &self,
        x0: &Tensor,
        mut opts: SimOptions,
        native: bool,
        loss_of: LossOf,
    ) -> (LossValue, bool) {
        opts.keep_controls = true;
        let tape = TapeGuard::start(self.controls.u, native);
        let out = simulate(self.method, self.target, self.controls, x0, opts);
        let kept = out.kept.expect("kept controls requested");
        let r_leaf = out.rnd.detach().set_requires_grad(true);
        let lv = loss_of(&r_leaf);
        lv.loss.backward();
        kept.backward(&r_leaf.grad());
        tape.finish();
        (detached(lv), true)
    }

    /// [`GradPath::Adjoint`]: the KL-family simulation without a graph, the control taping
    /// its evaluations; g = dL/dR on a leaf copy of R, then the adjoint backward through the
    /// states ([`crate::sim::AdjointRecord::backward`]) and the tape's parameter gradients.
    pub(super) fn adjoint_loss(
        &self,
        x0: &Tensor,
        mut opts: SimOptions,
        loss_of: LossOf,
    ) -> (LossValue, bool) {
        opts.adjoint = true;
        let tape = TapeGuard::start(self.controls.u, true);
        let out = simulate(self.method, self.target, self.controls, x0, opts);
        let rec = out.adjoint.expect("adjoint recording requested");
        let r_leaf = out.rnd.detach().set_requires_grad(true);
        let lv = loss_of(&r_leaf);
        lv.loss.backward();
        rec.backward(self.method, self.target, self.controls.u, &r_leaf.grad());
        tape.finish();
        (detached(lv), true)
    }

    /// [`GradPath::Replay`]: the simulation without a graph, recorded, then the batched
    /// replay of R with the live controls. In one piece the caller backpropagates the loss;
    /// in chunks of `chunk_rows` rows, g = dL/dR on a leaf copy of R and
    /// Σ_chunks backward(⟨R_c, g⟩) here.
    pub(super) fn replay_loss(
        &self,
        x0: &Tensor,
        mut opts: SimOptions,
        chunk_rows: Option<usize>,
        loss_of: LossOf,
    ) -> (LossValue, bool) {
        opts.record = true;
        let out = tch::no_grad(|| simulate(self.method, self.target, self.controls, x0, opts));
        let rec = out.recording.expect("recording requested");
        let steps = rec.ts.len();
        let n = x0.size()[0].max(1) as usize;
        let chunk = chunk_rows.map_or(steps, |rows| (rows / n).clamp(1, steps));
        let grid = &self.method.grid;
        if chunk >= steps {
            return (
                loss_of(&replay_lv(self.method, grid, self.controls, &rec)),
                false,
            );
        }
        let r_leaf = out.rnd.detach().set_requires_grad(true);
        let lv = loss_of(&r_leaf);
        lv.loss.backward();
        let g = r_leaf.grad().detach();
        let mut k0 = 0;
        while k0 < steps {
            let k1 = (k0 + chunk).min(steps);
            let rc = replay_lv_steps(self.method, grid, self.controls, &rec, k0, k1);
            (rc * &g).sum(Kind::Float).backward();
            k0 = k1;
        }
        (detached(lv), true)
    }

    /// The graph, direct or adjoint path split into row shards, one forked control and thread each
    /// ([`ShardRun`]); the forks' gradients are added to the control's. The noise of the
    /// whole batch is drawn here, so results do not depend on thread scheduling.
    pub(super) fn sharded_loss(
        &self,
        x0: &Tensor,
        mut opts: SimOptions,
        path: GradPath,
        forks: Vec<Box<dyn Control + Send>>,
        loss_of: LossOf,
    ) -> (LossValue, bool) {
        let direct = match path {
            GradPath::Direct { native } => Some(native),
            _ => None,
        };
        if direct.is_some() {
            opts.keep_controls = true;
        }
        opts.adjoint = path == GradPath::Adjoint;
        let (n, d) = (x0.size()[0], x0.size()[1]);
        let noise = Tensor::randn(
            [self.method.grid.steps() as i64, n, d],
            (x0.kind(), x0.device()),
        );
        let parts = crate::par::split_rows(n as usize, 1, forks.len());
        let work: Vec<Shard> = parts
            .iter()
            .zip(forks)
            .map(|(r, u)| {
                let (a, len) = (r.start as i64, r.len() as i64);
                Shard {
                    u,
                    x0: x0.narrow(0, a, len).contiguous(),
                    noise: noise.narrow(1, a, len).contiguous(),
                }
            })
            .collect();
        let run = ShardRun {
            method: self.method,
            target: self.target,
            opts,
            direct,
        };
        let (loss, kept, done) = run.run(work, loss_of);
        add_fork_grads(self.controls.u, done.iter().map(|s| &*s.u));
        (LossValue { loss, kept }, true)
    }
}

fn detached(lv: LossValue) -> LossValue {
    LossValue {
        loss: lv.loss.detach(),
        kept: lv.kept,
    }
}
