//! Vanilla KD settings, read and validated from `user_defined_parameters`.

use super::udp::UserParams;
use anyhow::{bail, Result};
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

#[cfg(test)]
mod tests {
    use super::*;

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
