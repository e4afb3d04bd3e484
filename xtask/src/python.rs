//! The Python packages: `cargo xtask wheel` builds them with maturin, and `cargo xtask test`
//! builds, installs and tests them (pytest) in the per-user torch venv of the libtorch setup.
//!
//! | package | crate | module |
//! |---|---|---|
//! | `lv-metrics` | crates/lv-metrics-py | `lv_metrics` (no libtorch) |
//! | `lv` | crates/lv-py | `lv` (links the libtorch of `torch==2.13.0`) |
//!
//! `cargo xtask wheel` builds release wheels. The test builds use cargo's dev profile, so
//! that they reuse what `cargo test --workspace` compiled (only pyo3 and the two binding
//! crates are built again); the dev profile optimises dependencies and lv-nets fully.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The tools and test dependencies installed into the venv, pinned (one `pip install`, redone
/// only when this list changes).
const TOOLS: &[&str] = &[
    "maturin==1.16.0",
    "pytest==9.2.0",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "pot==0.9.7.post1",
    // The JAX speed baseline (benches/baselines/jax_step.py) and its tests.
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "optax==0.2.8",
];

/// A Python package of the workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Package {
    /// `lv_metrics`: the metrics on NumPy arrays.
    LvMetrics,
    /// `lv`: targets, training, sampling and evaluation on torch tensors.
    Lv,
}

impl Package {
    pub const ALL: [Package; 2] = [Package::LvMetrics, Package::Lv];

    fn crate_dir(self) -> &'static str {
        match self {
            Package::LvMetrics => "crates/lv-metrics-py",
            Package::Lv => "crates/lv-py",
        }
    }

    /// The wheel's distribution name as maturin writes it in the file name.
    fn wheel_prefix(self) -> &'static str {
        match self {
            Package::LvMetrics => "lv_metrics-",
            Package::Lv => "lv-",
        }
    }
}

/// The cargo profile of a wheel build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Profile {
    Release,
    Dev,
}

#[derive(clap::Args, Debug)]
pub struct WheelArgs {
    /// Which packages (default: all).
    #[arg(long, value_enum)]
    pub package: Vec<Package>,
    /// Output folder of the wheels.
    #[arg(long, default_value = "target/wheels")]
    pub out: PathBuf,
}

/// `bin/<tool>` of the venv.
fn bin(venv: &Path, tool: &str) -> PathBuf {
    venv.join("bin").join(tool)
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {what}"))?;
    if !st.success() {
        bail!("{what} failed ({st})");
    }
    Ok(())
}

/// Installs [`TOOLS`] into the venv unless its marker already lists them.
fn ensure_tools(venv: &Path) -> Result<()> {
    let marker = venv.join(".lv-python-tools");
    let want = TOOLS.join("\n") + "\n";
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    eprintln!("python: pip install {}", TOOLS.join(" "));
    run(
        Command::new(bin(venv, "pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(TOOLS),
        "`pip install` of the Python build and test tools",
    )?;
    std::fs::write(&marker, want)?;
    Ok(())
}

/// Builds the wheel of `pkg` into `out`; returns its path.
fn build_wheel(
    root: &Path,
    venv: &Path,
    pkg: Package,
    out: &Path,
    profile: Profile,
) -> Result<PathBuf> {
    std::fs::create_dir_all(out)?;
    // Only the newest wheel of the package is kept, so the path below is unambiguous.
    for e in std::fs::read_dir(out)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(pkg.wheel_prefix()) && name.ends_with(".whl") {
            std::fs::remove_file(e.path())?;
        }
    }
    let manifest = root.join(pkg.crate_dir()).join("Cargo.toml");
    let profile = match profile {
        Profile::Release => ["--profile", "release"],
        Profile::Dev => ["--profile", "dev"],
    };
    run(
        Command::new(bin(venv, "maturin"))
            .args(["build", "--quiet"])
            .args(profile)
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--out")
            .arg(out)
            .current_dir(root),
        &format!("`maturin build` of {}", pkg.crate_dir()),
    )?;
    std::fs::read_dir(out)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(pkg.wheel_prefix()) && n.ends_with(".whl"))
        })
        .with_context(|| {
            format!(
                "maturin wrote no wheel for {} into {}",
                pkg.crate_dir(),
                out.display()
            )
        })
}

/// `cargo xtask wheel`.
pub fn wheel(root: &Path, args: &WheelArgs) -> Result<()> {
    let venv = crate::libtorch::venv()?;
    ensure_tools(&venv)?;
    let out = root.join(&args.out);
    let pkgs = if args.package.is_empty() {
        Package::ALL.to_vec()
    } else {
        args.package.clone()
    };
    for p in pkgs {
        let w = build_wheel(root, &venv, p, &out, Profile::Release)?;
        println!("{}", w.display());
    }
    Ok(())
}

/// The Python half of `cargo xtask test`: build and install every wheel into the venv, then
/// run each package's pytest suite.
pub fn test(root: &Path) -> Result<()> {
    let venv = crate::libtorch::venv()?;
    ensure_tools(&venv)?;
    let out = root.join("target").join("wheels");
    for p in Package::ALL {
        let w = build_wheel(root, &venv, p, &out, Profile::Dev)?;
        run(
            Command::new(bin(&venv, "pip"))
                .args([
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--force-reinstall",
                    "--no-deps",
                ])
                .arg(&w),
            &format!("`pip install {}`", w.display()),
        )?;
        let tests = root.join(p.crate_dir()).join("tests");
        // From outside the source tree, so that the installed package is imported, not the
        // `python/` folder.
        run(
            Command::new(bin(&venv, "python"))
                .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
                .arg(&tests)
                .current_dir(std::env::temp_dir()),
            &format!("pytest {}", tests.display()),
        )?;
    }
    Ok(())
}
