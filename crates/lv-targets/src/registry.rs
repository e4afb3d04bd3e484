//! The target registry: names → constructors, summaries and mode centres.
//!
//! The built-in targets are a constant table. Targets defined outside this crate (a user's
//! own type, a Python callable of the `lv` package) join it for the life of the process
//! through [`register`], and are then found by [`by_name`] like the built-ins, so configs,
//! run folders, evaluation and sampling name them the same way.

use anyhow::{bail, Result};
use lv_core::Target;
use serde::Serialize;
use std::sync::{Arc, RwLock};

use crate::dw4::Dw4;
use crate::funnel::Funnel;
use crate::gmm::{Gauss, GaussianMixture};
use crate::lgcp::Lgcp;
use crate::mos::MixtureOfStudents;
use crate::rings::Rings;
use crate::robot::PlanarRobot4;
use crate::wells::{FabManyWell, ManyWell};

/// A registry entry's summary (for `lv targets`, tables and configs).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TargetInfo {
    /// Registry name.
    pub name: String,
    /// Dimension d.
    pub dim: usize,
    /// log Z where known (exact, by quadrature, or a literature reference: see the target docs).
    pub log_z: Option<f64>,
    /// Whether the target has an exact sampler.
    pub has_sampler: bool,
    /// Whether the target ships reference samples.
    pub has_reference_samples: bool,
    /// One-line description.
    pub description: String,
}

struct Entry {
    name: &'static str,
    description: &'static str,
    has_reference_samples: bool,
    build: fn() -> Result<Box<dyn Target>>,
}

fn boxed<T: Target + 'static>(t: T) -> Result<Box<dyn Target>> {
    Ok(Box::new(t))
}

const ENTRIES: &[Entry] = &[
    Entry {
        name: "gmm9",
        description: "paper: 9-mode Gaussian grid {-5,0,5}^2, variance 0.3, normalised",
        has_reference_samples: false,
        build: || boxed(GaussianMixture::gmm9()),
    },
    Entry {
        name: "funnel10",
        description: "paper: Neal's funnel d=10, x0~N(0,9), xi~N(0,e^x0), normalised",
        has_reference_samples: false,
        build: || boxed(Funnel::new(10)),
    },
    Entry {
        name: "funnel10_clip30",
        description: "later benchmarks: funnel10 with samples clipped to [-30,30]",
        has_reference_samples: false,
        build: || boxed(Funnel::clipped(10, 30.0)),
    },
    Entry {
        name: "mw5",
        description: "paper: many-well d=5, 5 wells, delta=4 (32 modes)",
        has_reference_samples: false,
        build: || boxed(ManyWell::mw5()),
    },
    Entry {
        name: "mw50",
        description: "paper: many-well d=50, 5 wells delta=2 + 45 Gaussian coordinates",
        has_reference_samples: false,
        build: || boxed(ManyWell::mw50()),
    },
    Entry {
        name: "dw1",
        description: "reference code: 1-D double well -((x-1.5)^2-2)^2",
        has_reference_samples: false,
        build: || boxed(ManyWell::dw1()),
    },
    Entry {
        name: "gauss",
        description: "reference code: 1-D Gaussian N(3,1), normalised",
        has_reference_samples: false,
        build: || boxed(Gauss::new()),
    },
    Entry {
        name: "rings",
        description: "reference code: 3 rings r in {1,3,5}, -100 min_k(|x|-r_k)^2, log Z by quadrature",
        has_reference_samples: false,
        build: || boxed(Rings::new()),
    },
    Entry {
        name: "lgcp",
        description: "reference code: log-Gaussian Cox process on the pines, 40x40 grid (d=1600)",
        has_reference_samples: false,
        build: || boxed(Lgcp::new()?),
    },
    Entry {
        name: "fab40",
        description: "paper: 40-mode GMM on [-40,40]^2 (torch seed 42), std softplus(1)",
        has_reference_samples: false,
        build: || boxed(GaussianMixture::fab40()?),
    },
    Entry {
        name: "gmm25",
        description: "later benchmarks: 25-mode Gaussian grid {-10,...,10}^2, variance 0.3",
        has_reference_samples: false,
        build: || boxed(GaussianMixture::gmm25()),
    },
    Entry {
        name: "manywell32",
        description: "later benchmarks: FAB ManyWell d=32 (16 blocks)",
        has_reference_samples: false,
        build: || boxed(FabManyWell::new(32)),
    },
    Entry {
        name: "manywell64",
        description: "later benchmarks: FAB ManyWell d=64 (32 blocks)",
        has_reference_samples: false,
        build: || boxed(FabManyWell::new(64)),
    },
    Entry {
        name: "gmm40_50d",
        description: "later benchmarks: GMM40 d=50, identity covariances (jax<0.5 means)",
        has_reference_samples: false,
        build: || boxed(GaussianMixture::gmm40(50)?),
    },
    Entry {
        name: "gmm40_2d",
        description: "later benchmarks: GMM40 d=2, identity covariances (jax<0.5 means)",
        has_reference_samples: false,
        build: || boxed(GaussianMixture::gmm40(2)?),
    },
    Entry {
        name: "gmm40_5d",
        description: "later benchmarks: GMM40 d=5, identity covariances (jax<0.5 means)",
        has_reference_samples: false,
        build: || boxed(GaussianMixture::gmm40(5)?),
    },
    Entry {
        name: "mos50",
        description: "later benchmarks: mixture of 10 Student-t (nu=2) products, d=50 (jax<0.5 locations)",
        has_reference_samples: false,
        build: || boxed(MixtureOfStudents::mos50()?),
    },
    Entry {
        name: "robot4",
        description: "later benchmarks: 10-link planar robot, 4 goals; reference samples (jax<0.5 set)",
        has_reference_samples: true,
        build: || boxed(PlanarRobot4::new()),
    },
    Entry {
        name: "dw4",
        description: "later benchmarks: DW-4, 4 particles in 2-D; reference samples (EFM test split, centred)",
        has_reference_samples: true,
        build: || boxed(Dw4),
    },
];

/// Targets added at run time by [`register`], in registration order.
static REGISTERED: RwLock<Vec<(String, Arc<dyn Target>)>> = RwLock::new(Vec::new());

/// Adds `target` to the registry of this process under its [`Target::name`], replacing an
/// earlier registration of that name.
///
/// Errors: the name of a built-in target, or a name that configs and folder names cannot
/// carry (empty, longer than 64 bytes, or with characters other than ASCII letters, digits
/// and `_ . : +`; `-` is excluded because preset rows split `<method>-<loss>-<target>`).
pub fn register(target: Arc<dyn Target>) -> Result<()> {
    let name = target.name().to_string();
    let ok = |c: char| c.is_ascii_alphanumeric() || "_.:+".contains(c);
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok) {
        bail!("target name `{name}`: use 1 to 64 ASCII letters, digits and `_ . : +` (no `-`)");
    }
    if ENTRIES.iter().any(|e| e.name == name) {
        bail!("target name `{name}` is a built-in target; choose another name");
    }
    let mut reg = REGISTERED.write().unwrap_or_else(|p| p.into_inner());
    reg.retain(|(n, _)| *n != name);
    reg.push((name, target));
    Ok(())
}

/// The registry names: the built-ins in registry order, then those added by [`register`].
pub fn names() -> Vec<String> {
    let reg = REGISTERED.read().unwrap_or_else(|p| p.into_inner());
    ENTRIES
        .iter()
        .map(|e| e.name.to_string())
        .chain(reg.iter().map(|(n, _)| n.clone()))
        .collect()
}

/// Builds the target registered as `name`; an unknown name is an error listing the known names.
pub fn by_name(name: &str) -> Result<Box<dyn Target>> {
    if let Some(e) = ENTRIES.iter().find(|e| e.name == name) {
        return (e.build)();
    }
    let reg = REGISTERED.read().unwrap_or_else(|p| p.into_inner());
    match reg.iter().find(|(n, _)| n == name) {
        Some((_, t)) => Ok(Box::new(Shared(t.clone()))),
        None => bail!(
            "unknown target `{name}`; known targets: {}",
            names().join(", ")
        ),
    }
}

/// A registered target handed out by [`by_name`]: every method forwards to the shared one.
struct Shared(Arc<dyn Target>);

impl Target for Shared {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn dim(&self) -> usize {
        self.0.dim()
    }
    fn log_density(&self, x: &tch::Tensor) -> tch::Tensor {
        self.0.log_density(x)
    }
    fn score(&self, x: &tch::Tensor) -> tch::Tensor {
        self.0.score(x)
    }
    fn score_in_graph(&self) -> bool {
        self.0.score_in_graph()
    }
    fn score_hvp(&self, x: &tch::Tensor, v: &tch::Tensor) -> Option<tch::Tensor> {
        self.0.score_hvp(x, v)
    }
    fn log_z(&self) -> Option<f64> {
        self.0.log_z()
    }
    fn domain(&self) -> Vec<(f64, f64)> {
        self.0.domain()
    }
    fn marginal_stds(&self) -> Option<Vec<f64>> {
        self.0.marginal_stds()
    }
    fn mode_centres(&self) -> Option<Vec<Vec<f64>>> {
        self.0.mode_centres()
    }
    fn sampler(&self) -> Option<&dyn lv_core::target::ExactSampler> {
        self.0.sampler()
    }
    fn reference_samples(&self) -> Option<Result<tch::Tensor>> {
        self.0.reference_samples()
    }
    fn zero_com(&self) -> Option<lv_core::subspace::ZeroCom> {
        self.0.zero_com()
    }
}

/// Summaries of all registered targets (builds each one; `lgcp` costs a 1600 × 1600 Cholesky).
/// A target whose embedded data fail to load is reported with `dim = 0` and the error in its
/// description (this does not happen for the shipped data; the tests build every target).
pub fn list() -> Vec<TargetInfo> {
    ENTRIES
        .iter()
        .map(|e| match (e.build)() {
            Ok(t) => TargetInfo {
                name: e.name.to_string(),
                dim: t.dim(),
                log_z: t.log_z(),
                has_sampler: t.sampler().is_some(),
                has_reference_samples: e.has_reference_samples,
                description: e.description.to_string(),
            },
            Err(err) => TargetInfo {
                name: e.name.to_string(),
                dim: 0,
                log_z: None,
                has_sampler: false,
                has_reference_samples: false,
                description: format!("failed to build: {err:#}"),
            },
        })
        .collect()
}

/// Mode centres of the registered target `name` ([`Target::mode_centres`]: component means of
/// the Gaussian mixtures, locations of `mos50`); `None` for other or unknown targets.
pub fn mode_centres(name: &str) -> Option<Vec<Vec<f64>>> {
    by_name(name).ok()?.mode_centres()
}
