//! Composed configurations: a preset is one file, `configs/<preset>.toml`, whose rows are
//! named `<method>-<loss>-<target>` and resolved by layering tables:
//!
//! ```text
//! [base]              every key a run needs (a full run config without target/method/loss)
//! [methods.<method>]  keys that depend on the method only
//! [losses.<loss>]     … on the loss only
//! [targets.<target>]  … on the target only
//! [rows."<m>-<l>-<t>"] keys of one row
//! ```
//!
//! Resolution of row `m-l-t` (or `m-l-t-variant`, a named variant of target t): `method = m`,
//! `loss = l`, `target = t`, then base, `methods.m`, `losses.l`, `targets.t` and `rows."<row>"`
//! merged over it in that order (tables merge key by key, later values win; so a layer may
//! set the loss a row name stands for, e.g. the paper preset's `lv` rows train `lv_traj`),
//! then the `--set` overrides (a `targets.<t>.anneal` table enters the annealed methods'
//! rows only, `cmcd` and `scld`); the result is parsed strictly as a [`RunConfig`]. Any method, loss and target names compose; whether the
//! combination is valid is decided by [`RunConfig::validate`]. The resolved config is what a
//! run folder stores (`config.toml`) and what the tables hash for resuming.

use crate::config::{apply_override, deserialize_config, parse_toml, RunConfig};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The layers of a preset file.
#[derive(Clone, Debug)]
pub struct Preset {
    path: PathBuf,
    base: toml::Table,
    methods: toml::Table,
    losses: toml::Table,
    targets: toml::Table,
    rows: toml::Table,
}

/// Top-level keys of a preset file.
const SECTIONS: [&str; 5] = ["base", "methods", "losses", "targets", "rows"];

impl Preset {
    /// Whether `path` is a preset (a TOML file with a `[base]` table) rather than a plain run
    /// config.
    pub fn is_preset(path: &Path) -> Result<bool> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let table = parse_toml(&text).with_context(|| format!("config {}", path.display()))?;
        Ok(table.get("base").is_some_and(|b| b.is_table()))
    }

    /// Reads a preset file; unknown top-level keys and non-table sections are errors.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading preset {}", path.display()))?;
        Self::parse(&text, path)
    }

    /// A preset from its text; `origin` names it in errors (the file, or a shipped preset).
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        let path = origin;
        let mut table = parse_toml(text).with_context(|| format!("preset {}", path.display()))?;
        for key in table.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                bail!(
                    "preset {}: unknown section `{key}` (expected {})",
                    path.display(),
                    SECTIONS.join(", ")
                );
            }
        }
        let mut take = |name: &str| -> Result<toml::Table> {
            match table.remove(name) {
                None => Ok(toml::Table::new()),
                Some(toml::Value::Table(t)) => Ok(t),
                Some(_) => bail!("preset {}: `{name}` must be a table", path.display()),
            }
        };
        Ok(Preset {
            path: path.to_path_buf(),
            base: take("base")?,
            methods: take("methods")?,
            losses: take("losses")?,
            targets: take("targets")?,
            rows: take("rows")?,
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rows the file names explicitly (`[rows."…"]`), sorted.
    pub fn named_rows(&self) -> Vec<String> {
        let mut v: Vec<String> = self.rows.keys().cloned().collect();
        v.sort();
        v
    }

    /// The resolved TOML tree of row `row` (`<method>-<loss>-<target>`), before overrides.
    pub fn resolve_table(&self, row: &str) -> Result<toml::Table> {
        let mut parts = row.splitn(3, '-');
        let (Some(m), Some(l), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("row `{row}`: expected <method>-<loss>-<target>, e.g. pis-lv-gmm9");
        };
        // `<target>-<variant>`: a named variant (only its rows."…" entry differs).
        let t = rest.split('-').next().unwrap_or(rest);
        if m.is_empty() || l.is_empty() || t.is_empty() {
            bail!("row `{row}`: expected <method>-<loss>-<target>, e.g. pis-lv-gmm9");
        }
        let mut out = toml::Table::new();
        out.insert("method".into(), toml::Value::String(m.into()));
        out.insert("loss".into(), toml::Value::String(l.into()));
        out.insert("target".into(), toml::Value::String(t.into()));
        merge(&mut out, &self.base);
        let annealed = m
            .parse::<lv_core::method::MethodKind>()
            .is_ok_and(|k| k.is_annealed());
        for (section, name) in [
            (&self.methods, m),
            (&self.losses, l),
            (&self.targets, t),
            (&self.rows, row),
        ] {
            match section.get(name) {
                None => {}
                // A target's `anneal` table is for the annealed methods of that target.
                Some(toml::Value::Table(layer))
                    if std::ptr::eq(section, &self.targets) && !annealed =>
                {
                    let mut layer = layer.clone();
                    layer.remove("anneal");
                    merge(&mut out, &layer);
                }
                Some(toml::Value::Table(layer)) => merge(&mut out, layer),
                Some(_) => bail!(
                    "preset {}: the entry for `{name}` must be a table",
                    self.path.display()
                ),
            }
        }
        Ok(out)
    }

    /// The run config of row `row` with `--set` overrides applied (parsed, not validated).
    pub fn resolve(&self, row: &str, overrides: &[String]) -> Result<RunConfig> {
        let mut value = toml::Value::Table(self.resolve_table(row)?);
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        deserialize_config(value)
            .with_context(|| format!("preset {}, row `{row}`", self.path.display()))
    }
}

/// Merges `layer` into `into`: tables recursively, other values replaced.
fn merge(into: &mut toml::Table, layer: &toml::Table) {
    for (k, v) in layer {
        match (into.get_mut(k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            _ => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The presets compiled into this library (`configs/<name>.toml` of the workspace at build
/// time), for users without a checkout: the Python package's `"quick/pis-lv-gmm9"`.
const SHIPPED: [(&str, &str); 3] = [
    ("quick", include_str!("../../../configs/quick.toml")),
    ("cpu", include_str!("../../../configs/cpu.toml")),
    ("paper", include_str!("../../../configs/paper.toml")),
];

impl Preset {
    /// The shipped preset `name` (`quick`, `cpu`, `paper`).
    pub fn shipped(name: &str) -> Result<Self> {
        match SHIPPED.iter().find(|(n, _)| *n == name) {
            Some((n, text)) => Self::parse(text, Path::new(&format!("configs/{n}.toml"))),
            None => bail!(
                "unknown preset `{name}`; shipped presets: {}",
                SHIPPED.map(|(n, _)| n).join(", ")
            ),
        }
    }
}

/// The preset file of a preset name (`configs/<name>.toml` under `root`) or a path.
pub fn preset_path(root: &Path, preset: &str) -> PathBuf {
    let p = Path::new(preset);
    if p.extension().is_some_and(|e| e == "toml") || p.components().count() > 1 {
        p.to_path_buf()
    } else {
        root.join("configs").join(format!("{preset}.toml"))
    }
}

/// A run config from `--config PATH [--row ROW]`: a preset needs a row, a plain config
/// refuses one.
pub fn load_run_config(path: &Path, row: Option<&str>, overrides: &[String]) -> Result<RunConfig> {
    match (Preset::is_preset(path)?, row) {
        (true, Some(row)) => Preset::load(path)?.resolve(row, overrides),
        (true, None) => bail!(
            "{} is a preset: name a row with --row <method>-<loss>-<target> (e.g. --row pis-lv-gmm9)",
            path.display()
        ),
        (false, Some(_)) => bail!(
            "--row needs a preset file (with a [base] table); {} is a plain run config",
            path.display()
        ),
        (false, None) => RunConfig::load(path, overrides),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRESET: &str = r#"
[base]
seed = 1
[base.train]
steps = 10
batch = 8
lr = 0.01
[base.eval]
n = 64
[methods.dis.train]
lr = 0.02
[losses.kl.train]
explore_scale = 1.0
[targets.mw5.eval]
n_metrics = 100
[rows."dis-kl-mw5".train]
steps = 30
"#;

    fn preset() -> Preset {
        let dir = std::env::temp_dir().join(format!("lv-preset-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("p.toml");
        std::fs::write(&p, PRESET).unwrap();
        Preset::load(&p).unwrap()
    }

    #[test]
    fn layers_merge_in_order() {
        let p = preset();
        let c = p.resolve("dis-kl-mw5", &[]).unwrap();
        assert_eq!((c.train.steps, c.train.batch, c.train.lr), (30, 8, 0.02));
        assert_eq!((c.eval.n, c.eval.n_metrics), (64, 100));
        assert_eq!(c.target, "mw5");
        let c = p
            .resolve("pis-lv-gmm9", &["train.batch=16".into()])
            .unwrap();
        assert_eq!((c.train.steps, c.train.batch, c.train.lr), (10, 16, 0.01));
        assert_eq!(
            c.eval.n_metrics,
            crate::config::EvalConfig::default().n_metrics
        );
        assert_eq!(p.named_rows(), vec!["dis-kl-mw5".to_string()]);
    }

    #[test]
    fn bad_rows_and_sections_are_named() {
        let p = preset();
        let e = format!("{:#}", p.resolve("pis-lv", &[]).unwrap_err());
        assert!(e.contains("<method>-<loss>-<target>"), "{e}");
        let e = format!("{:#}", p.resolve("mcmc-lv-gmm9", &[]).unwrap_err());
        assert!(e.contains("mcmc"), "{e}");
        let dir = std::env::temp_dir().join(format!("lv-preset-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bad.toml");
        std::fs::write(&f, "[base]\n[extra]\n").unwrap();
        let e = format!("{:#}", Preset::load(&f).unwrap_err());
        assert!(e.contains("unknown section `extra`"), "{e}");
        let e = format!("{:#}", load_run_config(&f, None, &[]).unwrap_err());
        assert!(e.contains("--row"), "{e}");
    }
}
