//! Running a classifier without gradients: per-row outputs, evaluation metrics, and the checks a
//! run makes before it. With several data-parallel workers each computes every `size`-th batch
//! of the same length-bucketed batches one worker computes, and every worker gathers all rows'
//! results: the same numbers as one worker, in input order.

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
    let batches = bucketed_batches(&lengths, batch_size, None);
    // Per row: its logits then its probabilities.
    let rows = sharded_rows(&batches, examples.len(), |idx| {
        crate::interrupt::check()?;
        let batch_rows: Vec<&Example> = idx.iter().map(|&i| &examples[i]).collect();
        let batch = make_batch(&batch_rows, device)?;
        let logits = model.forward(&batch, &ctx)?;
        let probs = candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec2::<f32>()?;
        Ok(logits.to_vec2::<f32>()?.into_iter().zip(probs).map(|(l, p)| [l, p].concat()).collect())
    })?;
    let (logits, probs) = rows
        .into_iter()
        .map(|mut row| {
            let probs = row.split_off(row.len() / 2);
            (row, probs)
        })
        .unzip();
    Ok(ModelOutputs { logits, probs })
}

/// Runs `compute` (per-row values of one batch, in its order) on this rank's batches (batch `k`
/// on rank `k % size`) and gathers every row's values on every rank: `out[i]` for example `i`
/// of `n`.
pub fn sharded_rows(
    batches: &[Vec<usize>],
    n: usize,
    mut compute: impl FnMut(&[usize]) -> Result<Vec<Vec<f32>>>,
) -> Result<Vec<Vec<f32>>> {
    let world = crate::dist::world();
    let mut out = vec![Vec::new(); n];
    let mut mine: Vec<u8> = Vec::new();
    for (k, idx) in batches.iter().enumerate() {
        if k % world.size() != world.rank() {
            continue;
        }
        for (&i, values) in idx.iter().zip(compute(idx)?) {
            if !world.is_distributed() {
                out[i] = values;
                continue;
            }
            mine.extend((i as u64).to_le_bytes());
            mine.extend((values.len() as u64).to_le_bytes());
            mine.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        }
    }
    if world.is_distributed() {
        for bytes in world.all_gather_bytes(&mine) {
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let (head, tail) = rest.split_at(16);
                let i = u64::from_le_bytes(head[..8].try_into().expect("8 bytes")) as usize;
                let len = u64::from_le_bytes(head[8..].try_into().expect("8 bytes")) as usize;
                let (values, tail) = tail.split_at(4 * len);
                out[i] = values.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
                rest = tail;
            }
        }
    }
    Ok(out)
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
    let batches = bucketed_batches(&lengths, batch_size, None);
    let log_probs = sharded_rows(&batches, examples.len(), |idx| {
        let rows: Vec<&Example> = idx.iter().map(|&i| &examples[i]).collect();
        let batch = make_batch(&rows, device)?;
        let logits = model.forward(&batch, &ctx)?;
        Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?.to_vec2::<f32>()?)
    })?;
    // Summed in the batches' order, as one worker sums them.
    for &i in batches.iter().flatten() {
        let lp = &log_probs[i];
        let label = examples[i].label.expect("evaluation rows carry labels") as usize;
        loss_sum -= lp[label] as f64;
        preds.push(argmax(lp));
        labels.push(label);
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
