//! The label set from `--label_enumerate_values`: class names in class-index order.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// Class names in class-index order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSet {
    /// Names; index = class id.
    pub names: Vec<String>,
}

impl LabelSet {
    /// A comma list, or the path of an existing file with one label per line; `None` gives `0,1`.
    pub fn parse(value: Option<&str>) -> Result<Self> {
        let names: Vec<String> = match value {
            None => vec!["0".into(), "1".into()],
            Some(v) if Path::new(v).is_file() => std::fs::read_to_string(v)
                .with_context(|| format!("cannot read label file {v}"))?
                .lines()
                .map(|l| l.trim_end_matches('\r').to_string())
                .filter(|l| !l.is_empty())
                .collect(),
            Some(v) => v.split(',').map(|s| s.to_string()).collect(),
        };
        Self::from_names(names)
    }

    /// A label set from names in class-index order (at least two, unique, non-empty).
    pub fn from_names(names: Vec<String>) -> Result<Self> {
        if names.len() < 2 {
            bail!("--label_enumerate_values: need at least two labels, got {names:?}");
        }
        for (i, n) in names.iter().enumerate() {
            if n.is_empty() {
                bail!("--label_enumerate_values: label {i} is empty");
            }
            if names[..i].contains(n) {
                bail!("--label_enumerate_values: label `{}` appears twice", super::schema::visible(n));
            }
        }
        Ok(LabelSet { names })
    }

    /// The class id of `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Always false: a label set has at least two labels.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}
