//! The paper preset's KL rows draw 128 initial points × K = 16 trajectories, like its
//! `lv_traj` rows (spec §7/§8), as their headers say.

use lv_bench::preset::Preset;
use lv_core::sim::Controls;
use lv_core::train::Trainer;
use std::path::PathBuf;

fn preset(name: &str) -> Preset {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    Preset::load(&root.join(format!("configs/{name}.toml"))).unwrap()
}

/// Every row of every table resolves and validates at every preset.
#[test]
fn every_table_row_resolves_at_every_preset() {
    for name in ["quick", "cpu", "paper"] {
        let p = preset(name);
        for table in [
            "paper",
            "paper_ext",
            "benchmarks",
            "annealed",
            "annealed_benchmarks",
        ] {
            let spec = lv_bench::tables::load_table(table).unwrap();
            for r in &spec.rows {
                let row = format!("{}-{}-{}", r.method, r.loss, r.target);
                p.resolve(&row, &["device=\"cpu\"".into()])
                    .and_then(|c| c.validate().map(|_| ()))
                    .unwrap_or_else(|e| panic!("{name} {table} {row}: {e:#}"));
            }
        }
        for row in p.named_rows() {
            p.resolve(&row, &["device=\"cpu\"".into()])
                .and_then(|c| c.validate().map(|_| ()))
                .unwrap_or_else(|e| panic!("{name} {row}: {e:#}"));
        }
    }
}

#[test]
fn paper_kl_rows_repeat_initial_points() {
    let p = preset("paper");
    let mut kl_rows = 0;
    for m in ["pis", "dis", "dds", "bridge"] {
        for t in ["gmm9", "funnel10", "mw5", "mw50"] {
            let name = format!("{m}-kl-{t}");
            let res = p
                .resolve(&name, &["device=\"cpu\"".into()])
                .unwrap()
                .validate()
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(res.cfg.train.initial_repeats, 16, "{name}");
            kl_rows += 1;
            if name != "dis-kl-gmm9" {
                continue;
            }
            let b = lv_bench::run::build(&res).unwrap();
            let trainer = Trainer::new(
                b.method().unwrap(),
                b.target.as_ref(),
                Controls::new(b.u.as_ref()),
                res.loss,
                res.cfg.train.clone(),
                b.device,
                None,
            );
            assert_eq!(
                (trainer.initial_repeats(), trainer.batch_rows()),
                (16, 2048)
            );
            tch::manual_seed(5);
            let x0 = trainer.draw_initial();
            assert_eq!(x0.size(), vec![2048, 2]);
            let groups = x0.view([128, 16, 2]);
            // Within a group all rows equal its first; the 128 group heads are distinct.
            let heads = groups.select(1, 0);
            let spread = (&groups - heads.unsqueeze(1)).abs().max().double_value(&[]);
            assert_eq!(spread, 0.0);
            let v = Vec::<f32>::try_from(heads.contiguous().view([-1])).unwrap();
            let mut pairs: Vec<(u32, u32)> = v
                .chunks(2)
                .map(|c| (c[0].to_bits(), c[1].to_bits()))
                .collect();
            pairs.sort_unstable();
            pairs.dedup();
            assert_eq!(pairs.len(), 128);
        }
    }
    assert_eq!(kl_rows, 16);
}

/// Sendera et al.'s VarGrad rows explore as gfn-diffusion does at every preset: an extra
/// per-step std of 0.2 on the step's σ²Δt, decaying in std (λ₀ = √(1 + 0.04/(σ²Δt))), so
/// λ₀² = 5 on ManyWell (σ² = 1) and 1.8 on 25GMM (σ² = 5) with Δt = 0.01.
#[test]
fn vargrad_rows_explore_with_gfn_diffusions_extra_std() {
    use lv_core::train::{Exploration, ExploreDecay};
    for name in ["quick", "cpu", "paper"] {
        let p = preset(name);
        for (target, lambda_sq) in [("manywell32", 5.0), ("gmm25", 1.8)] {
            let row = format!("pis-vargrad-{target}");
            let c = p.resolve(&row, &["device=\"cpu\"".into()]).unwrap();
            let t = &c.train;
            assert_eq!(t.explore_decay, ExploreDecay::ExtraStd, "{name} {row}");
            let (sigma, t_end) = (c.sde.sigma.unwrap(), c.sde.t_end.unwrap());
            let dt = t_end / c.sde.steps as f64;
            assert!((dt - 0.01).abs() < 1e-15, "{name} {row}: Δt {dt}");
            let want = Exploration::gfn_scale(0.2, sigma, dt);
            assert!(
                (t.explore_scale - want).abs() < 1e-12 && (want * want - lambda_sq).abs() < 1e-9,
                "{name} {row}: λ₀ {} vs {want}",
                t.explore_scale
            );
            assert!(
                t.explore_steps > 0 && 2 * t.explore_steps == t.steps,
                "{name} {row}: decays over half of training"
            );
        }
    }
}
