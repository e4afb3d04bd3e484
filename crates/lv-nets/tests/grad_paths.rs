//! The trainer's gradient paths agree: tape mode (native trunk forward/backward,
//! `Control::start_tape`) gives the gradients of plain autograd, for the FourierMLP alone and
//! for whole direct-LV trainer batches; batch shards (`train.batch_shards`, forked controls
//! on threads) give the gradients of one batch, deterministically.

use lv_core::loss::LossKind;
use lv_core::method::Method;
use lv_core::sim::Controls;
use lv_core::testing::{assert_grads_close, rng_lock, ScaledGauss};
use lv_core::train::{GradPath, TrainSettings, Trainer};
use lv_core::{Control, Target};
use lv_nets::{
    CtrlConfig, FourierMlp, LerpCtrl, LerpPriorCtrl, LerpTargetCtrl, MlpConfig, ScoreCtrl,
};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

/// Every trainable parameter ← N(0, 0.3²) (the zero-initialised output layer would make the
/// trunk's gradients trivial).
fn randomize(vs: &VarStore) {
    tch::no_grad(|| {
        for mut v in vs.trainable_variables() {
            let r = v.randn_like() * 0.3;
            v.copy_(&r);
        }
    });
}

/// PIS with ScoreCtrl or DIS with LerpCtrl (`steps` grid steps, dimension `dim`), the
/// control's weights randomised after seeding torch with `seed`.
fn sampler(pis: bool, dim: i64, steps: usize, seed: i64) -> (Method, VarStore, Box<dyn Control>) {
    let meth = if pis {
        Method::pis(steps).unwrap()
    } else {
        Method::dis(steps).unwrap()
    };
    tch::manual_seed(seed);
    let vs = VarStore::new(Device::Cpu);
    let cfg = CtrlConfig::default();
    let ctrl: Box<dyn Control> = if pis {
        Box::new(ScoreCtrl::new(&vs.root(), dim, &cfg).unwrap())
    } else {
        let sde = meth.sde;
        Box::new(
            LerpCtrl::new(
                &vs.root(),
                dim,
                &cfg,
                std::sync::Arc::new(move |t| sde.sigma(t)),
                1.0,
                1.0,
            )
            .unwrap(),
        )
    };
    randomize(&vs);
    (meth, vs, ctrl)
}

/// One trainer batch (torch seeded with 11 first): the loss and the control's gradients.
/// `check` sees the trainer before the batch (to assert its gradient path).
fn one_batch(
    meth: &Method,
    target: &dyn Target,
    ctrl: &dyn Control,
    loss: LossKind,
    settings: TrainSettings,
    check: impl Fn(&Trainer<'_>),
) -> (f64, Vec<Tensor>) {
    let mut tr = Trainer::new(
        meth,
        target,
        Controls::new(ctrl),
        loss,
        settings,
        Device::Cpu,
        None,
    );
    check(&tr);
    tr.adam.zero_grad();
    tch::manual_seed(11);
    let (l, _, done) = tr.batch_loss();
    if !done {
        l.backward();
    }
    (l.double_value(&[]), grads(&ctrl.parameters()))
}

/// The gradients of one LV batch of 32 on the path that `native` and `replay_rows = rows`
/// select (asserted): the direct path (native trunk or autograd), or with rows 0 and no
/// native trunk the one-piece replay.
fn path_grads(
    meth: &Method,
    target: &ScaledGauss,
    ctrl: &dyn Control,
    loss: LossKind,
    native: bool,
    rows: usize,
) -> Vec<Tensor> {
    let s = TrainSettings {
        batch: 32,
        replay_rows: rows,
        native_trunk: native,
        ..TrainSettings::default()
    };
    let expect = match (native, rows) {
        (true, _) => GradPath::Direct { native: true },
        (false, 0) => GradPath::Replay { chunk_rows: None },
        (false, _) => GradPath::Direct { native: false },
    };
    let check = |tr: &Trainer<'_>| assert_eq!(tr.grad_path(), expect);
    one_batch(meth, target, ctrl, loss, s, check).1
}

/// Σ_k ⟨outs_k, cots_k⟩: a scalar loss with fixed cotangents.
fn dot_loss(outs: &[Tensor], cots: &[Tensor]) -> Tensor {
    outs.iter()
        .zip(cots)
        .map(|(o, c)| (o * c).sum(Kind::Float))
        .fold(Tensor::zeros([], CPU), |a, b| a + b)
}

/// Values of the autograd path (`reference`) and of the tape agree to 1e-5 relative to
/// each value's scale (plus 1e-5: clipped outputs have scale 1, their inputs more).
fn assert_values_close(reference: &[Tensor], taped: &[Tensor], what: &str) {
    assert_eq!(reference.len(), taped.len(), "{what}: value counts differ");
    for (k, (a, b)) in reference.iter().zip(taped).enumerate() {
        let err = (a - b).abs().max().double_value(&[]);
        let scale = a.abs().max().double_value(&[]);
        assert!(
            err < 1e-5 * (1.0 + scale),
            "{what}: value {k} differs by {err} (scale {scale})"
        );
    }
}

fn zero_grads(params: &[Tensor]) {
    for p in params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

fn grads(params: &[Tensor]) -> Vec<Tensor> {
    params
        .iter()
        .map(|p| {
            let g = p.grad();
            if g.defined() {
                g.copy()
            } else {
                p.zeros_like()
            }
        })
        .collect()
}

/// NN(t_k, x_k) over prepared times, clipped, paired with fixed cotangents, plus one
/// evaluation at an unprepared time (which falls back to autograd inside the tape): values
/// and every parameter gradient (trunk, time branch, phases) agree with and without tape.
#[test]
fn taped_fourier_mlp_matches_autograd() {
    let _rng = rng_lock();
    for (width, layers, d) in [(64, 4, 3), (24, 3, 2)] {
        tch::manual_seed(5);
        let vs = VarStore::new(Device::Cpu);
        let cfg = MlpConfig {
            width,
            num_layers: layers,
            ..MlpConfig::default()
        };
        let net = FourierMlp::new(&vs.root(), d, d, &cfg).unwrap();
        randomize(&vs);
        let params = vs.trainable_variables();
        let ts = [0.0, 0.25, 0.5, 0.75];
        let xs: Vec<Tensor> = (0..5).map(|_| Tensor::randn([37, d], CPU) * 1.5).collect();
        let cs: Vec<Tensor> = (0..5).map(|_| Tensor::randn([37, d], CPU)).collect();
        let run = |tape: bool| -> (Vec<Tensor>, Vec<Tensor>) {
            zero_grads(&params);
            net.prepare_times(&ts);
            if tape {
                assert!(net.start_tape());
            }
            let times = [0.0, 0.25, 0.5, 0.75, 0.6]; // 0.6 is not prepared
                                                     // Even calls clipped at 1 (natively in tape mode: the mask must stop the
                                                     // gradient where the clamp is active; the loss's own clamp at 2 would not).
            let outs: Vec<Tensor> = times
                .iter()
                .zip(&xs)
                .enumerate()
                .map(|(i, (&t, x))| {
                    if i % 2 == 0 {
                        net.forward_t_clipped(t, x, 1.0)
                    } else {
                        net.forward_t(t, x)
                    }
                })
                .collect();
            let at_bound = outs[0].abs().eq(1.0).sum(Kind::Int64).int64_value(&[]);
            assert!(at_bound > 0, "the clip is never active in this test");
            let clamped: Vec<Tensor> = outs.iter().map(|o| o.clamp(-2.0, 2.0)).collect();
            dot_loss(&clamped, &cs).backward();
            if tape {
                net.finish_tape();
            }
            net.clear_times();
            (outs.iter().map(|o| o.detach()).collect(), grads(&params))
        };
        let (v0, g0) = run(false);
        let (v1, g1) = run(true);
        assert_values_close(&v0, &v1, &format!("width {width}"));
        assert_grads_close(&g0, &g1, 2e-5, &format!("width {width}"));
        // A second tape reuses the buffers and gives the same again.
        let (_, g2) = run(true);
        assert_grads_close(&g0, &g2, 2e-5, &format!("width {width}, second tape"));
        // A dropped tape leaves the plain autograd path.
        assert!(net.start_tape());
        net.drop_tape();
        net.prepare_times(&ts);
        let y = net.forward_t(0.25, &xs[0]);
        net.clear_times();
        zero_grads(&params);
        (y * &cs[0]).sum(Kind::Float).backward();
        let g = grads(&params);
        assert!(g.iter().all(|g| g.isfinite().all().int64_value(&[]) == 1));
        assert!(g[1..].iter().any(|g| g.abs().max().double_value(&[]) > 0.0));
    }
}

/// The whole control value in tape mode (ScoreCtrl, and LerpCtrl with both, the target or
/// the prior term; s(t) with one or d outputs) is the autograd value, and the
/// parameter gradients (trunk, time branch, s(t)) agree, with both clamps active: the
/// network output's at c_m and the score term's at c_s. One evaluation at an unprepared
/// time falls back to autograd inside the tape.
#[test]
fn taped_control_heads_match_autograd() {
    let _rng = rng_lock();
    let d = 3;
    let sigma: lv_nets::ctrl::SigmaFn = std::sync::Arc::new(|t| 0.5 + t);
    for per_dim in [false, true] {
        let cfg = CtrlConfig {
            mlp: MlpConfig {
                width: 32,
                num_layers: 3,
                ..MlpConfig::default()
            },
            clip_model: 1.0,
            clip_score: 1.5,
            scale_per_dim: per_dim,
            scale_init: None,
        };
        let label = |name: &str| format!("{name}, s(t) per dimension: {per_dim}");
        let vs = VarStore::new(Device::Cpu);
        let c = ScoreCtrl::new(&vs.root(), d, &cfg).unwrap();
        check_taped_head(&label("ScoreCtrl"), &vs, &c, c.net());
        let vs = VarStore::new(Device::Cpu);
        let c = LerpCtrl::new(&vs.root(), d, &cfg, sigma.clone(), 1.0, 1.3).unwrap();
        check_taped_head(&label("LerpCtrl"), &vs, &c, c.net());
        let vs = VarStore::new(Device::Cpu);
        let c = LerpTargetCtrl::new(&vs.root(), d, &cfg, sigma.clone(), 1.0).unwrap();
        check_taped_head(&label("LerpTargetCtrl"), &vs, &c, c.0.net());
        let vs = VarStore::new(Device::Cpu);
        let c = LerpPriorCtrl::new(&vs.root(), d, &cfg, sigma.clone(), 1.0, 0.7).unwrap();
        check_taped_head(&label("LerpPriorCtrl"), &vs, &c, c.0.net());
    }
}

/// See [`taped_control_heads_match_autograd`]; `net` is the control's base network (clip
/// values c_m = 1, c_s = 1.5).
fn check_taped_head(name: &str, vs: &VarStore, ctrl: &dyn Control, net: &FourierMlp) {
    tch::manual_seed(9);
    randomize(vs);
    // Keep |s(t)| below c_m = 1, so that the head's gradient reaches s(t) at every step.
    tch::no_grad(|| {
        for (k, mut v) in vs.variables() {
            if k.starts_with("scale.out") {
                let _ = v.g_mul_scalar_(0.1);
            }
        }
    });
    let d = 3;
    let params = ctrl.parameters();
    let ts = [0.0, 0.3, 0.6, 0.9];
    let times = [0.0, 0.3, 0.6, 0.9, 0.45]; // 0.45 is not prepared
    let xs: Vec<Tensor> = (0..5).map(|_| Tensor::randn([29, d], CPU) * 2.0).collect();
    let scores: Vec<Tensor> = (0..5).map(|_| Tensor::randn([29, d], CPU) * 2.0).collect();
    let cots: Vec<Tensor> = (0..5).map(|_| Tensor::randn([29, d], CPU)).collect();
    // Both clamps must be active somewhere, else the masks go untested.
    let nn_clipped = tch::no_grad(|| {
        (0..5)
            .map(|k| {
                let y = net.forward_rows(&Tensor::full([29], times[k], CPU), &xs[k]);
                y.abs().gt(1.0).sum(Kind::Int64).int64_value(&[])
            })
            .sum::<i64>()
    });
    assert!(nn_clipped > 0, "{name}: the network's clip is never active");
    let score_clipped = scores[1].abs().gt(1.5).sum(Kind::Int64).int64_value(&[]);
    assert!(score_clipped > 0, "{name}: the score clip is never active");
    let run = |tape: bool| -> (Vec<Tensor>, Vec<Tensor>) {
        zero_grads(&params);
        ctrl.prepare_times(&ts);
        if tape {
            assert!(ctrl.start_tape());
        }
        let us: Vec<Tensor> = times
            .iter()
            .zip(xs.iter().zip(&scores))
            .map(|(&t, (x, sc))| ctrl.eval(t, x, Some(sc)))
            .collect();
        // In tape mode the values at prepared times are single leaves (the native head).
        let leaves: Vec<bool> = us.iter().map(|u| u.is_leaf()).collect();
        assert_eq!(leaves, [tape, tape, tape, tape, false], "{name}: tape path");
        dot_loss(&us, &cots).backward();
        if tape {
            ctrl.finish_tape();
        }
        ctrl.clear_times();
        (us.iter().map(|u| u.detach()).collect(), grads(&params))
    };
    let (v0, g0) = run(false);
    let (v1, g1) = run(true);
    // The native trunk's GEMM blocking and GELU round differently from autograd's; the
    // head's arithmetic is the tensor code's.
    assert_values_close(&v0, &v1, name);
    assert_grads_close(&g0, &g1, 2e-5, name);
    // Native inference (no autograd recording): the tape's values bit for bit at the
    // prepared times, libtorch's at the unprepared one; after end_inference, libtorch's
    // everywhere.
    let infer = |on: bool| -> Vec<Tensor> {
        tch::no_grad(|| {
            if on {
                assert!(
                    ctrl.start_inference(),
                    "{name}: no native inference on the CPU"
                );
            }
            ctrl.prepare_times(&ts);
            let us = times
                .iter()
                .zip(xs.iter().zip(&scores))
                .map(|(&t, (x, sc))| ctrl.eval(t, x, Some(sc)))
                .collect();
            ctrl.clear_times();
            if on {
                ctrl.end_inference();
            }
            us
        })
    };
    let vi = infer(true);
    for k in 0..5 {
        let want = if k < 4 { &v1[k] } else { &v0[k] };
        assert!(
            vi[k].equal(want),
            "{name}: native inference at t = {}",
            times[k]
        );
    }
    let differs = (0..4).any(|k| !v0[k].equal(&v1[k]));
    assert!(
        differs,
        "{name}: the tape's values equal libtorch's bitwise (test is blind)"
    );
    let vo = infer(false);
    for k in 0..5 {
        assert!(
            vo[k].equal(&v0[k]),
            "{name}: after end_inference, t = {}",
            times[k]
        );
    }
    // Every parameter (trunk, time branch, phases, s(t)) receives a gradient.
    let zero = g1
        .iter()
        .filter(|g| g.abs().max().double_value(&[]) == 0.0)
        .count();
    assert_eq!(zero, 0, "{name}: {zero} parameters got no gradient");
}

/// Native inference on a batch larger than one block of rows (the trunk runs block by
/// block): the libtorch value to float32 rounding, every row written, and the native path
/// taken (the values are not libtorch's bit for bit), for ScoreCtrl with its score head.
#[test]
fn native_inference_in_row_blocks_matches_libtorch() {
    let _rng = rng_lock();
    let d = 3;
    tch::manual_seed(11);
    let vs = VarStore::new(Device::Cpu);
    let cfg = CtrlConfig {
        clip_model: 1.0,
        clip_score: 1.5,
        ..CtrlConfig::default()
    };
    let c = ScoreCtrl::new(&vs.root(), d, &cfg).unwrap();
    randomize(&vs);
    let ts = [0.0, 0.5];
    let x = Tensor::randn([2500, d], CPU) * 2.0;
    let score = Tensor::randn([2500, d], CPU) * 2.0;
    let eval = |native: bool| -> Vec<Tensor> {
        tch::no_grad(|| {
            if native {
                assert!(c.start_inference());
            }
            c.prepare_times(&ts);
            let us = ts.iter().map(|&t| c.eval(t, &x, Some(&score))).collect();
            c.clear_times();
            c.end_inference();
            us
        })
    };
    let (lib, nat) = (eval(false), eval(true));
    assert_values_close(&lib, &nat, "row blocks");
    for (a, b) in lib.iter().zip(&nat) {
        assert_eq!(a.size(), b.size());
        assert!(
            !a.equal(b),
            "native inference did not run (libtorch's values bit for bit)"
        );
        // The last block's rows are written too (a partial block of 452 rows).
        let tail = (a.narrow(0, 2048, 452) - b.narrow(0, 2048, 452))
            .abs()
            .max();
        assert!(tail.double_value(&[]) < 1e-4);
    }
}

/// A whole trainer batch through the direct LV path with the native trunk gives the
/// parameter gradients of the autograd direct path (large batches) and of the one-piece
/// replay (small ones), for DIS (LerpCtrl, time reversal) and PIS (ScoreCtrl, reference
/// SDE), LV and LV per initial point.
#[test]
fn direct_lv_with_native_trunk_matches_autograd() {
    let _rng = rng_lock();
    let target = ScaledGauss {
        dim: 3,
        mean: 0.5,
        std: 1.2,
        log_z: 0.3,
    };
    for loss in [LossKind::Lv, LossKind::LvTraj { k: 4 }] {
        for pis in [false, true] {
            let (meth, _vs, ctrl) = sampler(pis, 3, 30, 3);
            // rows 4: B·N above 8 × replay_rows, direct either way; rows 0: the reference is
            // the one-piece replay, and the native network still takes the direct path.
            let run = |native: bool, rows: usize| {
                path_grads(&meth, &target, ctrl.as_ref(), loss, native, rows)
            };
            for rows in [4, 0] {
                let reference = run(false, rows);
                let native = run(true, rows);
                // The replay sums the batch in another order than the direct paths: on the
                // scalar output bias of PIS's time network (LvTraj) the two autograd paths
                // themselves differ by 6.7e-5 relative in float32 (on an AMD EPYC VM), while
                // the native and the autograd direct path agree to 2.3e-6 there.
                let tol = if rows == 0 { 2e-4 } else { 5e-5 };
                assert_grads_close(
                    &reference,
                    &native,
                    tol,
                    &format!("{} {loss:?} rows {rows}", if pis { "PIS" } else { "DIS" }),
                );
            }
        }
    }
}

/// [`ScaledGauss`] with its score detached from the graph of x (as the generic autograd
/// score of spec §6.6): the adjoint path must then treat the score as a constant input, as
/// the graph path does.
struct DetachedScore(ScaledGauss);

impl Target for DetachedScore {
    fn name(&self) -> &str {
        "scaled_gauss_detached_score"
    }
    fn dim(&self) -> usize {
        self.0.dim
    }
    fn log_density(&self, x: &Tensor) -> Tensor {
        self.0.log_density(x)
    }
    fn score(&self, x: &Tensor) -> Tensor {
        self.0.score(&x.detach())
    }
    fn log_z(&self) -> Option<f64> {
        self.0.log_z()
    }
    fn domain(&self) -> Vec<(f64, f64)> {
        self.0.domain()
    }
}

/// [`ScaledGauss`] (score in the graph of x) with its closed-form Hessian–vector product
/// H v = −v/s²: the adjoint path takes it instead of autograd through the score.
struct ClosedFormHvp(ScaledGauss);

impl Target for ClosedFormHvp {
    fn name(&self) -> &str {
        "scaled_gauss_closed_form_hvp"
    }
    fn dim(&self) -> usize {
        self.0.dim
    }
    fn log_density(&self, x: &Tensor) -> Tensor {
        self.0.log_density(x)
    }
    fn score(&self, x: &Tensor) -> Tensor {
        self.0.score(x)
    }
    fn score_in_graph(&self) -> bool {
        true
    }
    fn score_hvp(&self, _x: &Tensor, v: &Tensor) -> Option<Tensor> {
        Some(v * (-1.0 / (self.0.std * self.0.std)))
    }
    fn log_z(&self) -> Option<f64> {
        self.0.log_z()
    }
    fn domain(&self) -> Vec<(f64, f64)> {
        self.0.domain()
    }
}

/// One KL-family batch of 32 on the graph path (`native` false) or the adjoint path
/// (asserted): the loss and the control's gradients.
fn kl_grads(
    meth: &Method,
    target: &dyn Target,
    ctrl: &dyn Control,
    loss: LossKind,
    native: bool,
) -> (f64, Vec<Tensor>) {
    let s = TrainSettings {
        batch: 32,
        native_trunk: native,
        kl_adjoint: native,
        ..TrainSettings::default()
    };
    let expect = if native {
        GradPath::Adjoint
    } else {
        GradPath::Graph
    };
    let check = |tr: &Trainer<'_>| assert_eq!(tr.grad_path(), expect);
    one_batch(meth, target, ctrl, loss, s, check)
}

/// KL and KL-Itô on the adjoint path (native trunk, no graph of the trajectory) give the
/// loss and the parameter gradients of autograd through the whole simulation: PIS
/// (ScoreCtrl, reference form: the reference control's x term), DIS (LerpCtrl: the head's x
/// and score terms), and RSMC's ou_dds kernel; with a score in the graph of x (the
/// Hessian–vector product of the adjoint, by autograd and in the target's closed form) and
/// with a detached score.
#[test]
fn kl_adjoint_matches_graph() {
    let _rng = rng_lock();
    let gauss = ScaledGauss {
        dim: 3,
        mean: 0.5,
        std: 1.2,
        log_z: 0.3,
    };
    let detached = DetachedScore(gauss.clone());
    let closed_form = ClosedFormHvp(gauss.clone());
    let targets: [(&dyn Target, &str); 3] = [
        (&gauss, "score in graph"),
        (&detached, "detached score"),
        (&closed_form, "closed-form Hv"),
    ];
    for (target, tname) in targets {
        for loss in [LossKind::Kl, LossKind::KlIto] {
            for pis in [false, true] {
                let (meth, _vs, ctrl) = sampler(pis, 3, 30, 3);
                let what = format!("{} {loss:?} {tname}", if pis { "PIS" } else { "DIS" });
                let (l0, g0) = kl_grads(&meth, target, ctrl.as_ref(), loss, false);
                let (l1, g1) = kl_grads(&meth, target, ctrl.as_ref(), loss, true);
                assert!(
                    (l0 - l1).abs() <= 1e-5 * (1.0 + l0.abs()),
                    "{what}: loss {l0} vs {l1}"
                );
                assert_grads_close(&g0, &g1, 1e-4, &what);
            }
        }
        tch::manual_seed(3);
        let vs = VarStore::new(Device::Cpu);
        let ctrl = ScoreCtrl::new(&vs.root(), 3, &CtrlConfig::default()).unwrap();
        randomize(&vs);
        let meth = Method::ou_dds(30, 2.0, 6.0).unwrap();
        let (l0, g0) = kl_grads(&meth, target, &ctrl, LossKind::Kl, false);
        let (l1, g1) = kl_grads(&meth, target, &ctrl, LossKind::Kl, true);
        assert!((l0 - l1).abs() <= 1e-5 * (1.0 + l0.abs()), "ou_dds {tname}");
        assert_grads_close(&g0, &g1, 1e-4, &format!("ou_dds KL {tname}"));
    }
}

/// RSMC's `ou_dds` kernel: the direct path (fused host update, with and without the native
/// trunk) gives the gradients of the one-piece replay, for the paper's LV and RSMC's biased
/// variance.
#[test]
fn ou_dds_direct_paths_match_replay() {
    let _rng = rng_lock();
    let target = ScaledGauss {
        dim: 3,
        mean: 0.5,
        std: 1.2,
        log_z: 0.3,
    };
    let meth = Method::ou_dds(30, 2.0, 6.0).unwrap();
    for loss in [LossKind::Lv, LossKind::LvBiased] {
        tch::manual_seed(3);
        let vs = VarStore::new(Device::Cpu);
        let ctrl = ScoreCtrl::new(&vs.root(), 3, &CtrlConfig::default()).unwrap();
        randomize(&vs);
        let run = |native: bool, rows: usize| path_grads(&meth, &target, &ctrl, loss, native, rows);
        let reference = run(false, 0);
        for (native, rows) in [(false, 4), (true, 4), (true, 0)] {
            assert_grads_close(
                &reference,
                &run(native, rows),
                5e-5,
                &format!("ou_dds {loss:?} native {native} rows {rows}"),
            );
        }
    }
}

/// Two and three batch shards give the gradients (and loss) of the unsharded batch, for the
/// direct LV path (native trunk and autograd), LV per initial point and the KL graph path,
/// with PIS and DIS; repeated sharded batches are bitwise equal; the parent control's
/// gradients come only from the sum over the forks (a fork leaking into them would double
/// them).
#[test]
fn batch_shards_match_one_batch() {
    let _rng = rng_lock();
    // n·d = 64·4 is a multiple of 16, so the sharded path's one noise draw equals the
    // per-step draws of the unsharded one.
    let target = ScaledGauss {
        dim: 4,
        mean: 0.5,
        std: 1.2,
        log_z: 0.3,
    };
    for pis in [false, true] {
        let (meth, _vs, ctrl) = sampler(pis, 4, 20, 5);
        let cases = [
            (LossKind::Lv, true, GradPath::Direct { native: true }),
            (LossKind::Lv, false, GradPath::Direct { native: false }),
            (
                LossKind::LvTraj { k: 4 },
                true,
                GradPath::Direct { native: true },
            ),
            (LossKind::Kl, true, GradPath::Adjoint),
            (LossKind::Kl, false, GradPath::Graph),
        ];
        for (loss, native, path) in cases {
            let run = |shards: usize| -> (f64, Vec<Tensor>) {
                let s = TrainSettings {
                    batch: 64,
                    replay_rows: 4, // the direct path without the native trunk too
                    native_trunk: native,
                    kl_adjoint: native,
                    batch_shards: shards,
                    ..TrainSettings::default()
                };
                let check = |tr: &Trainer<'_>| {
                    assert_eq!(tr.grad_path(), path);
                    assert_eq!(tr.shards(), shards);
                };
                one_batch(&meth, &target, ctrl.as_ref(), loss, s, check)
            };
            let what = format!(
                "{} {loss:?} native {native}",
                if pis { "PIS" } else { "DIS" }
            );
            let (l1, g1) = run(1);
            for shards in [2, 3] {
                let (ls, gs) = run(shards);
                assert!(
                    (l1 - ls).abs() <= 1e-5 * (1.0 + l1.abs()),
                    "{what}: loss {l1} vs {ls} with {shards} shards"
                );
                assert_grads_close(&g1, &gs, 5e-5, &format!("{what}, {shards} shards"));
            }
            let (la, ga) = run(2);
            let (lb, gb) = run(2);
            assert_eq!(la, lb, "{what}: sharded loss not reproducible");
            for (a, b) in ga.iter().zip(&gb) {
                assert!(
                    a.equal(b),
                    "{what}: sharded gradients not bitwise reproducible"
                );
            }
        }
    }
}

/// A fork evaluates exactly like its control, and gradients of its evaluations stay in its
/// own parameters.
#[test]
fn forks_share_values_not_gradients() {
    let _rng = rng_lock();
    tch::manual_seed(2);
    let vs = VarStore::new(Device::Cpu);
    let meth = Method::dis(10).unwrap();
    let sde = meth.sde;
    let ctrl = LerpCtrl::new(
        &vs.root(),
        3,
        &CtrlConfig::default(),
        std::sync::Arc::new(move |t| sde.sigma(t)),
        1.0,
        1.0,
    )
    .unwrap();
    // Default initialisation (randomised weights would saturate the clamps on 5 rows).
    let fork = ctrl.fork().expect("LerpCtrl forks");
    let (pp, fp) = (ctrl.parameters(), fork.parameters());
    assert_eq!(pp.len(), fp.len());
    for (a, b) in pp.iter().zip(&fp) {
        assert!(
            a.equal(b) && a.data_ptr() == b.data_ptr(),
            "fork does not share storage"
        );
    }
    let x = Tensor::randn([5, 3], CPU);
    let s = Tensor::randn([5, 3], CPU);
    let (y0, y1) = (ctrl.eval(0.3, &x, Some(&s)), fork.eval(0.3, &x, Some(&s)));
    assert!(y0.equal(&y1));
    zero_grads(&pp);
    (y1 * 2.0).sum(Kind::Float).backward();
    assert!(fp
        .iter()
        .any(|p| p.grad().defined() && p.grad().abs().max().double_value(&[]) > 0.0));
    assert!(pp
        .iter()
        .all(|p| !p.grad().defined() || p.grad().abs().max().double_value(&[]) == 0.0));
    // The parent's later updates are seen by the fork (shared storage).
    tch::no_grad(|| {
        for p in &pp {
            let _ = p.shallow_clone().g_add_scalar_(0.01);
        }
    });
    assert!(ctrl
        .eval(0.3, &x, Some(&s))
        .equal(&fork.eval(0.3, &x, Some(&s))));
}
