//! `lv-targets`: the target densities of Richter & Berner (ICLR 2024) and of the later
//! benchmarks that report log-variance (LV) numbers, implementing [`lv_core::Target`].
//!
//! Each target provides log ρ on a batch (`[n, d]` → `[n]`, in the input's kind and on its
//! device), its score (analytic and kept in the autograd graph where the spec gives one,
//! otherwise the trait's detached autograd default), log Z where known, a plotting/domain box,
//! and either an exact sampler (torch's global generator: seed with `tch::manual_seed`) or
//! shipped reference samples. All data are embedded (`include_str!`/`include_bytes!` of
//! `data/`, see `data/README.md` for provenance); nothing is read from disk at run time.
//!
//! | name | d | log Z | samples |
//! |---|---|---|---|
//! | `gmm9` | 2 | 0 | exact |
//! | `funnel10`, `funnel10_clip30` | 10 | 0 | exact (clipped to ±30 for the latter) |
//! | `mw5` | 5 | −0.5410555129 | exact (rejection) |
//! | `mw50` | 50 | 42.81724268 | exact (rejection) |
//! | `dw1` | 1 | 0.2930017367 | exact (rejection) |
//! | `gauss` | 1 | 0 | exact |
//! | `rings` | 2 | ≈ 2.30483 (quadrature) | exact (rejection) |
//! | `lgcp` | 1600 | 512.6 (literature) | none |
//! | `fab40` | 2 | 0 | exact |
//! | `gmm25` | 2 | 0 | exact |
//! | `manywell32`, `manywell64` | 32, 64 | 164.6956753, 329.3913506 | exact (rejection) |
//! | `gmm40_2d`, `gmm40_5d`, `gmm40_50d` | 2, 5, 50 | 0 | exact |
//! | `mos50` | 50 | 0 | exact |
//! | `robot4` | 10 | unknown | reference (10 000) |
//! | `dw4` | 8 | not defined | reference (10 000, centred) |

pub mod dw4;
pub mod funnel;
pub mod gmm;
pub mod lgcp;
pub mod mos;
pub mod registry;
pub mod rings;
pub mod robot;
mod util;
pub mod wells;

pub use dw4::{dw4_energy, remove_mean, Dw4};
pub use funnel::Funnel;
pub use gmm::{Gauss, GaussianMixture};
pub use lgcp::Lgcp;
pub use mos::MixtureOfStudents;
pub use registry::{by_name, list, mode_centres, names, register, TargetInfo};
pub use rings::Rings;
pub use robot::{end_effector, PlanarRobot4};
pub use wells::{FabManyWell, ManyWell};
