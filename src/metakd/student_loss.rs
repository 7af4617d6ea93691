//! Building blocks of the Meta-KD student distillation (spec §5.7): the teacher-to-student layer
//! map, the domain-expertise weight, and the stage-1 loss weighted per instance. The student
//! training modes (`distill_stage=first|second`) are wired on top of these.

use anyhow::{bail, Result};
use candle_core::{Tensor, D};

/// Which teacher layer each student layer learns from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerMap {
    /// `(student layer, teacher layer)` pairs for attention probabilities (0-based layers).
    pub attention: Vec<(usize, usize)>,
    /// `(student hidden state, teacher hidden state)` pairs, index 0 = embedding output.
    pub hidden: Vec<(usize, usize)>,
}

/// EasyNLP's uniform map with `k = teacher_layers / student_layers`: student attention layer `j`
/// learns from teacher layer `j*k + k - 1` (the last of its block), student hidden state `j`
/// (0..=student_layers) from teacher hidden state `j*k`. The attention MSE also needs equal head
/// counts. Anything that cannot be mapped is an error that says why.
pub fn layer_map(
    teacher_layers: usize,
    student_layers: usize,
    teacher_heads: usize,
    student_heads: usize,
) -> Result<LayerMap> {
    if student_layers == 0 || teacher_layers < student_layers {
        bail!("cannot map a {teacher_layers}-layer teacher onto a {student_layers}-layer student: the student must have between 1 and {teacher_layers} layers");
    }
    if !teacher_layers.is_multiple_of(student_layers) {
        bail!(
            "cannot map a {teacher_layers}-layer teacher onto a {student_layers}-layer student: the teacher's layers must be a whole multiple of the student's (e.g. 6->3, 12->4)"
        );
    }
    if teacher_heads != student_heads {
        bail!("cannot match attention maps: the teacher has {teacher_heads} heads per layer, the student {student_heads}; they must be equal");
    }
    let k = teacher_layers / student_layers;
    Ok(LayerMap {
        attention: (0..student_layers).map(|j| (j, j * k + k - 1)).collect(),
        hidden: (0..=student_layers).map(|j| (j, j * k)).collect(),
    })
}

/// The domain-expertise weight `1 / (exp((1 - p)^2) + 1)` of an instance whose true label the
/// teacher predicts with probability `p` (0.269 at p = 0 up to 0.5 at p = 1).
pub fn domain_expertise_weight(p_true: f32) -> f32 {
    1.0 / (((1.0 - p_true) * (1.0 - p_true)).exp() + 1.0)
}

/// The stage-1 instance weights `f_i = (1 + w_i) * g_i` from prototype weights `w` and the
/// teacher's probabilities of the true labels.
pub fn instance_weights(prototype: &[f32], teacher_p_true: &[f32]) -> Vec<f32> {
    prototype.iter().zip(teacher_p_true).map(|(&w, &p)| (1.0 + w) * domain_expertise_weight(p)).collect()
}

/// [`instance_weights`] with tensor ops on the tensors' device (`[B]` f32 each): the same
/// arithmetic, so nothing is read back in a training step.
pub fn instance_weights_on_device(prototype: &Tensor, teacher_p_true: &Tensor) -> candle_core::Result<Tensor> {
    let q = teacher_p_true.affine(-1.0, 1.0)?;
    let g = (q.sqr()?.exp()? + 1.0)?.recip()?;
    prototype.affine(1.0, 1.0)?.mul(&g)
}

/// Mean squared error per instance: `[B, ...]` pairs -> `[B]` (mean over all but the first dim).
pub fn per_instance_mse(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let batch = a.dim(0)?;
    (a - b)?.sqr()?.reshape((batch, ()))?.mean(D::Minus1)
}

/// Mean squared error per instance over its real tokens only: `a`, `b` are hidden states
/// `[B, L, H]` or attention maps `[B, heads, L, L]` (a pair counts when query and key are both
/// real), `mask` `[B, L]` is 1 for a real token and 0 for padding. Padding adds nothing to the sum
/// or the count, so a row's loss does not depend on how far its batch is padded (EasyNLP pads
/// every batch to `--sequence_length` and averages the padding in).
pub fn masked_instance_mse(a: &Tensor, b: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let batch = a.dim(0)?;
    let tokens = mask.sum(1)?;
    let (weights, count) = match a.rank() {
        3 => (mask.unsqueeze(2)?, tokens.affine(a.dim(2)? as f64, 0.0)?),
        4 => (
            mask.unsqueeze(1)?.unsqueeze(3)?.broadcast_mul(&mask.unsqueeze(1)?.unsqueeze(2)?)?,
            tokens.sqr()?.affine(a.dim(1)? as f64, 0.0)?,
        ),
        r => candle_core::bail!("masked_instance_mse: a tensor of rank {r}, not [B, L, H] or [B, heads, L, L]"),
    };
    let sum = (a - b)?.sqr()?.broadcast_mul(&weights)?.reshape((batch, ()))?.sum(1)?;
    sum / count.clamp(1.0, f64::INFINITY)?
}

/// The stage-1 loss `mean_i( f_i * l_i )` with per-instance losses `l` `[B]` and weights `f` `[B]`:
/// each instance is weighted individually (EasyNLP scales the batch mean by `mean_i f_i`).
pub fn weighted_mean(losses: &Tensor, weights: &Tensor) -> candle_core::Result<Tensor> {
    losses.mul(&weights.detach())?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn instance_weights_on_the_device_match_the_host_version() {
        let d = Device::Cpu;
        let prototype = [0.0f32, 0.25, 1.0, 3.5, 0.7, 0.0];
        let p_true = [1.0f32, 0.0, 0.5, 0.123, 0.999, 1e-6];
        let host = instance_weights(&prototype, &p_true);
        let dev = instance_weights_on_device(&Tensor::new(&prototype, &d).unwrap(), &Tensor::new(&p_true, &d).unwrap())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (h, g) in host.iter().zip(&dev) {
            assert!((h - g).abs() <= 1e-6 * h.abs(), "host {h}, device {g}");
        }
    }

    #[test]
    fn uniform_layer_maps() {
        let m = layer_map(6, 3, 12, 12).unwrap();
        assert_eq!(m.attention, vec![(0, 1), (1, 3), (2, 5)]);
        assert_eq!(m.hidden, vec![(0, 0), (1, 2), (2, 4), (3, 6)]);
        let m = layer_map(12, 4, 12, 12).unwrap();
        assert_eq!(m.attention, vec![(0, 2), (1, 5), (2, 8), (3, 11)]);
        assert_eq!(m.hidden, vec![(0, 0), (1, 3), (2, 6), (3, 9), (4, 12)]);
        let e = layer_map(6, 4, 12, 12).unwrap_err().to_string();
        assert!(e.contains("whole multiple") && e.contains("6-layer teacher"), "{e}");
        assert!(layer_map(6, 3, 12, 8).unwrap_err().to_string().contains("heads"));
        assert!(layer_map(3, 6, 12, 12).is_err());
    }

    #[test]
    fn expertise_weight_formula() {
        assert!((domain_expertise_weight(1.0) - 0.5).abs() < 1e-7);
        let at0 = 1.0 / (1f32.exp() + 1.0);
        assert!((domain_expertise_weight(0.0) - at0).abs() < 1e-7);
        assert!((domain_expertise_weight(0.5) - 1.0 / (0.25f32.exp() + 1.0)).abs() < 1e-7);
        let f = instance_weights(&[0.5, 0.0], &[1.0, 0.0]);
        assert!((f[0] - 0.75).abs() < 1e-6 && (f[1] - at0).abs() < 1e-6);
    }

    #[test]
    fn stage1_loss_weights_each_instance() {
        let d = Device::Cpu;
        let a = Tensor::new(&[[1f32, 2.0], [0.0, 0.0], [3.0, 1.0]], &d).unwrap();
        let b = Tensor::new(&[[0f32, 2.0], [1.0, 1.0], [1.0, 1.0]], &d).unwrap();
        let l = per_instance_mse(&a, &b).unwrap();
        assert_eq!(l.to_vec1::<f32>().unwrap(), vec![0.5, 1.0, 2.0]);
        let w = Tensor::new(&[1f32, 1.0, 1.0], &d).unwrap();
        let w2 = Tensor::new(&[1f32, 1.0, 2.0], &d).unwrap();
        let base = weighted_mean(&l, &w).unwrap().to_scalar::<f32>().unwrap();
        let doubled = weighted_mean(&l, &w2).unwrap().to_scalar::<f32>().unwrap();
        // Doubling instance 2's weight adds exactly its loss / batch size.
        assert!((doubled - base - 2.0 / 3.0).abs() < 1e-6);
        // A batch-level scale (EasyNLP) would give mean(l) * mean(w) instead.
        assert!((doubled - (3.5 / 3.0) * (4.0 / 3.0)).abs() > 1e-3);
    }

    /// A row's masked MSE is the plain MSE over its real tokens, whatever padding follows them.
    #[test]
    fn masked_mse_ignores_padding() {
        let d = Device::Cpu;
        let mut rng = crate::rng::Rng::new(9);
        let mut rand = |shape: &[usize]| {
            let n: usize = shape.iter().product();
            Tensor::from_vec((0..n).map(|_| rng.uniform()).collect::<Vec<f32>>(), shape, &d).unwrap()
        };
        // Row 0 has 2 real tokens, row 1 has 3; the batch is padded to 4, then to 6.
        let (h, heads) = (5, 2);
        let (a, b) = (rand(&[2, 6, h]), rand(&[2, 6, h]));
        let (p, q) = (rand(&[2, heads, 6, 6]), rand(&[2, heads, 6, 6]));
        let mask = |len: usize| {
            let rows: Vec<f32> =
                [2usize, 3].iter().flat_map(|&n| (0..len).map(move |j| (j < n) as u8 as f32)).collect();
            Tensor::from_vec(rows, (2, len), &d).unwrap()
        };
        let at = |t: &Tensor, len: usize| -> Tensor {
            let mut t = t.narrow(t.rank() - 2, 0, len).unwrap();
            if t.rank() == 4 {
                t = t.narrow(3, 0, len).unwrap();
            }
            t.contiguous().unwrap()
        };
        for len in [4, 6] {
            let hid = masked_instance_mse(&at(&a, len), &at(&b, len), &mask(len)).unwrap().to_vec1::<f32>().unwrap();
            let att = masked_instance_mse(&at(&p, len), &at(&q, len), &mask(len)).unwrap().to_vec1::<f32>().unwrap();
            for (row, n) in [(0usize, 2usize), (1, 3)] {
                let real = |t: &Tensor| t.narrow(0, row, 1).unwrap();
                let want_h =
                    per_instance_mse(&at(&real(&a), n), &at(&real(&b), n)).unwrap().to_vec1::<f32>().unwrap()[0];
                let want_a =
                    per_instance_mse(&at(&real(&p), n), &at(&real(&q), n)).unwrap().to_vec1::<f32>().unwrap()[0];
                assert!((hid[row] - want_h).abs() < 1e-6, "len {len} row {row}: {} vs {want_h}", hid[row]);
                assert!((att[row] - want_a).abs() < 1e-6, "len {len} row {row}: {} vs {want_a}", att[row]);
            }
        }
    }
}
