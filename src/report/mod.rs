//! `--mode=report`: the logs of one or more training runs drawn as one picture (`report.svg`,
//! `report.png`) and summed up in `report.md`: loss and learning rate against step, evaluation
//! metrics against step (runs overlaid), the confusion matrix of each run's best checkpoint on its
//! validation table, and, when the runs are vanilla KD runs that differ in temperature or alpha, a
//! heatmap of their best validation accuracy.
//!
//! Everything comes from each checkpoint directory's `log/metrics.jsonl` ([`crate::runlog`]),
//! `train_config.json` (the flags: KD settings, seed) and `label_mapping.json` (label names).

mod plot;

use crate::output::write_output;
use crate::runlog::{read_records, EvalRecord, Record, TrainRecord};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One training run, as its checkpoint directory tells it.
pub struct Run {
    /// A short name (the directory's name, or its path where names repeat).
    pub name: String,
    /// The log lines.
    pub train: Vec<TrainRecord>,
    /// The evaluations.
    pub evals: Vec<EvalRecord>,
    /// Label names in class-index order.
    pub labels: Vec<String>,
    /// Vanilla KD `(temperature, alpha)`, None for a run without KD.
    pub kd: Option<(f64, f64)>,
    /// The seed the run used.
    pub seed: Option<u64>,
}

impl Run {
    /// Reads the run trained into `dir`.
    pub fn load(dir: &Path, name: String) -> Result<Self> {
        if !dir.is_dir() {
            bail!("--checkpoint_dir: {} is not a directory", dir.display());
        }
        let records = read_records(dir)?;
        if records.is_empty() {
            bail!(
                "--checkpoint_dir: {} has no training log ({} is missing or empty): train into it with this \
                 version of easynlp first",
                dir.display(),
                dir.join(crate::runlog::LOG_DIR).join(crate::runlog::METRICS_FILE).display()
            );
        }
        let (mut train, mut evals) = (Vec::new(), Vec::new());
        for r in records {
            match r {
                Record::Train(t) => train.push(t),
                Record::Eval(e) => evals.push(e),
                Record::Start { .. } => {}
            }
        }
        let config = read_json(&dir.join("train_config.json"))?;
        let (kd, seed) = match &config {
            Some(c) => (kd_settings(c), c.get("seed_used").and_then(|v| v.as_u64())),
            None => (None, None),
        };
        let labels = match read_json(&dir.join("label_mapping.json"))? {
            Some(serde_json::Value::Object(map)) => {
                let mut pairs: Vec<(u64, String)> =
                    map.iter().filter_map(|(k, v)| v.as_u64().map(|i| (i, k.clone()))).collect();
                pairs.sort();
                pairs.into_iter().map(|(_, k)| k).collect()
            }
            _ => {
                let n = evals.first().map(|e| e.confusion.len()).unwrap_or(0);
                (0..n).map(|i| i.to_string()).collect()
            }
        };
        Ok(Run { name, train, evals, labels, kd, seed })
    }

    /// The evaluation that made the best model (the last one marked best).
    pub fn best(&self) -> Option<&EvalRecord> {
        self.evals.iter().rev().find(|e| e.best)
    }
}

/// A metric of an evaluation record.
pub fn metric(e: &EvalRecord, name: &str) -> Option<f64> {
    e.metrics.get(name).and_then(|v| v.as_f64())
}

/// `train_config.json` or None when the file is absent.
fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Vanilla KD `(temperature, alpha)` from the saved flags (EasyNLP's defaults 1 and 0.2).
fn kd_settings(config: &serde_json::Value) -> Option<(f64, f64)> {
    let udp = config.get("user_defined_parameters")?.as_str()?;
    let map: BTreeMap<&str, &str> = udp.split_whitespace().filter_map(|kv| kv.split_once('=')).collect();
    let on = map.get("enable_distillation").is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1"));
    if !on || map.get("type").is_some_and(|t| *t != "vanilla_kd") {
        return None;
    }
    let num = |k: &str, default: f64| map.get(k).and_then(|v| v.parse().ok()).unwrap_or(default);
    Some((num("temperature", 1.0), num("alpha", 0.2)))
}

/// Mean, sample standard deviation and count of best validation accuracies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 for one run).
    pub sd: f64,
    /// Runs.
    pub n: usize,
}

impl Spread {
    fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = if n > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
        Some(Spread { mean, sd: var.sqrt(), n })
    }

    fn text(&self) -> String {
        if self.n > 1 {
            format!("{:.4} ± {:.4} ({})", self.mean, self.sd, self.n)
        } else {
            format!("{:.4}", self.mean)
        }
    }
}

/// Best validation accuracy by KD temperature (rows) and alpha (columns), and of the runs
/// without KD, when the KD runs differ in their settings.
pub struct Heatmap {
    /// Temperatures, ascending.
    pub temperatures: Vec<f64>,
    /// Alphas, ascending.
    pub alphas: Vec<f64>,
    /// `[temperature][alpha]`.
    pub cells: Vec<Vec<Option<Spread>>>,
    /// The runs without KD.
    pub no_kd: Option<Spread>,
}

impl Heatmap {
    /// The heatmap of `runs`, or None when fewer than two KD settings are there.
    pub fn of(runs: &[Run]) -> Option<Self> {
        let mut by_cell: BTreeMap<(u64, u64), Vec<f64>> = BTreeMap::new();
        let mut no_kd = Vec::new();
        for run in runs {
            let Some(acc) = run.best().and_then(|e| metric(e, "accuracy")) else { continue };
            match run.kd {
                Some((t, a)) => by_cell.entry((t.to_bits(), a.to_bits())).or_default().push(acc),
                None => no_kd.push(acc),
            }
        }
        if by_cell.len() < 2 {
            return None;
        }
        let mut temperatures: Vec<f64> = by_cell.keys().map(|k| f64::from_bits(k.0)).collect();
        let mut alphas: Vec<f64> = by_cell.keys().map(|k| f64::from_bits(k.1)).collect();
        for v in [&mut temperatures, &mut alphas] {
            v.sort_by(f64::total_cmp);
            v.dedup();
        }
        let cells = temperatures
            .iter()
            .map(|t| {
                alphas.iter().map(|a| by_cell.get(&(t.to_bits(), a.to_bits())).and_then(|v| Spread::of(v))).collect()
            })
            .collect();
        Some(Heatmap { temperatures, alphas, cells, no_kd: Spread::of(&no_kd) })
    }

    /// The cell with the highest mean: `(temperature, alpha, spread)`.
    pub fn best_cell(&self) -> Option<(f64, f64, Spread)> {
        let mut best: Option<(f64, f64, Spread)> = None;
        for (i, row) in self.cells.iter().enumerate() {
            for (j, cell) in row.iter().enumerate() {
                if let Some(s) = cell {
                    if best.is_none_or(|b| s.mean > b.2.mean) {
                        best = Some((self.temperatures[i], self.alphas[j], *s));
                    }
                }
            }
        }
        best
    }
}

/// Names for the runs: the directories' names, or their paths where names repeat.
fn run_names(dirs: &[PathBuf]) -> Vec<String> {
    let short: Vec<String> = dirs
        .iter()
        .map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| d.display().to_string()))
        .collect();
    short
        .iter()
        .zip(dirs)
        .map(|(s, d)| if short.iter().filter(|o| *o == s).count() > 1 { d.display().to_string() } else { s.clone() })
        .collect()
}

/// `--mode=report`: reads the runs in `dirs` and writes `report.svg`, `report.png` and
/// `report.md` into `out` (created if missing).
pub fn run(dirs: &[PathBuf], out: &Path) -> Result<()> {
    let runs: Vec<Run> = dirs.iter().zip(run_names(dirs)).map(|(d, name)| Run::load(d, name)).collect::<Result<_>>()?;
    std::fs::create_dir_all(out).with_context(|| format!("--outputs: cannot create {}", out.display()))?;
    let heatmap = Heatmap::of(&runs);
    write_output(&out.join("report.svg"), "--outputs", plot::svg(&runs, heatmap.as_ref())?.as_bytes())?;
    write_output(&out.join("report.png"), "--outputs", &plot::png(&runs, heatmap.as_ref())?)?;
    write_output(&out.join("report.md"), "--outputs", markdown(&runs, heatmap.as_ref()).as_bytes())?;
    crate::logging::info(format!(
        "report of {} run{} in {}: report.md, report.svg, report.png",
        runs.len(),
        if runs.len() == 1 { "" } else { "s" },
        out.display()
    ));
    Ok(())
}

/// The summary: one row per run, the heatmap as a table, the confusion matrices.
fn markdown(runs: &[Run], heatmap: Option<&Heatmap>) -> String {
    let mut md = String::from("# Training report\n\n![loss, learning rate and metrics](report.png)\n\n");
    md += "| run | KD (T, alpha) | seed | steps | best step | best accuracy | f1 / macro-f1 | eval loss | last train loss |\n";
    md += "|---|---|---|---|---|---|---|---|---|\n";
    let num = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    for run in runs {
        let best = run.best();
        let steps = run.train.last().map(|t| t.step).max(run.evals.last().map(|e| e.step));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            run.name,
            run.kd.map(|(t, a)| format!("{t}, {a}")).unwrap_or_else(|| "no KD".into()),
            run.seed.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            steps.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            best.map(|e| e.step.to_string()).unwrap_or_else(|| "-".into()),
            num(best.and_then(|e| metric(e, "accuracy"))),
            num(best.and_then(|e| metric(e, "f1").or_else(|| metric(e, "macro_f1")))),
            num(best.and_then(|e| metric(e, "eval_loss"))),
            num(run.train.last().map(|t| t.loss)),
        );
    }
    if let Some(h) = heatmap {
        md += "\n## Best validation accuracy by temperature and alpha\n\nmean ± sample sd (runs) where a cell has several seeds.\n\n";
        md += &format!(
            "| temperature \\ alpha | {} |\n",
            h.alphas.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" | ")
        );
        md += &format!("|---|{}\n", "---|".repeat(h.alphas.len()));
        for (t, row) in h.temperatures.iter().zip(&h.cells) {
            let cells: Vec<String> = row.iter().map(|c| c.map(|s| s.text()).unwrap_or_else(|| "-".into())).collect();
            let _ = writeln!(md, "| {t} | {} |", cells.join(" | "));
        }
        if let Some(s) = h.no_kd {
            let _ = writeln!(md, "\nWithout KD: {}.", s.text());
        }
        if let Some((t, a, s)) = h.best_cell() {
            let _ = writeln!(md, "\nBest cell: temperature {t}, alpha {a}: {}.", s.text());
        }
    }
    md += "\n## Confusion matrices of the best checkpoints (rows: label, columns: prediction)\n";
    for run in runs {
        let Some(best) = run.best() else { continue };
        let _ = writeln!(
            md,
            "\n**{}** (step {}, {} rows)\n",
            run.name,
            best.step,
            best.confusion.iter().flatten().sum::<usize>()
        );
        let _ = writeln!(md, "| label \\ prediction | {} |", run.labels.join(" | "));
        md += &format!("|---|{}\n", "---|".repeat(run.labels.len()));
        for (label, row) in run.labels.iter().zip(&best.confusion) {
            let cells: Vec<String> = row.iter().map(|c| c.to_string()).collect();
            let _ = writeln!(md, "| {label} | {} |", cells.join(" | "));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kd_settings_come_from_the_saved_flags() {
        let c = |udp: &str| serde_json::json!({ "user_defined_parameters": udp });
        assert_eq!(kd_settings(&c("pretrain_model_name_or_path=x")), None);
        assert_eq!(
            kd_settings(&c("enable_distillation=True type=vanilla_kd temperature=5 alpha=0.9")),
            Some((5.0, 0.9))
        );
        assert_eq!(kd_settings(&c("enable_distillation=true")), Some((1.0, 0.2)));
        assert_eq!(kd_settings(&c("enable_distillation=True type=meta_kd")), None);
        let s = Spread::of(&[0.8, 0.9]).unwrap();
        assert!((s.mean - 0.85).abs() < 1e-12 && (s.sd - 0.070_710_678).abs() < 1e-6 && s.n == 2);
        let names = run_names(&[PathBuf::from("a/x"), PathBuf::from("b/x"), PathBuf::from("c/y")]);
        assert_eq!(names, ["a/x", "b/x", "y"]);
    }
}
