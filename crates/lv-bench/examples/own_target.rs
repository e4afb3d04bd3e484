//! Train PIS with the log-variance loss on a density of your own, through the library:
//! `cargo run --release -p lv-bench --example own_target`.
//!
//! The target is an unnormalised Gaussian ρ(x) = exp(−|x − m|²/(2s²)) in d = 2 (so log Z =
//! log(2πs²) is known and the run can be checked); replace `log_density` by yours. The run
//! uses the library's training driver with the EMA and no files; it prints log Ẑ (importance
//! sampling and ELBO), the normalised ESS and the exact W2 to exact samples.

use anyhow::Result;
use lv_core::driver::{Driver, NoCheckpoint, NoObserver, Schedule};
use lv_core::estimate::evaluate;
use lv_core::loss::LossKind;
use lv_core::method::{Method, MethodKind};
use lv_core::sim::Controls;
use lv_core::train::{TrainSettings, Trainer};
use lv_core::Target;
use lv_nets::ctrl::{CtrlConfig, ScoreCtrl};
use lv_nets::ema::{Ema, EmaConfig};
use tch::{nn::VarStore, Device, Kind, Tensor};

const MEAN: [f64; 2] = [1.0, -1.0];
const STD: f64 = 0.8;

/// Your density: only log ρ up to a constant is needed (the score defaults to autograd).
struct ShiftedGauss;

impl Target for ShiftedGauss {
    fn name(&self) -> &str {
        "shifted_gauss"
    }
    fn dim(&self) -> usize {
        2
    }
    fn log_density(&self, x: &Tensor) -> Tensor {
        let m = Tensor::from_slice(&MEAN)
            .to_kind(x.kind())
            .to_device(x.device());
        ((x - m) / STD)
            .square()
            .sum_dim_intlist(-1, false, None::<Kind>)
            * -0.5
    }
    /// Known here only to check the run; `None` is fine for a real target.
    fn log_z(&self) -> Option<f64> {
        Some((2.0 * std::f64::consts::PI * STD * STD).ln())
    }
    fn domain(&self) -> Vec<(f64, f64)> {
        vec![(-4.0, 4.0); 2]
    }
}

/// What the example measured.
pub struct Summary {
    pub log_z_is: f64,
    pub log_z_elbo: f64,
    pub log_z_error: f64,
    pub ess: f64,
    pub w2: f64,
}

/// Trains and evaluates; `steps` optimizer steps of batch 128 on a 50-step grid.
pub fn run(steps: usize) -> Result<Summary> {
    tch::manual_seed(1);
    let target = ShiftedGauss;
    let method = Method::from_kind(MethodKind::Pis, 50)?;
    let vs = VarStore::new(Device::Cpu);
    let u = ScoreCtrl::new(&(vs.root() / "u"), 2, &CtrlConfig::default())?;
    let settings = TrainSettings {
        steps,
        batch: 128,
        lr_schedule: None,
        ..Default::default()
    };
    settings.check("train.")?;
    let controls = Controls::new(&u);
    let mut trainer = Trainer::new(
        &method,
        &target,
        controls,
        LossKind::Lv,
        settings,
        Device::Cpu,
        None,
    );
    let ema_cfg = EmaConfig {
        last_steps: steps as u64 / 4,
        ..Default::default()
    };
    let mut ema = Ema::from_var_store(&vs, &ema_cfg, steps as u64)?;
    let schedule = Schedule {
        steps,
        ..Default::default()
    };
    Driver::new(&mut trainer, schedule).run(&mut ema, &mut NoObserver, &mut NoCheckpoint)?;
    drop(trainer);
    ema.swap_in();
    let out = evaluate(&method, &target, controls, 4000, 4000, Device::Cpu, false);
    let ev = out.estimates;
    // The exact W2 between 1000 model samples and 1000 exact samples of the Gaussian.
    let to_nd = |t: &Tensor| -> Result<ndarray::Array2<f64>> {
        let t = t.to_kind(Kind::Double).contiguous();
        let v = Vec::<f64>::try_from(&t.view([-1]))?;
        Ok(ndarray::Array2::from_shape_vec(
            (t.size()[0] as usize, 2),
            v,
        )?)
    };
    let model = to_nd(&out.samples.narrow(0, 0, 1000))?;
    let exact =
        Tensor::randn([1000, 2], (Kind::Double, Device::Cpu)) * STD + Tensor::from_slice(&MEAN);
    let w2 = lv_metrics::w2_exact(model.view(), to_nd(&exact)?.view())?;
    let log_z = target.log_z().expect("known");
    Ok(Summary {
        log_z_is: ev.log_z_is,
        log_z_elbo: ev.log_z_elbo,
        log_z_error: (ev.log_z_is - log_z).abs(),
        ess: ev.ess,
        w2,
    })
}

fn main() -> Result<()> {
    let s = run(400)?;
    println!("log Z (IS)   {:.4}", s.log_z_is);
    println!("log Z (ELBO) {:.4}", s.log_z_elbo);
    println!("log Z error  {:.4}", s.log_z_error);
    println!("ESS          {:.3}", s.ess);
    println!("W2           {:.4}", s.w2);
    Ok(())
}
