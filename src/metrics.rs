//! Classification metrics: accuracy, binary F1 (positive = class 1), macro and micro F1.

use serde_json::{json, Value};

/// Evaluation results over a table.
#[derive(Clone, Debug)]
pub struct EvalReport {
    /// Fraction of rows whose argmax equals the label.
    pub accuracy: f64,
    /// Binary F1 of class 1 (two labels only).
    pub f1: Option<f64>,
    /// Macro-averaged F1 (more than two labels).
    pub macro_f1: Option<f64>,
    /// Micro-averaged F1 (more than two labels).
    pub micro_f1: Option<f64>,
    /// Mean cross-entropy per row.
    pub loss: f64,
    /// Number of rows.
    pub rows: usize,
    /// Row counts by `[label][prediction]` (class indices).
    pub confusion: Vec<Vec<usize>>,
}

impl EvalReport {
    /// Computes the metrics from predictions, labels and the summed loss.
    pub fn new(preds: &[usize], labels: &[usize], num_labels: usize, loss_sum: f64) -> Self {
        let n = preds.len();
        let hits = preds.iter().zip(labels).filter(|(p, l)| p == l).count();
        let accuracy = hits as f64 / n.max(1) as f64;
        let f1_of = |c: usize| {
            let tp = preds.iter().zip(labels).filter(|(p, l)| **p == c && **l == c).count() as f64;
            let fp = preds.iter().zip(labels).filter(|(p, l)| **p == c && **l != c).count() as f64;
            let fn_ = preds.iter().zip(labels).filter(|(p, l)| **p != c && **l == c).count() as f64;
            if tp == 0.0 {
                0.0
            } else {
                2.0 * tp / (2.0 * tp + fp + fn_)
            }
        };
        let (f1, macro_f1, micro_f1) = if num_labels == 2 {
            (Some(f1_of(1)), None, None)
        } else {
            let macro_f1 = (0..num_labels).map(f1_of).sum::<f64>() / num_labels as f64;
            // Single-label micro F1 equals accuracy.
            (None, Some(macro_f1), Some(accuracy))
        };
        let mut confusion = vec![vec![0; num_labels]; num_labels];
        for (&p, &l) in preds.iter().zip(labels) {
            if p < num_labels && l < num_labels {
                confusion[l][p] += 1;
            }
        }
        EvalReport { accuracy, f1, macro_f1, micro_f1, loss: loss_sum / n.max(1) as f64, rows: n, confusion }
    }

    /// One human-readable line.
    pub fn summary(&self) -> String {
        let mut s = format!("accuracy {:.4}", self.accuracy);
        if let Some(f) = self.f1 {
            s += &format!(", f1 {f:.4}");
        }
        if let (Some(a), Some(b)) = (self.macro_f1, self.micro_f1) {
            s += &format!(", macro-f1 {a:.4}, micro-f1 {b:.4}");
        }
        s + &format!(", eval loss {:.4} ({} rows)", self.loss, self.rows)
    }

    /// The metrics by EasyNLP's names (`accuracy`, `f1` or `macro-f1` and `micro-f1`) and the
    /// evaluation loss (`loss`), in that order.
    pub fn named_metrics(&self) -> Vec<(&'static str, f64)> {
        let mut v = vec![("accuracy", self.accuracy)];
        v.extend(self.f1.map(|f| ("f1", f)));
        v.extend(self.macro_f1.map(|f| ("macro-f1", f)));
        v.extend(self.micro_f1.map(|f| ("micro-f1", f)));
        v.push(("loss", self.loss));
        v
    }

    /// The metrics as a JSON object.
    pub fn to_json(&self) -> Value {
        let mut v = json!({ "accuracy": self.accuracy, "eval_loss": self.loss, "rows": self.rows });
        if let Some(f) = self.f1 {
            v["f1"] = json!(f);
        }
        if let Some(f) = self.macro_f1 {
            v["macro_f1"] = json!(f);
        }
        if let Some(f) = self.micro_f1 {
            v["micro_f1"] = json!(f);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_multiclass() {
        let r = EvalReport::new(&[1, 1, 0, 0], &[1, 0, 0, 1], 2, 2.0);
        assert_eq!(r.accuracy, 0.5);
        assert!((r.f1.unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(r.loss, 0.5);
        assert_eq!(r.confusion, vec![vec![1, 1], vec![1, 1]]);
        let r = EvalReport::new(&[0, 1, 2, 2], &[0, 1, 2, 1], 3, 0.0);
        assert!((r.macro_f1.unwrap() - (1.0 + 2.0 / 3.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        assert_eq!(r.micro_f1, Some(0.75));
        assert_eq!(r.confusion, vec![vec![1, 0, 0], vec![0, 1, 1], vec![0, 0, 1]]);
    }
}
