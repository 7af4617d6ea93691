//! Vanilla KD: settings from `user_defined_parameters` and the loss
//! `alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)`.

use crate::cli::udp::UserParams;
use anyhow::{bail, Result};
use candle_core::Tensor;
use candle_nn::ops::log_softmax;
use std::path::PathBuf;

/// Where the teacher logits come from.
#[derive(Clone, Debug, PartialEq)]
pub enum TeacherSource {
    /// A logits file written by `--mode=predict --output_schema=logits`, joined by line.
    File {
        /// `logits_saved_path`.
        path: PathBuf,
    },
    /// A teacher checkpoint run during training (eval mode, no gradient).
    Online {
        /// `teacher_model_path`.
        dir: PathBuf,
    },
}

/// Vanilla KD settings.
#[derive(Clone, Debug, PartialEq)]
pub struct KdSettings {
    /// Softmax temperature T (>= 1).
    pub temperature: f64,
    /// Weight of the teacher term, in [0, 1].
    pub alpha: f64,
    /// Teacher logits source.
    pub source: TeacherSource,
    /// `logits_name`: the schema column that holds the logits (file route).
    pub logits_name: Option<String>,
}

impl KdSettings {
    /// Reads the KD keys; `None` unless `enable_distillation=True`.
    pub fn from_udp(udp: &UserParams) -> Result<Option<Self>> {
        if !udp.bool("enable_distillation", false)? {
            return Ok(None);
        }
        match udp.get("type") {
            Some("vanilla_kd") => {}
            Some(other) => bail!("--user_defined_parameters: type={other}: only vanilla_kd is supported"),
            None => bail!("--user_defined_parameters: enable_distillation=True needs type=vanilla_kd"),
        }
        let temperature = udp.float_in("temperature", 1.0, 1.0, 1e6)?;
        let alpha = udp.float_in("alpha", 0.2, 0.0, 1.0)?;
        let logits_name = udp.get("logits_name").map(str::to_string);
        let source = match (udp.get("logits_saved_path"), udp.get("teacher_model_path")) {
            (Some(path), _) => {
                if logits_name.is_none() {
                    bail!("--user_defined_parameters: logits_saved_path needs logits_name=<the logits column of --input_schema>");
                }
                TeacherSource::File { path: PathBuf::from(path) }
            }
            (None, Some(dir)) => TeacherSource::Online { dir: PathBuf::from(dir) },
            (None, None) => bail!(
                "--user_defined_parameters: vanilla_kd needs logits_saved_path=... with logits_name=... \
                 (teacher logits exported by --mode=predict --output_schema=logits), or teacher_model_path=..."
            ),
        };
        Ok(Some(KdSettings { temperature, alpha, source, logits_name }))
    }
}

/// The vanilla KD loss over a batch: `alpha * T^2 * KL(batchmean) + (1 - alpha) * CE`.
/// `student` and `teacher` are `[B, C]` logits, `labels` `[B]` u32.
pub fn vanilla_kd_loss(
    student: &Tensor,
    teacher: &Tensor,
    labels: &Tensor,
    temperature: f64,
    alpha: f64,
) -> candle_core::Result<Tensor> {
    let batch = student.dim(0)? as f64;
    let log_s = log_softmax(&(student / temperature)?, 1)?;
    let log_t = log_softmax(&(teacher.detach() / temperature)?, 1)?;
    let kl = (log_t.exp()? * (log_t - log_s)?)?.sum_all()?.affine(1.0 / batch, 0.0)?;
    let ce = candle_nn::loss::cross_entropy(student, labels)?;
    kl.affine(alpha * temperature * temperature, 0.0)? + ce.affine(1.0 - alpha, 0.0)?
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

    #[test]
    fn settings_validate_keys() {
        let p = |s: &str| KdSettings::from_udp(&UserParams::parse(Some(s)).unwrap());
        assert_eq!(p("enable_distillation=False type=vanilla_kd").unwrap(), None);
        let kd = p("enable_distillation=True type=vanilla_kd logits_name=logits logits_saved_path=t.tsv temperature=5")
            .unwrap()
            .unwrap();
        assert_eq!((kd.temperature, kd.alpha), (5.0, 0.2));
        assert!(p("enable_distillation=True type=vanilla_kd logits_saved_path=t.tsv").is_err());
        assert!(p("enable_distillation=True type=other logits_name=l logits_saved_path=t").is_err());
        assert!(p("enable_distillation=True type=vanilla_kd teacher_model_path=d temperature=0.5")
            .unwrap_err()
            .to_string()
            .contains("temperature"));
        assert!(p("enable_distillation=True type=vanilla_kd teacher_model_path=d alpha=2").is_err());
    }
}
