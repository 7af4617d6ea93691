//! The Meta-KD tables: SENTI (`review domain sentiment`, written by the split) and the Meta-KD
//! layout (`guid text_a text_b label domain embeddings|weight`), one row per line, with a header.

use crate::data::table::{read_lines, Row};
use anyhow::{bail, Result};
use std::path::Path;

/// Columns of a SENTI table, as EasyNLP's `generate_senti_data.py` writes them.
pub const SENTI_HEADER: [&str; 3] = ["review", "domain", "sentiment"];

/// The leading columns of every Meta-KD-layout table; a last column follows.
pub const META_COLUMNS: [&str; 5] = ["guid", "text_a", "text_b", "label", "domain"];

/// One row of a SENTI table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentiRow {
    /// 1-based line number in its file.
    pub line: usize,
    /// The review text.
    pub review: String,
    /// The domain name (one of `domain_label`).
    pub domain: String,
    /// The sentiment label (`positive` / `negative`).
    pub sentiment: String,
}

/// One row of a Meta-KD-layout table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaRow {
    /// 1-based line number in its file (0 for rows not read from a file).
    pub line: usize,
    /// A stable row id.
    pub guid: String,
    /// The review.
    pub text_a: String,
    /// The second text (empty: reviews are encoded as single sentences).
    pub text_b: String,
    /// The sentiment label.
    pub label: String,
    /// The domain name.
    pub domain: String,
    /// The last column: `embeddings` or `weight`.
    pub last: String,
}

impl MetaRow {
    /// Row `i` of a generated table whose ids start with `prefix`: review `r` as a single
    /// sentence, with `last` in the last column.
    pub fn from_senti(r: SentiRow, prefix: &str, i: usize, last: String) -> Self {
        MetaRow {
            line: r.line,
            guid: format!("{prefix}-{i}"),
            text_a: r.review,
            text_b: String::new(),
            label: r.sentiment,
            domain: r.domain,
            last,
        }
    }
}

/// The stem used in generated row ids: the file name up to its first `.` (`train.tsv` -> `train`).
pub fn guid_prefix(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.split('.').next().unwrap_or("").trim();
    if stem.is_empty() {
        "row".to_string()
    } else {
        stem.replace(char::is_whitespace, "_")
    }
}

/// Checks that `domain` (read at `at`, `file:line`) is one of `domains`.
pub fn check_domain(domain: &str, domains: &[String], at: &str) -> Result<()> {
    if !domains.iter().any(|d| d == domain) {
        bail!(
            "{at}: unknown domain `{domain}`: not in domain_label ({}); pass \
             --user_defined_parameters=\"domain_label=...\" to use other domains",
            domains.join(",")
        );
    }
    Ok(())
}

/// Reads the data lines of a tab-separated table whose header must be `header`; every line must
/// have exactly `header.len()` fields. An empty file or a header-only file is an error.
fn read_rows(path: &Path, header: &[&str]) -> Result<Vec<(usize, Vec<String>)>> {
    let lines = read_lines(path, false)?;
    let Some((_, first)) = lines.first() else {
        bail!("{}: the file is empty (expected the header `{}`)", path.display(), header.join("\\t"));
    };
    let found: Vec<&str> = first.split('\t').collect();
    if found != header {
        bail!("{}:1: expected the header `{}`, found `{}`", path.display(), header.join("\\t"), found.join("\\t"));
    }
    if lines.len() == 1 {
        bail!("{}: the table has a header but no rows", path.display());
    }
    lines[1..]
        .iter()
        .map(|(line, text)| {
            let fields: Vec<String> = text.split('\t').map(str::to_string).collect();
            if fields.len() != header.len() {
                bail!(
                    "{}:{line}: expected {} tab-separated fields ({}), found {}",
                    path.display(),
                    header.len(),
                    header.join(", "),
                    fields.len()
                );
            }
            Ok((*line, fields))
        })
        .collect()
}

/// Reads a SENTI table: header `review domain sentiment`, non-empty fields, domains in `domains`.
pub fn read_senti(path: &Path, domains: &[String]) -> Result<Vec<SentiRow>> {
    read_rows(path, &SENTI_HEADER)?
        .into_iter()
        .map(|(line, f)| {
            let at = format!("{}:{line}", path.display());
            for (value, name) in f.iter().zip(SENTI_HEADER) {
                if value.trim().is_empty() {
                    bail!("{at}: column `{name}` is empty");
                }
            }
            check_domain(&f[1], domains, &at)?;
            let mut f = f.into_iter();
            let mut next = || f.next().unwrap_or_default();
            Ok(SentiRow { line, review: next(), domain: next(), sentiment: next() })
        })
        .collect()
}

/// Writes a SENTI table (header and rows) as text.
pub fn format_senti<'a>(rows: impl Iterator<Item = (&'a str, &'a str, &'a str)>) -> String {
    let mut out = SENTI_HEADER.join("\t") + "\n";
    for (review, domain, sentiment) in rows {
        out.push_str(&format!("{review}\t{domain}\t{sentiment}\n"));
    }
    out
}

/// Reads a Meta-KD-layout table whose last column is `last` (`embeddings` or `weight`); text_a,
/// label and domain must be non-empty and every domain one of `domains`.
pub fn read_meta(path: &Path, last: &str, domains: &[String]) -> Result<Vec<MetaRow>> {
    let mut header: Vec<&str> = META_COLUMNS.to_vec();
    header.push(last);
    read_rows(path, &header)?
        .into_iter()
        .map(|(line, f)| {
            let at = format!("{}:{line}", path.display());
            for i in [1, 3, 4, 5] {
                if f[i].trim().is_empty() {
                    bail!("{at}: column `{}` is empty", header[i]);
                }
            }
            check_domain(&f[4], domains, &at)?;
            let mut f = f.into_iter();
            let mut next = || f.next().unwrap_or_default();
            Ok(MetaRow {
                line,
                guid: next(),
                text_a: next(),
                text_b: next(),
                label: next(),
                domain: next(),
                last: next(),
            })
        })
        .collect()
}

/// Writes a Meta-KD-layout table (header with last column `last`, then the rows) as text.
pub fn format_meta(last: &str, rows: &[MetaRow]) -> String {
    let mut out = format!("{}\t{last}\n", META_COLUMNS.join("\t"));
    for r in rows {
        out.push_str(&format!("{}\t{}\t{}\t{}\t{}\t{}\n", r.guid, r.text_a, r.text_b, r.label, r.domain, r.last));
    }
    out
}

/// The domain id of every row (`check_domain` errors name file and line).
pub fn row_domains(rows: &[Row], path: &Path, column: usize, domains: &[String]) -> Result<Vec<usize>> {
    rows.iter()
        .map(|r| {
            let name = r.values[column].to_output();
            check_domain(&name, domains, &format!("{}:{}", path.display(), r.line))?;
            Ok(domains.iter().position(|d| *d == name).expect("checked"))
        })
        .collect()
}

/// The `weight` column (schema index `column`) of a row of `path`: a finite number.
pub fn row_weight(row: &Row, column: usize, path: &Path) -> Result<f32> {
    let raw = row.values[column].to_output();
    match raw.trim().parse::<f64>() {
        Ok(w) if w.is_finite() => Ok(w as f32),
        _ => bail!("{}:{}: column `weight`: `{raw}` is not a finite number", path.display(), row.line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senti_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dev.tsv");
        let domains = vec!["books".to_string(), "dvd".to_string()];
        std::fs::write(
            &p,
            format_senti([("Good read.", "books", "positive"), ("Bad.", "dvd", "negative")].into_iter()),
        )
        .unwrap();
        let rows = read_senti(&p, &domains).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[1].line, rows[1].domain.as_str()), (3, "dvd"));
        assert_eq!(guid_prefix(&p), "dev");
        std::fs::write(&p, "review\tdomain\tsentiment\nGood\tmusic\tpositive\n").unwrap();
        let e = read_senti(&p, &domains).unwrap_err().to_string();
        assert!(e.contains("dev.tsv:2") && e.contains("unknown domain `music`"), "{e}");
        std::fs::write(&p, "review\tdomain\tsentiment\nGood\tbooks\n").unwrap();
        let e = read_senti(&p, &domains).unwrap_err().to_string();
        assert!(e.contains("dev.tsv:2") && e.contains("found 2"), "{e}");
        std::fs::write(&p, "").unwrap();
        assert!(read_senti(&p, &domains).unwrap_err().to_string().contains("empty"));
        std::fs::write(&p, "review\tdomain\tsentiment\n").unwrap();
        assert!(read_senti(&p, &domains).unwrap_err().to_string().contains("no rows"));
    }
}
