//! Teacher logits files: the sidecar fingerprint written by logits export, and the checked
//! line-by-line join of logits to training rows.

use crate::data::labels::LabelSet;
use crate::data::schema::visible;
use crate::data::table::TableFingerprint;
use crate::data::table::{lines_of, table_bytes};
use crate::digest::sha256_hex;
use crate::logging;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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

/// A sidecar as stored: the export's record and the SHA-256 of the logits file it describes
/// (absent from sidecars written before it was recorded).
#[derive(Serialize, Deserialize)]
struct StoredSidecar {
    #[serde(flatten)]
    sidecar: LogitsSidecar,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    logits_sha256: Option<String>,
}

/// The sidecar path of a logits file.
pub fn sidecar_path(logits: &Path) -> PathBuf {
    let mut name = logits.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".meta.json");
    logits.with_file_name(name)
}

/// The sidecar's text for a logits file whose bytes hash to `logits_sha256`.
pub fn sidecar_json(sidecar: &LogitsSidecar, logits_sha256: &str) -> Result<String> {
    let stored = StoredSidecar { sidecar: sidecar.clone(), logits_sha256: Some(logits_sha256.to_string()) };
    Ok(serde_json::to_string_pretty(&stored)?)
}

/// The first 12 hex digits of a hash, for messages.
fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Reads the teacher logits for the training table `table` (with `rows` data rows), checking the
/// sidecar when there is one (the logits file's hash, the table's fingerprint, the label order),
/// the row count, and N finite values per row, N = number of labels. Blank lines at the end of
/// the file are ignored.
pub fn read_teacher_logits(
    logits: &Path,
    table: &Path,
    skip_first_line: bool,
    rows: usize,
    labels: &LabelSet,
) -> Result<Vec<Vec<f32>>> {
    let bytes = table_bytes(logits)?;
    let side = sidecar_path(logits);
    if side.is_file() {
        let text = std::fs::read_to_string(&side).with_context(|| format!("cannot read {}", side.display()))?;
        let stored: StoredSidecar =
            serde_json::from_str(&text).with_context(|| format!("{}: not a logits sidecar", side.display()))?;
        match &stored.logits_sha256 {
            Some(recorded) => {
                let actual = sha256_hex(&bytes);
                if *recorded != actual {
                    bail!(
                        "{}: the logits file does not match its sidecar {} (sha256 {} recorded, {} found): it was \
                         changed or exported again after the sidecar was written, or an export was interrupted; \
                         export the teacher logits again",
                        logits.display(),
                        side.display(),
                        short(recorded),
                        short(&actual)
                    );
                }
            }
            None => logging::warn(format!(
                "{}: no logits_sha256 (written by an older version), so {} cannot be checked against it; \
                 export the teacher logits again to record it",
                side.display(),
                logits.display()
            )),
        }
        let sidecar = stored.sidecar;
        let actual = TableFingerprint::of(table, skip_first_line)?;
        if sidecar.table.sha256 != actual.sha256 || sidecar.table.rows != actual.rows {
            bail!(
                "{}: the logits were computed on {} ({} rows, sha256 {}), but the training table {} differs ({} rows, sha256 {}); \
                 export the teacher logits again on this table",
                side.display(),
                sidecar.table.path,
                sidecar.table.rows,
                short(&sidecar.table.sha256),
                table.display(),
                actual.rows,
                short(&actual.sha256)
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
    let mut lines = lines_of(logits, &bytes, false)?;
    while lines.last().is_some_and(|(_, text)| text.trim().is_empty()) {
        lines.pop();
    }
    let n = labels.len();
    if let Some((line, _)) = lines.iter().find(|(_, text)| text.trim().is_empty()) {
        bail!(
            "{}:{line}: blank line; a logits file has one line of {n} comma-separated numbers per table row",
            logits.display()
        );
    }
    if lines.len() != rows {
        bail!(
            "{}: {} logits rows, but the training table {} has {rows} rows; the join is by line, so they must match",
            logits.display(),
            lines.len(),
            table.display()
        );
    }
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
                    visible(&text.chars().take(80).collect::<String>())
                ),
            }
        })
        .collect()
}
