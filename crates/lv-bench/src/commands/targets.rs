//! `lv targets`.

use anyhow::Result;

pub fn run(json: bool) -> Result<()> {
    let list = lv_targets::list();
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<16} {:>5} {:>14} {:>8} {:>10}  description",
        "name", "dim", "log Z", "sampler", "reference"
    );
    for t in &list {
        let log_z = t
            .log_z
            .map(|z| format!("{z:.6}"))
            .unwrap_or_else(|| "unknown".into());
        println!(
            "{:<16} {:>5} {:>14} {:>8} {:>10}  {}",
            t.name,
            t.dim,
            log_z,
            if t.has_sampler { "exact" } else { "-" },
            if t.has_reference_samples {
                "shipped"
            } else {
                "-"
            },
            t.description
        );
    }
    Ok(())
}
