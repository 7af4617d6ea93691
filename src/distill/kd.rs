//! Vanilla KD: the loss
//! `alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)`.

use candle_core::Tensor;
use candle_nn::ops::log_softmax;

/// The vanilla KD loss over a batch: `alpha * T^2 * KL(batchmean) + (1 - alpha) * CE`.
/// `student` and `teacher` are `[B, C]` logits, `labels` `[B]` u32.
pub fn vanilla_kd_loss(
    student: &Tensor,
    teacher: &Tensor,
    labels: &Tensor,
    temperature: f64,
    alpha: f64,
) -> candle_core::Result<Tensor> {
    let (kd, ce) = vanilla_kd_terms(student, teacher, labels, temperature, alpha)?;
    kd + ce
}

/// The two terms of [`vanilla_kd_loss`]: `(alpha * T^2 * KL, (1 - alpha) * CE)`.
pub fn vanilla_kd_terms(
    student: &Tensor,
    teacher: &Tensor,
    labels: &Tensor,
    temperature: f64,
    alpha: f64,
) -> candle_core::Result<(Tensor, Tensor)> {
    let batch = student.dim(0)? as f64;
    let log_s = log_softmax(&(student / temperature)?, 1)?;
    let log_t = log_softmax(&(teacher.detach() / temperature)?, 1)?;
    let kl = (log_t.exp()? * (log_t - log_s)?)?.sum_all()?.affine(1.0 / batch, 0.0)?;
    let ce = candle_nn::loss::cross_entropy(student, labels)?;
    Ok((kl.affine(alpha * temperature * temperature, 0.0)?, ce.affine(1.0 - alpha, 0.0)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn example() -> (Tensor, Tensor, Tensor) {
        let d = Device::Cpu;
        let s = Tensor::new(&[[1.0f32, -0.5], [0.2, 0.3], [-1.5, 2.0]], &d).unwrap();
        let t = Tensor::new(&[[2.0f32, -1.0], [0.0, 0.5], [-0.5, 1.0]], &d).unwrap();
        let y = Tensor::new(&[0u32, 1, 0], &d).unwrap();
        (s, t, y)
    }

    #[test]
    fn matches_hand_computed_values() {
        // Computed independently in double precision from the formula (see the README).
        let expected = [
            (1.0, 0.0, 1.458_520_118_776_314_4),
            (1.0, 0.2, 1.186_428_009_215_681_4),
            (1.0, 1.0, 0.098_059_570_973_149_03),
            (5.0, 0.0, 1.458_520_118_776_314_4),
            (5.0, 0.2, 1.217_510_825_344_427_8),
            (5.0, 1.0, 0.253_473_651_616_880_96),
        ];
        let (s, t, y) = example();
        for (temp, alpha, want) in expected {
            let got = vanilla_kd_loss(&s, &t, &y, temp, alpha).unwrap().to_scalar::<f32>().unwrap() as f64;
            assert!((got - want).abs() < 1e-5, "T={temp} alpha={alpha}: {got} vs {want}");
            let (kd, ce) = vanilla_kd_terms(&s, &t, &y, temp, alpha).unwrap();
            let (kd, ce) = (kd.to_scalar::<f32>().unwrap() as f64, ce.to_scalar::<f32>().unwrap() as f64);
            // The CE term alone is (1 - alpha) * CE, CE being the alpha = 0 value.
            assert!((ce - (1.0 - alpha) * 1.458_520_118_776_314_4).abs() < 1e-5, "T={temp} alpha={alpha}: {ce}");
            assert!((kd + ce - want).abs() < 1e-5);
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (s, t, y) = example();
        for (temp, alpha) in [(1.0, 0.2), (5.0, 0.5), (2.0, 1.0)] {
            let var = Var::from_tensor(&s.to_dtype(candle_core::DType::F64).unwrap()).unwrap();
            let t64 = t.to_dtype(candle_core::DType::F64).unwrap();
            let loss = vanilla_kd_loss(var.as_tensor(), &t64, &y, temp, alpha).unwrap();
            let grad: Vec<Vec<f64>> = loss.backward().unwrap().get(var.as_tensor()).unwrap().to_vec2().unwrap();
            let base: Vec<Vec<f64>> = s.to_dtype(candle_core::DType::F64).unwrap().to_vec2().unwrap();
            let eps = 1e-6;
            for i in 0..3 {
                for j in 0..2 {
                    let at = |delta: f64| {
                        let mut m = base.clone();
                        m[i][j] += delta;
                        let x = Tensor::new(m, &Device::Cpu).unwrap();
                        vanilla_kd_loss(&x, &t64, &y, temp, alpha).unwrap().to_scalar::<f64>().unwrap()
                    };
                    let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                    assert!((fd - grad[i][j]).abs() < 1e-6, "T={temp} a={alpha} [{i},{j}]: {fd} vs {}", grad[i][j]);
                }
            }
        }
    }
}
