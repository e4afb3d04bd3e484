//! `Driver::interrupt`: asked after every step; `true` stops the run there with one
//! checkpoint, as `stop_after` does (the Python package's Ctrl-C and callback errors).

use lv_core::driver::{Averager, Checkpoint, Driver, Learner, NoAverage, NoObserver, Schedule};
use lv_core::loss::LossKind;
use lv_core::method::{Method, MethodKind};
use lv_core::sim::Controls;
use lv_core::testing::ScaledGauss;
use lv_core::train::{TrainSettings, Trainer};
use lv_nets::ctrl::{CtrlConfig, ScoreCtrl};
use std::cell::Cell;
use tch::{nn::VarStore, Device};

struct CountSaves(Vec<usize>);

impl Checkpoint for CountSaves {
    fn save(&mut self, t: &dyn Learner, _: &dyn Averager, _: f64) -> anyhow::Result<()> {
        self.0.push(t.counters().step);
        Ok(())
    }
}

#[test]
fn interrupt_stops_after_the_step_it_answers_true_with_a_checkpoint() {
    tch::manual_seed(0);
    let target = ScaledGauss {
        dim: 2,
        mean: 0.5,
        std: 1.0,
        log_z: 0.0,
    };
    let method = Method::from_kind(MethodKind::Pis, 10).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let u = ScoreCtrl::new(&(vs.root() / "u"), 2, &CtrlConfig::default()).unwrap();
    let settings = TrainSettings {
        steps: 50,
        batch: 16,
        lr_schedule: None,
        ..Default::default()
    };
    let mut trainer = Trainer::new(
        &method,
        &target,
        Controls::new(&u),
        LossKind::Lv,
        settings,
        Device::Cpu,
        None,
    );
    let asked = Cell::new(0);
    let stop = || {
        asked.set(asked.get() + 1);
        asked.get() == 3
    };
    let schedule = Schedule {
        steps: 50,
        checkpoint_every: 1000,
        ..Default::default()
    };
    let mut saves = CountSaves(Vec::new());
    let out = Driver::new(&mut trainer, schedule)
        .interrupt(Some(&stop))
        .run(&mut NoAverage, &mut NoObserver, &mut saves)
        .unwrap();
    assert!(!out.finished);
    assert_eq!(out.counters.step, 3);
    assert_eq!(asked.get(), 3);
    assert_eq!(saves.0, vec![3]);
}
