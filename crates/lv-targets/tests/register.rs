//! Targets registered at run time (`lv_targets::register`): found by name like the built-ins,
//! forwarded faithfully, and refused under built-in or malformed names. A test binary of its
//! own, because registration lasts for the process.

use lv_core::testing::ScaledGauss;
use lv_core::Target;
use lv_targets::{by_name, names, register};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// ScaledGauss under a chosen name.
struct Named(&'static str, ScaledGauss);

impl Target for Named {
    fn name(&self) -> &str {
        self.0
    }
    fn dim(&self) -> usize {
        self.1.dim()
    }
    fn log_density(&self, x: &Tensor) -> Tensor {
        self.1.log_density(x)
    }
    fn log_z(&self) -> Option<f64> {
        self.1.log_z()
    }
    fn domain(&self) -> Vec<(f64, f64)> {
        self.1.domain()
    }
}

fn gauss(name: &'static str, log_z: f64) -> Arc<dyn Target> {
    Arc::new(Named(
        name,
        ScaledGauss {
            dim: 3,
            mean: 1.0,
            std: 2.0,
            log_z,
        },
    ))
}

#[test]
fn registered_targets_are_found_forwarded_replaced_and_checked() {
    register(gauss("py:user_gauss", 0.5)).unwrap();
    let t = by_name("py:user_gauss").unwrap();
    assert_eq!(
        (t.name(), t.dim(), t.log_z()),
        ("py:user_gauss", 3, Some(0.5))
    );
    let x = Tensor::randn([5, 3], (Kind::Double, tch::Device::Cpu));
    let want = gauss("py:user_gauss", 0.5).log_density(&x);
    assert!(t.log_density(&x).allclose(&want, 0.0, 0.0, false));
    // The default score (autograd of log ρ) reaches the registered target.
    let s = t.score(&x);
    assert!(s.allclose(&(-(&x - 1.0) / 4.0), 1e-10, 1e-10, false));
    assert_eq!(names().last().map(String::as_str), Some("py:user_gauss"));
    assert!(names().iter().any(|n| n == "gmm9"));

    // Registering the name again replaces the target.
    register(gauss("py:user_gauss", 2.0)).unwrap();
    assert_eq!(by_name("py:user_gauss").unwrap().log_z(), Some(2.0));
    assert_eq!(names().iter().filter(|n| *n == "py:user_gauss").count(), 1);

    let e = register(gauss("gmm9", 0.0)).unwrap_err().to_string();
    assert!(e.contains("built-in"), "{e}");
    for bad in ["", "has space", "pis-lv", "é"] {
        let e = register(gauss(bad, 0.0)).unwrap_err().to_string();
        assert!(e.contains("target name"), "{bad}: {e}");
    }
    let e = by_name("py:never").err().expect("unknown name").to_string();
    assert!(
        e.contains("unknown target `py:never`") && e.contains("py:user_gauss"),
        "{e}"
    );
}
