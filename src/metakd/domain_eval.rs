//! Per-domain evaluation of tables with a `domain` column (the Meta-KD layout): every domain, their
//! macro average and all rows together, or one domain with `genre=<domain>`.

use super::tables::row_domains;
use crate::config::metakd::parse_domain_label;
use crate::config::run::RunConfig;
use crate::data::batch::{bucketed_batches, make_batch, Example};
use crate::data::table::Row;
use crate::logging;
use crate::metrics::EvalReport;
use crate::model::bert::ForwardCtx;
use crate::model::checkpoint::Checkpoint;
use crate::model::classifier::Classifier;
use crate::model::infer::{argmax, evaluate_examples, sharded_rows};
use anyhow::{bail, Result};
use candle_core::{Device, D};
use serde_json::{json, Value};

/// The outcome of one evaluated row.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct RowScore {
    /// Predicted class.
    pub pred: usize,
    /// True class.
    pub label: usize,
    /// Cross-entropy of the row.
    pub loss: f64,
}

/// Runs `model` over `examples` (no dropout) and scores every row, in `examples` order.
pub fn score_rows(
    model: &Classifier,
    examples: &[Example],
    batch_size: usize,
    device: &Device,
) -> Result<Vec<RowScore>> {
    let ctx = ForwardCtx::eval();
    let lengths: Vec<usize> = examples.iter().map(|e| e.enc.ids.len()).collect();
    // Data parallel: each worker computes its batches, every worker gets every row.
    let log_probs = sharded_rows(&bucketed_batches(&lengths, batch_size, None), examples.len(), |idx| {
        let rows: Vec<&Example> = idx.iter().map(|&i| &examples[i]).collect();
        let batch = make_batch(&rows, device)?;
        Ok(candle_nn::ops::log_softmax(&model.forward(&batch, &ctx)?, D::Minus1)?.to_vec2::<f32>()?)
    })?;
    Ok(examples
        .iter()
        .zip(&log_probs)
        .map(|(e, lp)| {
            let label = e.label.expect("evaluation rows carry labels") as usize;
            RowScore { pred: argmax(lp), label, loss: -(lp[label] as f64) }
        })
        .collect())
}

/// Metrics per domain (domains without rows left out), and over all rows.
#[derive(Clone, Debug)]
pub struct DomainReport {
    /// `(domain, metrics)` in domain-list order.
    pub domains: Vec<(String, EvalReport)>,
    /// All rows together.
    pub all: EvalReport,
}

const METRICS: [&str; 5] = ["accuracy", "f1", "macro_f1", "micro_f1", "eval_loss"];

impl DomainReport {
    /// Groups `scores` by `domain_of` (indices into `domains`).
    pub fn new(scores: &[RowScore], domain_of: &[usize], domains: &[String], num_labels: usize) -> Self {
        let report = |keep: &dyn Fn(usize) -> bool| {
            let picked: Vec<&RowScore> = scores.iter().enumerate().filter(|(i, _)| keep(*i)).map(|(_, s)| s).collect();
            let preds: Vec<usize> = picked.iter().map(|s| s.pred).collect();
            let labels: Vec<usize> = picked.iter().map(|s| s.label).collect();
            EvalReport::new(&preds, &labels, num_labels, picked.iter().map(|s| s.loss).sum())
        };
        let per = domains
            .iter()
            .enumerate()
            .filter(|(d, _)| domain_of.contains(d))
            .map(|(d, name)| (name.clone(), report(&|i| domain_of[i] == d)))
            .collect();
        DomainReport { domains: per, all: report(&|_| true) }
    }

    /// The macro average over domains of every metric, plus the number of domains and rows.
    pub fn average(&self) -> Value {
        let n = self.domains.len().max(1) as f64;
        let mut avg = serde_json::Map::new();
        let jsons: Vec<Value> = self.domains.iter().map(|(_, r)| r.to_json()).collect();
        for key in METRICS {
            let vals: Vec<f64> = jsons.iter().filter_map(|j| j[key].as_f64()).collect();
            if !vals.is_empty() && vals.len() == jsons.len() {
                avg.insert(key.into(), json!(vals.iter().sum::<f64>() / n));
            }
        }
        avg.insert("domains".into(), json!(self.domains.len()));
        avg.insert("rows".into(), json!(self.domains.iter().map(|(_, r)| r.rows).sum::<usize>()));
        Value::Object(avg)
    }

    /// `{"domains": {name: metrics}, "average": {...}, "all": {...}}`.
    pub fn to_json(&self) -> Value {
        let per: serde_json::Map<String, Value> = self.domains.iter().map(|(n, r)| (n.clone(), r.to_json())).collect();
        json!({ "domains": per, "average": self.average(), "all": self.all.to_json() })
    }

    /// `books 0.8125, dvd 0.7500, ..., average 0.7800` (accuracies).
    pub fn accuracy_line(&self) -> String {
        let mut parts: Vec<String> = self.domains.iter().map(|(n, r)| format!("{n} {:.4}", r.accuracy)).collect();
        if let Some(a) = self.average()["accuracy"].as_f64() {
            parts.push(format!("average {a:.4}"));
        }
        parts.join(", ")
    }

    /// A plain-text table: one line per domain, then the average and all rows.
    pub fn table(&self) -> String {
        let width = self.domains.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(7);
        let cell = |v: &Value, key: &str| v[key].as_f64().map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
        let keys: Vec<&str> = METRICS.iter().copied().filter(|k| self.all.to_json()[*k].is_number()).collect();
        let mut out = format!("{:<width$} {:>6}", "domain", "rows");
        for k in &keys {
            out += &format!(" {k:>10}");
        }
        out.push('\n');
        let mut line = |name: &str, v: &Value| {
            out += &format!("{name:<width$} {:>6}", v["rows"].as_u64().unwrap_or(0));
            for k in &keys {
                out += &format!(" {:>10}", cell(v, k));
            }
            out.push('\n');
        };
        for (n, r) in &self.domains {
            line(n, &r.to_json());
        }
        line("average", &self.average());
        line("all", &self.all.to_json());
        out
    }
}

/// The domain list of an evaluation: `domain_label` when given, else the checkpoint's `domains`
/// (a meta-teacher's config.json), else EasyNLP's four.
pub fn eval_domains(cfg: &RunConfig, ckpt: &Checkpoint) -> Result<Vec<String>> {
    if cfg.udp.get("domain_label").is_none() {
        if let Some(Value::Array(list)) = ckpt.config.raw.get("domains") {
            let names: Option<Vec<String>> = list.iter().map(|v| v.as_str().map(str::to_string)).collect();
            if let Some(names) = names.filter(|n| !n.is_empty()) {
                return Ok(names);
            }
        }
    }
    parse_domain_label(cfg.udp.get("domain_label"))
}

/// `--mode=evaluate` on a table with a `domain` column: every domain and their average, or the
/// domain named by `genre`. Returns the metrics as JSON (evaluate prints and writes them).
pub fn run_evaluate(
    cfg: &RunConfig,
    ckpt: &Checkpoint,
    model: &Classifier,
    rows: &[Row],
    examples: Vec<Example>,
    domain_column: usize,
    device: &Device,
) -> Result<serde_json::Value> {
    let table = cfg.last_table();
    let domains = eval_domains(cfg, ckpt)?;
    let domain_of = row_domains(rows, table, domain_column, &domains)?;
    let batch = cfg.args.micro_batch_size;
    let json = match cfg.udp.get("genre") {
        Some(genre) => {
            let Some(g) = domains.iter().position(|d| d == genre) else {
                bail!("--user_defined_parameters: genre={genre} is not one of the domains ({})", domains.join(","));
            };
            let picked: Vec<Example> =
                examples.into_iter().zip(&domain_of).filter(|(_, &d)| d == g).map(|(e, _)| e).collect();
            if picked.is_empty() {
                bail!("{}: no rows of domain `{genre}` (genre) to evaluate", table.display());
            }
            let report = evaluate_examples(model, &picked, batch, ckpt.labels.len(), device)?;
            logging::info(format!(
                "Evaluation of {} on {} (domain {genre}): {}",
                ckpt.dir.display(),
                table.display(),
                report.summary()
            ));
            let mut json = report.to_json();
            json["genre"] = json!(genre);
            json
        }
        None => {
            let scores = score_rows(model, &examples, batch, device)?;
            let report = DomainReport::new(&scores, &domain_of, &domains, ckpt.labels.len());
            logging::info(format!(
                "Evaluation of {} on {} per domain:\n{}",
                ckpt.dir.display(),
                table.display(),
                report.table().trim_end()
            ));
            report.to_json()
        }
    };
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_domain_and_averages_over_domains() {
        let s = |pred: usize, label: usize, loss: f64| RowScore { pred, label, loss };
        let scores = [s(0, 0, 0.1), s(1, 0, 1.0), s(1, 1, 0.2), s(0, 0, 0.3), s(1, 1, 0.4)];
        let domain_of = [0, 0, 0, 2, 2];
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let r = DomainReport::new(&scores, &domain_of, &names, 2);
        assert_eq!(r.domains.len(), 2, "domain b has no rows");
        assert_eq!(r.domains[0].0, "a");
        assert!((r.domains[0].1.accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.domains[1].1.accuracy, 1.0);
        let avg = r.average();
        assert!((avg["accuracy"].as_f64().unwrap() - (2.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
        assert_eq!(avg["rows"], 5);
        assert!((r.all.accuracy - 0.8).abs() < 1e-12);
        let j = r.to_json();
        assert!(j["domains"]["a"]["f1"].is_number() && j["domains"].get("b").is_none());
        assert!(r.table().contains("average") && r.accuracy_line().starts_with("a 0.6667"));
    }
}
