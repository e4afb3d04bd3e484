//! libtorch provisioning.
//!
//! tch 0.26.0 needs libtorch 2.13.0. The only source reachable here is PyPI's `torch==2.13.0`
//! wheel, whose `torch/include` and `torch/lib` form a valid libtorch (the CUDA build). So:
//!
//! 1. A `LIBTORCH` set by the user (pointing anywhere but this repo's `.libtorch`) is used as
//!    is, after a version check; nothing is installed.
//! 2. A `.libtorch` symlink that already points at a valid 2.13.0 libtorch: nothing to do.
//! 3. Otherwise a venv in the per-user cache `<cache>/lv/torch-2.13.0/venv` (reused across
//!    checkouts; `<cache>` is `$LV_CACHE_DIR`, else `$XDG_CACHE_HOME`, else `~/.cache`) gets
//!    `pip install torch==2.13.0` (once: a `.complete` marker is written after success), and
//!    `.libtorch` is pointed at its `site-packages/torch`.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The libtorch version tch 0.26.0 is built against.
pub const TORCH_VERSION: &str = "2.13.0";

/// A libtorch folder that passed the checks.
pub struct Libtorch {
    pub root: PathBuf,
    pub version: String,
}

/// Makes sure a valid libtorch exists for the build; see the module docs.
pub fn ensure(repo: &Path) -> Result<Libtorch> {
    let link = repo.join(".libtorch");
    if let Some(user) = user_libtorch(repo) {
        let version = check(&user).with_context(|| {
            format!(
                "LIBTORCH={} is not a usable libtorch {TORCH_VERSION}; unset LIBTORCH to let \
                 `cargo xtask setup` install one, or point it at libtorch {TORCH_VERSION}",
                user.display()
            )
        })?;
        eprintln!(
            "setup: using LIBTORCH={} (torch {version}); nothing installed",
            user.display()
        );
        return Ok(Libtorch {
            root: user,
            version,
        });
    }
    if let Ok(version) = check(&link) {
        eprintln!(
            "setup: .libtorch -> {} (torch {version}); nothing to do",
            target_of(&link)
        );
        return Ok(Libtorch {
            root: link,
            version,
        });
    }
    let venv = cache_dir()?
        .join(format!("torch-{TORCH_VERSION}"))
        .join("venv");
    let torch = match installed_torch(&venv) {
        Some(t) => t,
        None => install(&venv)?,
    };
    let version = check(&torch).with_context(|| {
        format!(
            "the torch installed in {} is not a usable libtorch",
            venv.display()
        )
    })?;
    relink(&link, &torch)?;
    eprintln!("setup: .libtorch -> {} (torch {version})", torch.display());
    Ok(Libtorch {
        root: link,
        version,
    })
}

/// The per-user venv holding `torch==2.13.0` (installed when missing), which the Python
/// packages are built and tested in: the `lv` package links the libtorch of the torch
/// installed beside it.
pub fn venv() -> Result<PathBuf> {
    let venv = cache_dir()?
        .join(format!("torch-{TORCH_VERSION}"))
        .join("venv");
    if installed_torch(&venv).is_none() {
        install(&venv)?;
    }
    Ok(venv)
}

/// `LIBTORCH` from the environment, unless it is this repo's own `.libtorch` (which cargo's
/// `[env]` sets for every `cargo run`, including `cargo xtask`).
fn user_libtorch(repo: &Path) -> Option<PathBuf> {
    let v = std::env::var_os("LIBTORCH")?;
    let p = PathBuf::from(v);
    let ours = repo.join(".libtorch");
    if p == ours || p == Path::new(".libtorch") {
        return None;
    }
    Some(p)
}

fn target_of(link: &Path) -> String {
    std::fs::read_link(link)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| link.display().to_string())
}

/// Checks that `root` holds a libtorch with headers and libraries, of version 2.13.0.
pub fn check(root: &Path) -> Result<String> {
    if !root.exists() {
        bail!("{} does not exist", root.display());
    }
    let lib = root.join("lib");
    for f in ["libtorch_cpu.so", "libc10.so"] {
        if !lib.join(f).exists() {
            bail!("{} has no lib/{f}", root.display());
        }
    }
    if !root.join("include").join("torch").exists() {
        bail!("{} has no include/torch headers", root.display());
    }
    let version = read_version(root)?;
    // The PyPI wheel says e.g. `2.13.0+cu130`.
    let base = version.split('+').next().unwrap_or(&version);
    if base != TORCH_VERSION {
        bail!(
            "{} is libtorch {version}, but tch 0.26.0 needs {TORCH_VERSION}. Fix: point LIBTORCH \
             at libtorch {TORCH_VERSION}, or unset it and run `cargo xtask setup`",
            root.display()
        );
    }
    Ok(version)
}

fn read_version(root: &Path) -> Result<String> {
    let bv = root.join("build-version");
    if bv.exists() {
        return Ok(std::fs::read_to_string(&bv)?.trim().to_string());
    }
    let vp = root.join("version.py");
    let text = std::fs::read_to_string(&vp).with_context(|| {
        format!(
            "{} has neither build-version nor version.py",
            root.display()
        )
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| v.trim().trim_matches('\'').trim_matches('"').to_string())
        .with_context(|| format!("no __version__ in {}", vp.display()))
}

/// The per-user cache folder `<cache>/lv`.
fn cache_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("LV_CACHE_DIR") {
        return Ok(PathBuf::from(d));
    }
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x),
        _ => {
            let home = std::env::var_os("HOME")
                .context("neither LV_CACHE_DIR, XDG_CACHE_HOME nor HOME is set")?;
            PathBuf::from(home).join(".cache")
        }
    };
    Ok(base.join("lv"))
}

/// `site-packages/torch` of a complete install in `venv`, if there is one.
fn installed_torch(venv: &Path) -> Option<PathBuf> {
    if !venv.join(".complete").exists() {
        return None;
    }
    let torch = site_packages(venv)?.join("torch");
    check(&torch).ok().map(|_| torch)
}

fn site_packages(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    std::fs::read_dir(&lib)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("python"))
        })
        .map(|p| p.join("site-packages"))
}

fn install(venv: &Path) -> Result<PathBuf> {
    let python = std::env::var("LV_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python).arg("--version").output();
    match out {
        Ok(o) if o.status.success() => {}
        _ => bail!(
            "`{python}` was not found: libtorch is installed from PyPI's torch=={TORCH_VERSION} \
             wheel with Python's venv and pip. Fix: install Python 3 (Debian: `apt-get install \
             python3 python3-venv python3-pip`), or set LIBTORCH to an existing libtorch \
             {TORCH_VERSION}"
        ),
    }
    if venv.exists() {
        eprintln!("setup: removing incomplete venv {}", venv.display());
        std::fs::remove_dir_all(venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    std::fs::create_dir_all(venv.parent().expect("venv has a parent"))?;
    eprintln!("setup: creating venv {}", venv.display());
    let st = Command::new(&python)
        .args(["-m", "venv"])
        .arg(venv)
        .status()
        .with_context(|| format!("running `{python} -m venv`"))?;
    if !st.success() {
        bail!(
            "`{python} -m venv {}` failed. Fix: install the venv module (Debian: `apt-get install \
             python3-venv`)",
            venv.display()
        );
    }
    let pip = venv.join("bin").join("pip");
    if !pip.exists() {
        bail!(
            "the venv at {} has no pip. Fix: install pip for {python} (Debian: `apt-get install \
             python3-pip`) and run `cargo xtask setup` again",
            venv.display()
        );
    }
    eprintln!("setup: pip install torch=={TORCH_VERSION} (about 4.7 GB with its CUDA libraries; once per machine)");
    let st = Command::new(&pip)
        .args([
            "install",
            "--disable-pip-version-check",
            "--no-input",
            &format!("torch=={TORCH_VERSION}"),
        ])
        .status()
        .context("running pip")?;
    if !st.success() {
        bail!(
            "`pip install torch=={TORCH_VERSION}` failed ({st}). Is PyPI reachable (proxy, \
             offline machine)? Fix the network and run `cargo xtask setup` again, or set \
             LIBTORCH to an existing libtorch {TORCH_VERSION}"
        );
    }
    let torch = site_packages(venv)
        .context("the venv has no lib/python*/site-packages")?
        .join("torch");
    check(&torch)?;
    std::fs::write(venv.join(".complete"), format!("torch=={TORCH_VERSION}\n"))?;
    Ok(torch)
}

/// Points the `.libtorch` symlink at `torch`, replacing a broken or stale one.
fn relink(link: &Path, torch: &Path) -> Result<()> {
    if link.symlink_metadata().is_ok() {
        if link.is_dir() && !link.symlink_metadata()?.file_type().is_symlink() {
            bail!(
                "{} is a real folder, not a symlink, and is not a valid libtorch {TORCH_VERSION}; \
                 move it away and run `cargo xtask setup` again",
                link.display()
            );
        }
        std::fs::remove_file(link).with_context(|| format!("removing {}", link.display()))?;
    }
    std::os::unix::fs::symlink(torch, link)
        .with_context(|| format!("creating symlink {} -> {}", link.display(), torch.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_libtorch(dir: &Path, version_py: &str) {
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        std::fs::create_dir_all(dir.join("include/torch")).unwrap();
        std::fs::write(dir.join("lib/libtorch_cpu.so"), b"").unwrap();
        std::fs::write(dir.join("lib/libc10.so"), b"").unwrap();
        std::fs::write(dir.join("version.py"), version_py).unwrap();
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lv-xtask-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn accepts_the_wheel_version_string() {
        let d = tmp("ok");
        fake_libtorch(&d, "__version__ = '2.13.0+cu130'\n");
        assert_eq!(check(&d).unwrap(), "2.13.0+cu130");
    }

    #[test]
    fn rejects_a_wrong_version_and_names_the_fix() {
        let d = tmp("old");
        fake_libtorch(&d, "__version__ = '2.5.1'\n");
        let e = check(&d).unwrap_err().to_string();
        assert!(
            e.contains("2.5.1") && e.contains("2.13.0") && e.contains("LIBTORCH"),
            "{e}"
        );
    }

    #[test]
    fn rejects_missing_libraries() {
        let d = tmp("nolib");
        std::fs::create_dir_all(&d).unwrap();
        assert!(check(&d)
            .unwrap_err()
            .to_string()
            .contains("libtorch_cpu.so"));
        assert!(check(&d.join("absent"))
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
    }

    #[test]
    fn relink_replaces_a_broken_symlink() {
        let d = tmp("link");
        std::fs::create_dir_all(&d).unwrap();
        let target = d.join("torch");
        fake_libtorch(&target, "__version__ = '2.13.0'\n");
        let link = d.join(".libtorch");
        std::os::unix::fs::symlink(d.join("gone"), &link).unwrap();
        relink(&link, &target).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), target);
        assert!(check(&link).is_ok());
    }
}
