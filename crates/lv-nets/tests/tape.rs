//! Tape mode (native trunk forward/backward, `Control::start_tape`) gives the gradients of
//! plain autograd: for the FourierMLP alone and for whole direct-LV trainer batches.

use lv_core::loss::LossKind;
use lv_core::method::Method;
use lv_core::sim::Controls;
use lv_core::testing::{assert_grads_close, rng_lock, ScaledGauss};
use lv_core::train::{GradPath, TrainSettings, Trainer};
use lv_core::Control;
use lv_nets::{CtrlConfig, FourierMlp, LerpCtrl, MlpConfig, ScoreCtrl};
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
        let net = FourierMlp::new(&vs.root(), d, d, &cfg);
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
            let outs: Vec<Tensor> = times
                .iter()
                .zip(&xs)
                .map(|(&t, x)| net.forward_t(t, x))
                .collect();
            let loss = outs
                .iter()
                .zip(&cs)
                .map(|(o, c)| (o.clamp(-2.0, 2.0) * c).sum(Kind::Float))
                .fold(Tensor::zeros([], CPU), |a, b| a + b);
            loss.backward();
            if tape {
                net.finish_tape();
            }
            net.clear_times();
            (outs.iter().map(|o| o.detach()).collect(), grads(&params))
        };
        let (v0, g0) = run(false);
        let (v1, g1) = run(true);
        for (a, b) in v0.iter().zip(&v1) {
            let err = (a - b).abs().max().double_value(&[]);
            let scale = a.abs().max().double_value(&[]);
            assert!(
                err < 2e-6 * (1.0 + scale),
                "width {width}: values differ by {err} (scale {scale})"
            );
        }
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
            let meth = if pis {
                Method::pis(30).unwrap()
            } else {
                Method::dis(30).unwrap()
            };
            tch::manual_seed(3);
            let vs = VarStore::new(Device::Cpu);
            let cfg = CtrlConfig::default();
            let ctrl: Box<dyn Control> = if pis {
                Box::new(ScoreCtrl::new(&vs.root(), 3, &cfg))
            } else {
                let sde = meth.sde;
                Box::new(LerpCtrl::new(
                    &vs.root(),
                    3,
                    &cfg,
                    Box::new(move |t| sde.sigma(t)),
                    1.0,
                    1.0,
                ))
            };
            randomize(&vs);
            let params = ctrl.parameters();
            // rows 4: B·N above 8 × replay_rows, direct either way; rows 0: the reference is
            // the one-piece replay, and the native network still takes the direct path.
            let run = |native: bool, rows: usize| -> Vec<Tensor> {
                let s = TrainSettings {
                    batch: 32,
                    replay_rows: rows,
                    native_trunk: native,
                    ..TrainSettings::default()
                };
                let mut tr = Trainer::new(
                    &meth,
                    &target,
                    Controls::new(ctrl.as_ref()),
                    loss,
                    s,
                    Device::Cpu,
                    None,
                );
                let expect = match (native, rows) {
                    (true, _) => GradPath::Direct { native: true },
                    (false, 0) => GradPath::Replay { chunk_rows: None },
                    (false, _) => GradPath::Direct { native: false },
                };
                assert_eq!(tr.grad_path(), expect);
                tr.adam.zero_grad();
                tch::manual_seed(11);
                let (l, _, done) = tr.batch_loss();
                if !done {
                    l.backward();
                }
                grads(&params)
            };
            for rows in [4, 0] {
                let reference = run(false, rows);
                let native = run(true, rows);
                assert_grads_close(
                    &reference,
                    &native,
                    5e-5,
                    &format!("{} {loss:?} rows {rows}", if pis { "PIS" } else { "DIS" }),
                );
            }
        }
    }
}
