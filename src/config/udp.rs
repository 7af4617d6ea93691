//! `--user_defined_parameters`: whitespace-separated `key=value` pairs, typed and validated.

use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// Every key this program understands, with a one-line description (used in error messages).
pub const KNOWN_KEYS: &[(&str, &str)] = &[
    (
        "pretrain_model_name_or_path",
        "model directory, model-zoo name, EasyNLP model name or Hub id org/name[@revision]",
    ),
    ("do_eval", "evaluate during training (boolean, default True)"),
    ("enable_distillation", "train with knowledge distillation (boolean)"),
    ("type", "distillation type: vanilla_kd"),
    ("logits_name", "schema column that holds the teacher logits"),
    ("logits_saved_path", "file of teacher logits, one row per training row"),
    ("temperature", "KD temperature, >= 1"),
    ("alpha", "weight of the teacher term in KD, in [0, 1]"),
    ("teacher_model_path", "teacher checkpoint directory"),
    ("use_sample_weights", "Meta-KD: weight instances by the prototype weight (boolean)"),
    ("use_domain_loss", "Meta-KD: add the domain-corruption loss (boolean)"),
    ("domain_loss_weight", "Meta-KD: weight of the domain loss, >= 0"),
    ("distill_stage", "Meta-KD student stage: first or second"),
    ("genre", "Meta-KD domain to train or evaluate"),
    ("T", "Meta-KD stage-2 temperature, > 0"),
    ("domain_label", "Meta-KD: comma list of domains"),
];

/// Parsed `user_defined_parameters`, keeping the raw strings; typed getters validate on access.
#[derive(Clone, Debug, Default)]
pub struct UserParams {
    values: BTreeMap<String, String>,
}

impl UserParams {
    /// Parses `key=value` tokens separated by any whitespace. Values may contain `=`.
    /// An unknown key is an error that names the closest known key.
    pub fn parse(text: Option<&str>) -> Result<Self> {
        let mut values = BTreeMap::new();
        for token in text.unwrap_or("").split_whitespace() {
            let Some((key, value)) = token.split_once('=') else {
                bail!("--user_defined_parameters: `{token}` is not of the form key=value");
            };
            if !KNOWN_KEYS.iter().any(|(k, _)| *k == key) {
                let closest = closest_key(key);
                bail!(
                    "--user_defined_parameters: unknown key `{key}`; did you mean `{closest}`? \
                     (known keys: {})",
                    KNOWN_KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
                );
            }
            if values.insert(key.to_string(), value.to_string()).is_some() {
                bail!("--user_defined_parameters: key `{key}` is given twice");
            }
        }
        Ok(UserParams { values })
    }

    /// The raw string value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Every `(key, value)`, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// A string value that must be present.
    pub fn require(&self, key: &str) -> Result<&str> {
        match self.get(key) {
            Some(v) => Ok(v),
            None => bail!("--user_defined_parameters: `{key}=...` is required here ({})", describe(key)),
        }
    }

    /// A boolean: True/true/1 or False/false/0.
    pub fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some("True" | "true" | "1") => Ok(true),
            Some("False" | "false" | "0") => Ok(false),
            Some(v) => {
                bail!("--user_defined_parameters: `{key}={v}` is not a boolean (use True/true/1 or False/false/0)")
            }
        }
    }

    /// A finite float within `[min, max]`, or `default` when absent.
    pub fn float_in(&self, key: &str, default: f64, min: f64, max: f64) -> Result<f64> {
        let Some(raw) = self.get(key) else {
            return Ok(default);
        };
        match raw.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= min && v <= max => Ok(v),
            _ => {
                bail!("--user_defined_parameters: `{key}={raw}` must be a number in [{min}, {max}] ({})", describe(key))
            }
        }
    }
}

fn describe(key: &str) -> &'static str {
    KNOWN_KEYS.iter().find(|(k, _)| *k == key).map(|(_, d)| *d).unwrap_or("")
}

/// The known key with the smallest edit distance to `key`.
fn closest_key(key: &str) -> &'static str {
    KNOWN_KEYS
        .iter()
        .map(|(k, _)| (edit_distance(&key.to_lowercase(), &k.to_lowercase()), *k))
        .min()
        .map(|(_, k)| k)
        .unwrap_or("")
}

/// Levenshtein distance between two strings (by chars).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values_with_equals_and_booleans() {
        let p =
            UserParams::parse(Some("pretrain_model_name_or_path=./a=b\n enable_distillation=true alpha=0.5")).unwrap();
        assert_eq!(p.get("pretrain_model_name_or_path"), Some("./a=b"));
        assert!(p.bool("enable_distillation", false).unwrap());
        assert_eq!(p.float_in("alpha", 0.2, 0.0, 1.0).unwrap(), 0.5);
        assert_eq!(p.float_in("temperature", 1.0, 1.0, 1e9).unwrap(), 1.0);
    }

    #[test]
    fn unknown_key_suggests_closest() {
        let err = UserParams::parse(Some("temperatur=2")).unwrap_err().to_string();
        assert!(err.contains("did you mean `temperature`"), "{err}");
    }

    #[test]
    fn bad_values_name_key_and_range() {
        let p = UserParams::parse(Some("alpha=1.5 do_eval=maybe")).unwrap();
        let e = p.float_in("alpha", 0.2, 0.0, 1.0).unwrap_err().to_string();
        assert!(e.contains("alpha=1.5") && e.contains("[0, 1]"), "{e}");
        assert!(p.bool("do_eval", true).is_err());
        assert!(UserParams::parse(Some("novalue")).is_err());
    }
}
