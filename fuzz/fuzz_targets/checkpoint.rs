//! The checkpoint reader: `lv_nets::checkpoint::load_tensors` on arbitrary bytes written to
//! a temporary file, then what `lv train --resume` does with the result (read every tensor,
//! decode the embedded `meta.json` u8 tensor as JSON). `Ok` or `Err`, never a panic/abort.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn path() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        tch::set_num_threads(1);
        std::env::temp_dir().join(format!("lv-fuzz-ckpt-{}.safetensors", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let p = path();
    std::fs::write(p, data).expect("writing the fuzz input to a temporary file");
    let Ok(tensors) = lv_nets::checkpoint::load_tensors(p) else {
        return;
    };
    for (name, t) in &tensors {
        // Touch the data: size, dtype and a reduction over every element.
        let _ = (t.size(), t.kind(), t.numel());
        let _ = t
            .f_to_kind(tch::Kind::Double)
            .and_then(|d| d.f_sum(tch::Kind::Double));
        if name == "meta.json" {
            if let Ok(bytes) = Vec::<u8>::try_from(t) {
                let _ = serde_json::from_slice::<serde_json::Value>(&bytes);
            }
        }
    }
});
