//! Device selection and runtime information about the linked libtorch.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tch::Device;

/// Which device to run on: `cpu`, `cuda` (the first GPU, an error if none) or `auto`
/// (the first GPU when CUDA is available, otherwise the CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Cuda,
    Auto,
}

impl FromStr for DeviceChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda),
            "auto" => Ok(Self::Auto),
            other => bail!("unknown device `{other}`: expected one of cpu, cuda, auto"),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Auto => "auto",
        })
    }
}

/// Resolves a [`DeviceChoice`] to a `tch::Device`, with a clear error when `cuda` is asked
/// for and libtorch sees no GPU.
pub fn select_device(choice: DeviceChoice) -> Result<Device> {
    select_device_with(choice, tch::Cuda::device_count())
}

/// [`select_device`] with the number of visible CUDA devices given (testable without a GPU).
pub fn select_device_with(choice: DeviceChoice, cuda_devices: i64) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(if cuda_devices > 0 {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
        DeviceChoice::Cuda => {
            if cuda_devices > 0 {
                Ok(Device::Cuda(0))
            } else {
                bail!(
                    "device `cuda` was requested, but libtorch sees no CUDA device \
                     (no GPU on this machine, no driver, or a CPU-only libtorch). \
                     Use `--device cpu` or `--device auto`."
                )
            }
        }
    }
}

/// Sets the intra-op thread count of libtorch. `0` keeps libtorch's default.
///
/// On small CPUs the default (one thread per core, plus inter-op threads) oversubscribes and
/// can make small-MLP training loops many times slower than one thread; callers choose.
pub fn set_threads(n: usize) {
    if n > 0 {
        tch::set_num_threads(n as i32);
    }
}

/// What `lv doctor` prints.
#[derive(Debug, Serialize)]
pub struct RuntimeInfo {
    pub torch_version: Option<String>,
    pub library_path: Option<PathBuf>,
    pub cuda_available: bool,
    pub cuda_devices: i64,
    pub cudnn_available: bool,
    pub threads: i32,
}

impl RuntimeInfo {
    pub fn collect() -> Self {
        // Touch libtorch so that its libraries are mapped before reading /proc/self/maps.
        let threads = tch::get_num_threads();
        let library_path = loaded_libtorch_dir();
        let torch_version = library_path
            .as_deref()
            .and_then(|lib| lib.parent())
            .and_then(|root| libtorch_version(root).ok());
        Self {
            torch_version,
            library_path,
            cuda_available: tch::Cuda::is_available(),
            cuda_devices: tch::Cuda::device_count(),
            cudnn_available: tch::Cuda::cudnn_is_available(),
            threads,
        }
    }

    /// A human-readable report.
    pub fn render(&self) -> String {
        let na = || "unknown".to_string();
        format!(
            "torch version : {}\nlibrary path  : {}\ncuda available: {}\ncuda devices  : {}\ncudnn         : {}\nthreads       : {}\n",
            self.torch_version.clone().unwrap_or_else(na),
            self.library_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(na),
            self.cuda_available,
            self.cuda_devices,
            self.cudnn_available,
            self.threads
        )
    }
}

/// The folder of the `libtorch_cpu.so` mapped into this process (Linux), if any.
pub fn loaded_libtorch_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
}

/// The version of a libtorch folder (its root, holding `lib/` and `include/`): read from
/// `build-version` (official libtorch archives) or `version.py` (the PyPI wheel).
pub fn libtorch_version(root: &Path) -> Result<String> {
    let bv = root.join("build-version");
    if bv.exists() {
        let s =
            std::fs::read_to_string(&bv).with_context(|| format!("reading {}", bv.display()))?;
        return Ok(s.trim().to_string());
    }
    let vp = root.join("version.py");
    let s = std::fs::read_to_string(&vp)
        .with_context(|| format!("no build-version or version.py in {}", root.display()))?;
    s.lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| v.trim().trim_matches('\'').trim_matches('"').to_string())
        .with_context(|| format!("no __version__ line in {}", vp.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_choices() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!("CUDA".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda);
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        let err = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(
            err.contains("tpu") && err.contains("cpu, cuda, auto"),
            "{err}"
        );
    }

    #[test]
    fn selection_without_gpu() {
        assert_eq!(
            select_device_with(DeviceChoice::Cpu, 0).unwrap(),
            Device::Cpu
        );
        assert_eq!(
            select_device_with(DeviceChoice::Auto, 0).unwrap(),
            Device::Cpu
        );
        let err = select_device_with(DeviceChoice::Cuda, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no CUDA device"), "{err}");
    }

    #[test]
    fn selection_with_gpu() {
        assert_eq!(
            select_device_with(DeviceChoice::Auto, 2).unwrap(),
            Device::Cuda(0)
        );
        assert_eq!(
            select_device_with(DeviceChoice::Cuda, 1).unwrap(),
            Device::Cuda(0)
        );
        assert_eq!(
            select_device_with(DeviceChoice::Cpu, 1).unwrap(),
            Device::Cpu
        );
    }

    #[test]
    fn real_selection_agrees_with_libtorch() {
        let n = tch::Cuda::device_count();
        let d = select_device(DeviceChoice::Auto).unwrap();
        assert_eq!(d == Device::Cpu, n == 0);
    }

    #[test]
    fn runtime_info_finds_the_linked_libtorch() {
        let info = RuntimeInfo::collect();
        let v = info.torch_version.expect("torch version found");
        assert!(v.starts_with("2.13.0"), "unexpected libtorch version {v}");
        assert!(info.threads >= 1);
        let path = info.library_path.expect("library path");
        assert!(path.join("libtorch_cpu.so").exists());
    }

    #[test]
    fn cuda_library_is_linked() {
        // The PyPI wheel is the CUDA build: libtorch_cuda must be mapped (tch-rs #907/#980),
        // otherwise a GPU machine would silently run on the CPU.
        let dir = loaded_libtorch_dir().expect("libtorch mapped");
        if dir.join("libtorch_cuda.so").exists() {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            assert!(
                maps.contains("libtorch_cuda.so"),
                "libtorch_cuda.so is not loaded"
            );
        }
    }
}
