//! Teacher logits files: the sidecar fingerprint written by logits export, and the checked
//! line-by-line join of logits to training rows.

use crate::data::labels::LabelSet;
use crate::data::table::read_lines;
use crate::model::checkpoint::write_atomic;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Identifies a table's exact content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableFingerprint {
    /// The path as given.
    pub path: String,
    /// Data rows (after the skipped header, if any).
    pub rows: usize,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
}

impl TableFingerprint {
    /// Fingerprints `path`, counting rows as the table reader does.
    pub fn of(path: &Path, skip_first_line: bool) -> Result<Self> {
        Ok(TableFingerprint {
            path: path.display().to_string(),
            rows: read_lines(path, skip_first_line)?.len(),
            sha256: sha256_file(path)?,
        })
    }
}

/// What a logits export records beside the logits file (`<logits>.meta.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogitsSidecar {
    /// The table the logits were computed on.
    pub table: TableFingerprint,
    /// The teacher's labels in class-index order (the logits' column order).
    pub labels: Vec<String>,
    /// The teacher checkpoint directory.
    pub teacher: String,
    /// SHA-256 of the teacher's weights file.
    pub teacher_weights_sha256: String,
}

/// The sidecar path of a logits file.
pub fn sidecar_path(logits: &Path) -> PathBuf {
    let mut name = logits.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".meta.json");
    logits.with_file_name(name)
}

/// Writes the sidecar of `logits` atomically.
pub fn write_sidecar(logits: &Path, sidecar: &LogitsSidecar) -> Result<()> {
    write_atomic(&sidecar_path(logits), serde_json::to_string_pretty(sidecar)?.as_bytes())
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads the teacher logits for the training table `table` (with `rows` data rows), checking the
/// sidecar when there is one, the row count, and N finite values per row, N = number of labels.
pub fn read_teacher_logits(
    logits: &Path,
    table: &Path,
    skip_first_line: bool,
    rows: usize,
    labels: &LabelSet,
) -> Result<Vec<Vec<f32>>> {
    let side = sidecar_path(logits);
    if side.is_file() {
        let text = std::fs::read_to_string(&side)?;
        let sidecar: LogitsSidecar =
            serde_json::from_str(&text).with_context(|| format!("{}: not a logits sidecar", side.display()))?;
        let actual = TableFingerprint::of(table, skip_first_line)?;
        if sidecar.table.sha256 != actual.sha256 || sidecar.table.rows != actual.rows {
            bail!(
                "{}: the logits were computed on {} ({} rows, sha256 {}), but the training table {} differs ({} rows, sha256 {}); \
                 export the teacher logits again on this table",
                side.display(),
                sidecar.table.path,
                sidecar.table.rows,
                &sidecar.table.sha256[..12.min(sidecar.table.sha256.len())],
                table.display(),
                actual.rows,
                &actual.sha256[..12]
            );
        }
        if sidecar.labels != labels.names {
            bail!(
                "{}: the teacher's label order ({}) differs from --label_enumerate_values ({})",
                side.display(),
                sidecar.labels.join(","),
                labels.names.join(",")
            );
        }
    }
    let lines = read_lines(logits, false)?;
    if lines.len() != rows {
        bail!(
            "{}: {} logits rows, but the training table {} has {rows} rows; the join is by line, so they must match",
            logits.display(),
            lines.len(),
            table.display()
        );
    }
    let n = labels.len();
    lines
        .iter()
        .map(|(line, text)| {
            let values: Option<Vec<f32>> =
                text.split(',').map(|v| v.trim().parse::<f32>().ok().filter(|x| x.is_finite())).collect();
            match values {
                Some(v) if v.len() == n => Ok(v),
                _ => bail!(
                    "{}:{line}: expected {n} comma-separated finite numbers (one logit per label), found `{}`",
                    logits.display(),
                    text.chars().take(80).collect::<String>()
                ),
            }
        })
        .collect()
}
