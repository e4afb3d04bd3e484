//! Shared build script for packages whose binaries, tests or benches may use a GPU.
//!
//! `torch-sys` names `libtorch_cuda` on the link line, but the linker's default `--as-needed`
//! drops it because no symbol from it is referenced directly; CUDA is then silently absent
//! at run time (tch-rs issues #907 and #980). Linking it with `--no-as-needed` keeps it, so
//! `Device::cuda_if_available()` sees the GPU when there is one. On a CPU-only libtorch
//! (no `libtorch_cuda.so`) nothing is added.
//!
//! When `LIBTORCH` points outside the repository (a user's own libtorch), its `lib` folder is
//! also added to the rpath, so plain `cargo run` works there too.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        return;
    };
    let mut root = PathBuf::from(&libtorch);
    if root.is_relative() {
        // Cargo's [env] `relative = true` already makes it absolute; be safe otherwise.
        let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
        root = manifest.join(root);
    }
    let lib = root.join("lib");
    println!(
        "cargo:rerun-if-changed={}",
        lib.join("libtorch_cuda.so").display()
    );
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    let in_repo = libtorch.ends_with(".libtorch") || libtorch.ends_with(".libtorch/");
    if !in_repo {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
