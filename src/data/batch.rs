//! Examples and batches: dynamic padding to the longest row of each batch, seeded batch order.

use super::tokenize::Encoded;
use crate::ops::upload;
use crate::rng::Rng;
use candle_core::{Device, Result, Tensor};

/// One model input row with its optional training targets.
#[derive(Clone, Debug)]
pub struct Example {
    /// Token and segment ids.
    pub enc: Encoded,
    /// Class id, when the table has labels.
    pub label: Option<u32>,
    /// Teacher logits for distillation.
    pub teacher_logits: Option<Vec<f32>>,
    /// The row's domain and instance weight (Meta-KD tables).
    pub domain: Option<DomainTag>,
}

/// A Meta-KD row's domain id (index into the domain list) and instance weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DomainTag {
    /// Domain id.
    pub domain: u32,
    /// Instance weight (the `weight` column).
    pub weight: f32,
}

/// Tensors of one batch, padded to its longest row.
#[derive(Debug)]
pub struct Batch {
    /// `[B, L]` u32 token ids (0 = padding).
    pub input_ids: Tensor,
    /// `[B, L]` u32 segment ids.
    pub token_type_ids: Tensor,
    /// `[B, L]` f32, 1 for real tokens.
    pub attention_mask: Tensor,
    /// `[B]` u32 class ids, when every row has a label.
    pub labels: Option<Tensor>,
    /// `[B, C]` f32 teacher logits, when every row has them.
    pub teacher_logits: Option<Tensor>,
    /// Each row's domain tag, when every row has one.
    pub domains: Option<Vec<DomainTag>>,
    /// Number of rows.
    pub size: usize,
    /// Number of real (non-padding) tokens.
    pub tokens: usize,
}

/// Builds the batch of `examples` (its tensors are counted [`upload`]s), padded to the longest (never beyond what the tokenizer truncated to).
pub fn make_batch(examples: &[&Example], device: &Device) -> Result<Batch> {
    let b = examples.len();
    let len = examples.iter().map(|e| e.enc.ids.len()).max().unwrap_or(0);
    let mut ids = vec![0u32; b * len];
    let mut types = vec![0u32; b * len];
    let mut mask = vec![0f32; b * len];
    for (r, e) in examples.iter().enumerate() {
        let n = e.enc.ids.len();
        ids[r * len..r * len + n].copy_from_slice(&e.enc.ids);
        types[r * len..r * len + n].copy_from_slice(&e.enc.type_ids);
        mask[r * len..r * len + n].iter_mut().for_each(|m| *m = 1.0);
    }
    let labels =
        examples.iter().map(|e| e.label).collect::<Option<Vec<u32>>>().map(|l| upload(l, b, device)).transpose()?;
    let teacher_logits = match examples.iter().map(|e| e.teacher_logits.as_deref()).collect::<Option<Vec<_>>>() {
        Some(rows) if b > 0 => {
            let c = rows[0].len();
            Some(upload(rows.concat(), (b, c), device)?)
        }
        _ => None,
    };
    Ok(Batch {
        input_ids: upload(ids, (b, len), device)?,
        token_type_ids: upload(types, (b, len), device)?,
        attention_mask: upload(mask, (b, len), device)?,
        labels,
        teacher_logits,
        domains: examples.iter().map(|e| e.domain).collect(),
        size: b,
        tokens: examples.iter().map(|e| e.enc.ids.len()).sum(),
    })
}

/// Rows per length bucket, in batches: rows are sorted by length within windows of this many
/// batches, so that each batch holds rows of similar length and pads little.
pub const BUCKET_BATCHES: usize = 50;

/// Length-bucketed batches. With `rng` (training): rows are shuffled, sorted by length within
/// windows of [`BUCKET_BATCHES`] batches, cut into batches, and the batches shuffled again, so
/// every epoch still mixes rows across buckets. Without (evaluate/predict): the same windows over
/// file order, deterministic. Callers that write rows out restore file order themselves.
pub fn bucketed_batches(lengths: &[usize], batch_size: usize, rng: Option<&mut Rng>) -> Vec<Vec<usize>> {
    let bs = batch_size.max(1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    let mut rng = rng;
    if let Some(r) = rng.as_deref_mut() {
        r.shuffle(&mut order);
    }
    let mut batches: Vec<Vec<usize>> = Vec::with_capacity(lengths.len().div_ceil(bs));
    for window in order.chunks_mut(bs * BUCKET_BATCHES) {
        window.sort_by_key(|&i| lengths[i]);
        batches.extend(window.chunks(bs).map(|c| c.to_vec()));
    }
    if let Some(r) = rng {
        r.shuffle(&mut batches);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `0..n` into batches of `batch_size` rows: in file order, or shuffled by `rng`.
    fn batch_indices(n: usize, batch_size: usize, rng: Option<&mut Rng>) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..n).collect();
        if let Some(rng) = rng {
            rng.shuffle(&mut order);
        }
        order.chunks(batch_size.max(1)).map(|c| c.to_vec()).collect()
    }

    #[test]
    fn pads_to_longest_row() {
        let ex = |n: usize, l: u32| Example {
            enc: Encoded { ids: vec![7; n], type_ids: vec![0; n] },
            label: Some(l),
            teacher_logits: None,
            domain: None,
        };
        let (a, b) = (ex(3, 0), ex(5, 1));
        let batch = make_batch(&[&a, &b], &Device::Cpu).unwrap();
        assert_eq!(batch.input_ids.dims(), &[2, 5]);
        let mask: Vec<Vec<f32>> = batch.attention_mask.to_vec2().unwrap();
        assert_eq!(mask[0], vec![1., 1., 1., 0., 0.]);
        assert_eq!(batch.tokens, 8);
        assert_eq!(batch_indices(5, 2, None), vec![vec![0, 1], vec![2, 3], vec![4]]);
    }

    #[test]
    fn buckets_group_similar_lengths_and_cover_every_row_once() {
        let lengths: Vec<usize> = (0..1000).map(|i| (i * 7919) % 97 + 3).collect();
        let mut rng = Rng::new(5);
        let batches = bucketed_batches(&lengths, 8, Some(&mut rng));
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        let padded: usize = batches.iter().map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap()).sum();
        let plain: usize = batch_indices(1000, 8, Some(&mut Rng::new(5)))
            .iter()
            .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap())
            .sum();
        assert!(padded * 10 < plain * 7, "bucketing pads {padded} tokens vs {plain}");
        let again = bucketed_batches(&lengths, 8, Some(&mut Rng::new(5)));
        assert_eq!(batches, again, "seeded");
        let other = bucketed_batches(&lengths, 8, Some(&mut Rng::new(6)));
        assert_ne!(batches, other);
    }
}
