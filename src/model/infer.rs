//! Running a classifier without gradients: per-row outputs, evaluation metrics, and the checks a
//! run makes before it.

use super::bert::ForwardCtx;
use super::classifier::Classifier;
use crate::data::batch::{bucketed_batches, make_batch, Example};
use crate::metrics::EvalReport;
use anyhow::{bail, Result};
use candle_core::{Device, D};

/// Per-row model outputs, in input order.
pub struct ModelOutputs {
    /// Raw logits.
    pub logits: Vec<Vec<f32>>,
    /// Softmax probabilities.
    pub probs: Vec<Vec<f32>>,
}

/// Logits and probabilities for `examples`, in their order, computed in length-bucketed batches
/// (no dropout, no autograd graph). Stops with `Interrupted` between batches once a signal arrived.
pub fn model_outputs(
    model: &Classifier,
    examples: &[Example],
    batch_size: usize,
    device: &Device,
) -> Result<ModelOutputs> {
    let ctx = ForwardCtx::eval();
    let lengths: Vec<usize> = examples.iter().map(|e| e.enc.ids.len()).collect();
    let mut logits_out = vec![Vec::new(); examples.len()];
    let mut probs_out = vec![Vec::new(); examples.len()];
    for idx in bucketed_batches(&lengths, batch_size, None) {
        crate::interrupt::check()?;
        let batch_rows: Vec<&Example> = idx.iter().map(|&i| &examples[i]).collect();
        let batch = make_batch(&batch_rows, device)?;
        let logits = model.forward(&batch, &ctx)?;
        let probs = candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec2::<f32>()?;
        for ((&i, l), p) in idx.iter().zip(logits.to_vec2::<f32>()?).zip(probs) {
            logits_out[i] = l;
            probs_out[i] = p;
        }
    }
    Ok(ModelOutputs { logits: logits_out, probs: probs_out })
}

/// Runs the model over `examples` (no dropout, no autograd graph) and computes the metrics.
pub fn evaluate_examples(
    model: &Classifier,
    examples: &[Example],
    batch_size: usize,
    num_labels: usize,
    device: &Device,
) -> Result<EvalReport> {
    let ctx = ForwardCtx::eval();
    let (mut preds, mut labels, mut loss_sum) = (Vec::new(), Vec::new(), 0f64);
    let lengths: Vec<usize> = examples.iter().map(|e| e.enc.ids.len()).collect();
    for idx in bucketed_batches(&lengths, batch_size, None) {
        let rows: Vec<&Example> = idx.iter().map(|&i| &examples[i]).collect();
        let batch = make_batch(&rows, device)?;
        let logits = model.forward(&batch, &ctx)?;
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?.to_vec2::<f32>()?;
        for (row, lp) in rows.iter().zip(&log_probs) {
            let label = row.label.expect("evaluation rows carry labels") as usize;
            loss_sum -= lp[label] as f64;
            preds.push(argmax(lp));
            labels.push(label);
        }
    }
    Ok(EvalReport::new(&preds, &labels, num_labels, loss_sum))
}

/// Index of the largest value (the first on ties).
pub fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, x)| if *x > v[best] { i } else { best })
}

/// `--sequence_length` must fit the model's position embeddings.
pub fn check_sequence_length(sequence_length: usize, max_positions: usize) -> Result<()> {
    if sequence_length > max_positions {
        bail!("--sequence_length={} exceeds the model's max_position_embeddings ({max_positions})", sequence_length);
    }
    Ok(())
}
