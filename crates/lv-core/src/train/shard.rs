//! Batch shards: one batch split into row blocks, each simulated and backpropagated on its own
//! thread with a forked control ([`TrainSettings::batch_shards`]).

use crate::control::Control;
use crate::method::Method;
use crate::sim::{simulate_with_noise, Controls, SimOptions};
use crate::target::Target;
use tch::{Kind, Tensor};

/// One shard of a batch-sharded step: forked controls and the shard's rows.
pub(super) struct Shard {
    pub(super) u: Box<dyn Control + Send>,
    pub(super) x0: Tensor,
    /// `[steps, rows, d]`.
    pub(super) noise: Tensor,
}

/// What the shard threads share (read-only).
pub(super) struct ShardRun<'a> {
    pub(super) method: &'a Method,
    pub(super) target: &'a dyn Target,
    pub(super) opts: SimOptions,
    /// `Some(native)`: the direct LV path (kept controls, tape if `native`); `None`: the
    /// graph path, or the adjoint path when `opts.adjoint` is set.
    pub(super) direct: Option<bool>,
}

impl ShardRun<'_> {
    /// Simulates every shard on its own thread (one libtorch thread each), computes the
    /// loss on the concatenated R of all shards here and g = dL/dR, then lets each shard
    /// backpropagate ⟨R_shard, g_shard⟩ (graph path) or its kept controls with g_shard
    /// (direct path) into its forks. Returns the detached loss, the kept mask and the shards
    /// with their gradients. The shard threads set their own thread count
    /// ([`crate::par::set_local_threads`]; if that is unavailable, the global one, restored
    /// afterwards); a panic in a shard is re-raised here.
    pub(super) fn run(
        &self,
        shards: Vec<Shard>,
        loss_of: &dyn Fn(&Tensor) -> crate::loss::LossValue,
    ) -> (Tensor, Tensor, Vec<Shard>) {
        use std::sync::mpsc;
        let threads = tch::get_num_threads();
        let global_fallback = std::sync::atomic::AtomicBool::new(false);
        let rows: Vec<i64> = shards.iter().map(|s| s.x0.size()[0]).collect();
        let out = std::thread::scope(|scope| {
            let (tx_r, rx_r) = mpsc::channel::<(usize, Tensor)>();
            let mut to_shards = Vec::new();
            let mut handles = Vec::new();
            for (i, shard) in shards.into_iter().enumerate() {
                let (tx_g, rx_g) = mpsc::channel::<Tensor>();
                to_shards.push(tx_g);
                let tx_r = tx_r.clone();
                let global_fallback = &global_fallback;
                handles.push(scope.spawn(move || {
                    // One libtorch thread here; without the per-thread setters, the global one.
                    if !crate::par::set_local_threads(1) {
                        global_fallback.store(true, std::sync::atomic::Ordering::Relaxed);
                        tch::set_num_threads(1);
                    }
                    self.shard(i, &shard, tx_r, rx_g);
                    shard
                }));
            }
            drop(tx_r);
            let mut parts: Vec<Option<Tensor>> = (0..rows.len()).map(|_| None).collect();
            for (i, r) in rx_r.iter() {
                parts[i] = Some(r);
            }
            let result = if parts.iter().all(Option::is_some) {
                let parts: Vec<Tensor> = parts.into_iter().flatten().collect();
                let r_leaf = Tensor::cat(&parts, 0).set_requires_grad(true);
                let lv = loss_of(&r_leaf);
                lv.loss.backward();
                let g = r_leaf.grad();
                let mut start = 0;
                for (tx, &len) in to_shards.iter().zip(&rows) {
                    let _ = tx.send(g.narrow(0, start, len).contiguous());
                    start += len;
                }
                Some((lv.loss.detach(), lv.kept))
            } else {
                None // a shard panicked before sending R; its panic is re-raised below
            };
            drop(to_shards);
            let done: Vec<Shard> = handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect();
            let (loss, kept) = result.expect("every shard sent R");
            (loss, kept, done)
        });
        if global_fallback.into_inner() {
            tch::set_num_threads(threads);
        }
        out
    }
}

impl ShardRun<'_> {
    /// Shard `i` on its thread: simulate, send R, wait for g, backpropagate (see
    /// [`ShardRun::run`]). Without g (another shard failed) the tape is dropped.
    pub(super) fn shard(
        &self,
        i: usize,
        shard: &Shard,
        tx_r: std::sync::mpsc::Sender<(usize, Tensor)>,
        rx_g: std::sync::mpsc::Receiver<Tensor>,
    ) {
        let controls = Controls::new(&*shard.u);
        let tape = TapeGuard::start(controls.u, self.direct == Some(true) || self.opts.adjoint);
        let out = simulate_with_noise(
            self.method,
            &self.method.grid,
            self.target,
            controls,
            &shard.x0,
            self.opts,
            Some(&shard.noise),
        );
        let _ = tx_r.send((i, out.rnd.detach()));
        drop(tx_r);
        if let Ok(g) = rx_g.recv() {
            match (&out.kept, out.adjoint) {
                (Some(kept), _) => kept.backward(&g),
                (None, Some(rec)) => rec.backward(self.method, self.target, controls.u, &g),
                (None, None) => (&out.rnd * g).sum(Kind::Float).backward(),
            }
            tape.finish();
        }
    }
}

/// Adds the forks' parameter gradients to `control`'s, in fork order (so the sum does not
/// depend on thread timing): one backward of Σ_i ⟨p_i, Σ_forks ∂p_i⟩.
pub(super) fn add_fork_grads<'f>(
    control: &dyn Control,
    forks: impl Iterator<Item = &'f (dyn Control + Send)>,
) {
    let params = control.parameters();
    let mut sums: Vec<Option<Tensor>> = params.iter().map(|_| None).collect();
    for fork in forks {
        let fp = fork.parameters();
        assert_eq!(
            fp.len(),
            params.len(),
            "a fork has other parameters than its control"
        );
        for (sum, p) in sums.iter_mut().zip(&fp) {
            let g = p.grad();
            if g.defined() {
                *sum = Some(match sum.take() {
                    Some(s) => s + g,
                    None => g.detach().copy(),
                });
            }
        }
    }
    let terms: Vec<Tensor> = params
        .iter()
        .zip(sums)
        .filter_map(|(p, g)| g.map(|g| (p * g).sum(Kind::Float)))
        .collect();
    if !terms.is_empty() {
        Tensor::stack(&terms, 0).sum(Kind::Float).backward();
    }
}

/// An open [`Control::start_tape`]: `finish` completes the gradients; dropping it unfinished
/// (an early return or a panic) discards the tape.
pub(super) struct TapeGuard<'a> {
    pub(super) control: &'a dyn Control,
    pub(super) open: bool,
}

impl<'a> TapeGuard<'a> {
    pub(super) fn start(control: &'a dyn Control, enabled: bool) -> Self {
        let open = enabled && control.tape_supported() && control.start_tape();
        Self { control, open }
    }
    pub(super) fn finish(mut self) {
        if self.open {
            self.open = false;
            self.control.finish_tape();
        }
    }
}

impl Drop for TapeGuard<'_> {
    fn drop(&mut self) {
        if self.open {
            self.control.drop_tape();
        }
    }
}
