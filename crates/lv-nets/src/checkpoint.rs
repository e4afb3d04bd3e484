//! Checkpoints: named tensors in the safetensors format, written atomically.
//!
//! [`save_tensors_atomic`] writes `<path>.tmp` and renames it over `path`, so a crash or a
//! failed write never leaves a truncated checkpoint and never touches the previous one.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// `<path>.tmp` (the suffix appended to the full file name).
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Writes `tensors` as safetensors to `path` via `<path>.tmp` and `std::fs::rename`.
/// Tensors are detached, moved to the CPU and made contiguous first. On error the temporary
/// file is removed and an existing file at `path` is left unchanged.
pub fn save_tensors_atomic(path: impl AsRef<Path>, tensors: &[(String, Tensor)]) -> Result<()> {
    let path = path.as_ref();
    let tmp = tmp_path(path);
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    let result = Tensor::write_safetensors(&cpu, &tmp)
        .with_context(|| format!("writing checkpoint {}", tmp.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, path).with_context(|| {
                format!(
                    "renaming checkpoint {} to {}",
                    tmp.display(),
                    path.display()
                )
            })
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads the named tensors of a safetensors file (on the CPU, in file order).
pub fn load_tensors(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>> {
    let path = path.as_ref();
    if !path.exists() {
        bail!("checkpoint {} does not exist", path.display());
    }
    Tensor::read_safetensors(path).with_context(|| {
        format!(
            "reading checkpoint {} (corrupt or not safetensors?)",
            path.display()
        )
    })
}

/// All variables of `vs` as named tensors, sorted by name (shallow handles).
pub fn var_store_tensors(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Copies named tensors into the same-named variables of `vs` (converted to each variable's
/// device and kind). Every variable of `vs` must be present with the same shape; names in
/// `tensors` that `vs` lacks are ignored. Returns the number of variables set.
pub fn load_into_var_store(vs: &VarStore, tensors: &[(String, Tensor)]) -> Result<usize> {
    let vars = var_store_tensors(vs);
    // Check everything before modifying anything.
    let mut pairs = Vec::with_capacity(vars.len());
    for (name, var) in vars {
        let Some((_, t)) = tensors.iter().find(|(n, _)| *n == name) else {
            bail!("tensor `{name}` missing from the checkpoint");
        };
        if t.size() != var.size() {
            bail!(
                "tensor `{name}`: checkpoint shape {:?}, model shape {:?}",
                t.size(),
                var.size()
            );
        }
        pairs.push((var, t));
    }
    tch::no_grad(|| {
        for (var, t) in &pairs {
            let mut var = var.shallow_clone();
            var.copy_(&t.to_device(var.device()).to_kind(var.kind()));
        }
    });
    Ok(pairs.len())
}

/// Saves all variables of `vs` atomically to `path`.
pub fn save_var_store(vs: &VarStore, path: impl AsRef<Path>) -> Result<()> {
    save_tensors_atomic(path, &var_store_tensors(vs))
}

/// Loads a file written by [`save_var_store`] (or any safetensors file holding every
/// variable of `vs`) into `vs`.
pub fn load_var_store(vs: &VarStore, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let tensors = load_tensors(path)?;
    load_into_var_store(vs, &tensors).with_context(|| format!("loading {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fourier::{FourierMlp, MlpConfig};
    use tch::Kind;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lv-nets-ckpt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_and_atomicity() {
        let _rng = lv_core::testing::rng_lock();
        let dir = temp_dir("rt");
        let path = dir.join("ckpt.safetensors");
        let a = Tensor::randn([3, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let b = Tensor::from_slice(&[1i64, 2, 3]);
        let t = vec![("a".to_string(), a.shallow_clone()), ("b".to_string(), b)];
        save_tensors_atomic(&path, &t).unwrap();
        assert!(!tmp_path(&path).exists());
        let back = load_tensors(&path).unwrap();
        assert_eq!(back.len(), 2);
        let ba = &back.iter().find(|(n, _)| n == "a").unwrap().1;
        assert!(ba.allclose(&a.detach(), 0.0, 0.0, false));
        let bb = &back.iter().find(|(n, _)| n == "b").unwrap().1;
        assert_eq!(Vec::<i64>::try_from(bb).unwrap(), vec![1, 2, 3]);

        // A failing write (non-existent directory) errors cleanly.
        let bad = dir.join("no_such_dir").join("x.safetensors");
        let err = save_tensors_atomic(&bad, &t).unwrap_err();
        assert!(format!("{err:#}").contains("x.safetensors.tmp"), "{err:#}");
        assert!(!bad.exists());

        // A failing rename (target is a non-empty directory) leaves no tmp file behind, and
        // a previous checkpoint is untouched by a failed write.
        let blocked = dir.join("blocked");
        std::fs::create_dir_all(blocked.join("inner")).unwrap();
        assert!(save_tensors_atomic(&blocked, &t).is_err());
        assert!(!tmp_path(&blocked).exists());
        assert!(blocked.join("inner").is_dir());
        let before = std::fs::read(&path).unwrap();
        let weird = vec![(
            "nc".to_string(),
            Tensor::randn([2, 3], (Kind::Float, Device::Cpu)).tr(),
        )];
        // Non-contiguous input is made contiguous, so this succeeds and replaces the file.
        save_tensors_atomic(&path, &weird).unwrap();
        assert_ne!(std::fs::read(&path).unwrap(), before);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_and_corrupt_files() {
        let dir = temp_dir("bad");
        let missing = dir.join("missing.safetensors");
        let err = load_tensors(&missing).unwrap_err().to_string();
        assert!(
            err.contains("missing.safetensors") && err.contains("does not exist"),
            "{err}"
        );
        let corrupt = dir.join("corrupt.safetensors");
        std::fs::write(&corrupt, b"not a safetensors file").unwrap();
        let err = format!("{:#}", load_tensors(&corrupt).unwrap_err());
        assert!(err.contains("corrupt.safetensors"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn var_store_load() {
        let _rng = lv_core::testing::rng_lock();
        let dir = temp_dir("vs");
        let path = dir.join("net.safetensors");
        let cfg = MlpConfig::default();
        let vs = VarStore::new(Device::Cpu);
        let net = FourierMlp::new(&vs.root(), 2, 2, &cfg).unwrap();
        crate::fourier::tests::randomize(&vs);
        save_var_store(&vs, &path).unwrap();

        let vs2 = VarStore::new(Device::Cpu);
        let net2 = FourierMlp::new(&vs2.root(), 2, 2, &cfg).unwrap();
        load_var_store(&vs2, &path).unwrap();
        let x = Tensor::randn([4, 2], (Kind::Float, Device::Cpu));
        assert!(net
            .forward_t(0.5, &x)
            .allclose(&net2.forward_t(0.5, &x), 0.0, 0.0, false));
        assert!(vs2.trainable_variables().iter().all(|t| t.requires_grad()));

        // Shape mismatch and missing names are errors.
        let vs3 = VarStore::new(Device::Cpu);
        let _net3 = FourierMlp::new(&vs3.root(), 3, 2, &cfg).unwrap();
        let err = format!("{:#}", load_var_store(&vs3, &path).unwrap_err());
        assert!(
            err.contains("input.weight") && err.contains("shape"),
            "{err}"
        );
        let vs4 = VarStore::new(Device::Cpu);
        let _net4 = FourierMlp::new(&(vs4.root() / "other"), 2, 2, &cfg).unwrap();
        let err = format!("{:#}", load_var_store(&vs4, &path).unwrap_err());
        assert!(err.contains("missing"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
