//! `--emit-slurm`: a Slurm array script with one task per (row, seed), and the collect step.

use super::{repo_root, Job, ReproduceArgs};
use crate::run::write_atomic;
use anyhow::Result;
use std::path::Path;

pub(super) fn emit_slurm(dir: &Path, args: &ReproduceArgs, jobs: &[Job]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut list = String::new();
    // Paths relative to the repository root, so the script works in any checkout.
    let root = repo_root();
    for j in jobs {
        let config = j.config.strip_prefix(&root).unwrap_or(&j.config);
        list += &format!(
            "{} {} {} {}\n",
            config.display(),
            j.key,
            j.seed,
            j.dir.display()
        );
    }
    write_atomic(&dir.join("jobs.txt"), list.as_bytes())?;
    let script = format!(
        "#!/bin/bash\n#SBATCH --job-name=lv-{table}-{preset}\n#SBATCH --array=1-{n}\n#SBATCH --gres=gpu:1\n#SBATCH --cpus-per-task=4\n#SBATCH --time=24:00:00\n\
         # One (row, seed) per array index; run from the repository root after `cargo xtask setup`\n\
         # and `cargo build --release -p lv-bench`.\nset -euo pipefail\n\
         line=$(sed -n \"${{SLURM_ARRAY_TASK_ID}}p\" {jobs})\nread -r config row seed out <<< \"$line\"\n\
         mkdir -p \"$out\"\n\
         if [ -f \"$out/checkpoint.json\" ]; then\n  ./target/release/lv --device auto train --resume \"$out\" --quiet\nelse\n  ./target/release/lv --device auto train --config \"$config\" --row \"$row\" --set seed=$seed --out \"$out\" --quiet\nfi\n",
        table = args.table,
        preset = args.preset,
        n = jobs.len(),
        jobs = dir.join("jobs.txt").display()
    );
    write_atomic(&dir.join("job.sbatch"), script.as_bytes())?;
    let collect = format!(
        "#!/bin/bash\n# After the array finishes: build the summary and the markdown table.\n./target/release/lv reproduce --table {} --preset {} --collect-only\n",
        args.table, args.preset
    );
    write_atomic(&dir.join("collect.sh"), collect.as_bytes())?;
    println!(
        "wrote {} ({} array tasks), {} and {}",
        dir.join("job.sbatch").display(),
        jobs.len(),
        dir.join("jobs.txt").display(),
        dir.join("collect.sh").display()
    );
    Ok(())
}
