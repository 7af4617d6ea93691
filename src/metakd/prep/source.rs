//! Reading the multi-domain review corpus for `metakd_split`, in either layout:
//!
//! * per-domain review tables `<domain>/{train,dev}.tsv` (header `sentence\tlabel`, label 1 =
//!   positive, 0 = negative; fields quoted and spanning lines): the rows of train.tsv then dev.tsv;
//! * Blitzer's `sorted_data_acl/<domain>/{positive,negative}.review` (pseudo-XML; the text is the
//!   lines between `<review_text>` and `</review_text>`).
//!
//! A folder's domain is its name up to the first `_` (`kitchen_&_housewares` -> `kitchen`).
//! Review texts are put on one line ([`super::one_line`]).

use super::one_line;
use crate::logging;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One labelled review.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Review {
    /// The text, on one line.
    pub text: String,
    /// Positive (true) or negative sentiment.
    pub positive: bool,
}

/// How a domain folder stores its reviews.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Layout {
    /// `train.tsv` / `dev.tsv` review tables.
    Tables,
    /// `positive.review` / `negative.review` files.
    Reviews,
}

/// The domain a folder holds: its name up to the first `_`.
pub fn domain_of_folder(name: &str) -> &str {
    name.split('_').next().unwrap_or(name)
}

/// Reads the reviews of each of `domains` from `dir` (or from `dir/sorted_data_acl` when that
/// exists), in `domains` order. A requested domain without a folder, a domain claimed by two
/// folders and a domain with no reviews are errors.
pub fn read_domains(dir: &Path, domains: &[String]) -> Result<Vec<Vec<Review>>> {
    let nested = dir.join("sorted_data_acl");
    let dir = if nested.is_dir() { nested } else { dir.to_path_buf() };
    let mut found: BTreeMap<String, (PathBuf, Layout)> = BTreeMap::new();
    let entries = std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let path = entry.with_context(|| format!("cannot list {}", dir.display()))?.path();
        let layout = if ["positive.review", "negative.review"].iter().any(|f| path.join(f).is_file()) {
            Layout::Reviews
        } else if ["train.tsv", "dev.tsv"].iter().any(|f| path.join(f).is_file()) {
            Layout::Tables
        } else {
            continue;
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let domain = domain_of_folder(&name).to_string();
        if let Some((other, _)) = found.get(&domain) {
            bail!(
                "{}: folders `{}` and `{}` both hold domain `{domain}`",
                dir.display(),
                other.display(),
                path.display()
            );
        }
        found.insert(domain, (path, layout));
    }
    let mut out = Vec::with_capacity(domains.len());
    for domain in domains {
        let Some((path, layout)) = found.get(domain) else {
            bail!(
                "{}: no folder for domain `{domain}` (domain_label={}; domains found: {}). A domain folder holds \
                 train.tsv/dev.tsv or positive.review/negative.review",
                dir.display(),
                domains.join(","),
                if found.is_empty() {
                    "none".to_string()
                } else {
                    found.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            );
        };
        let files: &[(&str, bool)] = match layout {
            Layout::Tables => &[("train.tsv", true), ("dev.tsv", true)],
            Layout::Reviews => &[("positive.review", true), ("negative.review", false)],
        };
        let mut reviews = Vec::new();
        let mut read = Vec::new();
        for &(file, positive) in files {
            let p = path.join(file);
            if !p.is_file() {
                continue;
            }
            reviews.extend(match layout {
                Layout::Tables => read_review_table(&p)?,
                Layout::Reviews => parse_review_file(&p, positive)?,
            });
            read.push(file);
        }
        if reviews.is_empty() {
            bail!("{}: domain `{domain}` has no reviews", path.display());
        }
        let pos = reviews.iter().filter(|r| r.positive).count();
        logging::info(format!(
            "domain {domain}: {} reviews ({pos} positive, {} negative) from {} ({})",
            reviews.len(),
            reviews.len() - pos,
            path.display(),
            read.join(", ")
        ));
        out.push(reviews);
    }
    Ok(out)
}

/// Reads a review table: a quoted, tab-separated file with header columns `sentence` and `label`
/// (1/positive or 0/negative); fields may span lines.
pub fn read_review_table(path: &Path) -> Result<Vec<Review>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut reader = csv::ReaderBuilder::new().delimiter(b'\t').has_headers(true).from_reader(bytes.as_slice());
    let headers = reader.headers().with_context(|| format!("{}:1: cannot read the header", path.display()))?.clone();
    let column = |name: &str| headers.iter().position(|h| h.trim_start_matches('\u{feff}').trim() == name);
    let (Some(text_col), Some(label_col)) = (column("sentence"), column("label")) else {
        bail!(
            "{}:1: expected a header with columns `sentence` and `label`, found `{}`",
            path.display(),
            headers.iter().collect::<Vec<_>>().join("\\t")
        );
    };
    let mut reviews = Vec::new();
    for record in reader.records() {
        let record = record.with_context(|| format!("{}: bad row", path.display()))?;
        let line = record.position().map(|p| line_of(&bytes, p.byte())).unwrap_or(0);
        let at = format!("{}:{line}", path.display());
        let positive = match record.get(label_col).map(str::trim) {
            Some("1" | "positive") => true,
            Some("0" | "negative") => false,
            Some(other) => bail!("{at}: label `{other}` is not 1/positive or 0/negative"),
            None => bail!("{at}: the row has no `label` field"),
        };
        let text = one_line(record.get(text_col).unwrap_or(""));
        if text.is_empty() {
            bail!("{at}: the review text is empty");
        }
        reviews.push(Review { text, positive });
    }
    Ok(reviews)
}

/// The 1-based line on which the record starting at byte `start` has its first character. (csv's
/// own line count lags by one after a CRLF, whose `\n` it reads as part of the next record.)
fn line_of(bytes: &[u8], start: u64) -> usize {
    let mut at = (start as usize).min(bytes.len());
    while at < bytes.len() && matches!(bytes[at], b'\r' | b'\n') {
        at += 1;
    }
    1 + bytes[..at].iter().filter(|&&b| b == b'\n').count()
}

/// Parses a Blitzer `.review` file: each review's text is the non-blank lines strictly between a
/// `<review_text>` line and the next `</review_text>` line, joined by spaces. All its reviews get
/// the sentiment `positive`. UTF-8 is expected; a file that is not UTF-8 is read as Latin-1.
pub fn parse_review_file(path: &Path, positive: bool) -> Result<Vec<Review>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            logging::warn(format!("{}: not UTF-8, reading it as Latin-1", path.display()));
            e.into_bytes().iter().map(|&b| b as char).collect()
        }
    };
    let mut reviews = Vec::new();
    let mut open: Option<(usize, Vec<&str>)> = None;
    for (i, raw) in text.split('\n').enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        match (line, open.as_mut()) {
            ("<review_text>", Some((start, _))) => bail!(
                "{}:{line_no}: <review_text> inside the review text opened at line {start} (missing </review_text>)",
                path.display()
            ),
            ("<review_text>", None) => open = Some((line_no, Vec::new())),
            ("</review_text>", None) => {
                bail!("{}:{line_no}: </review_text> without an opening <review_text>", path.display())
            }
            ("</review_text>", Some((start, pieces))) => {
                let review = one_line(&pieces.join(" "));
                if review.is_empty() {
                    bail!("{}:{start}: the review text is empty", path.display());
                }
                reviews.push(Review { text: review, positive });
                open = None;
            }
            (_, Some((_, pieces))) if !line.is_empty() => pieces.push(line),
            _ => {}
        }
    }
    if let Some((start, _)) = open {
        bail!("{}:{start}: <review_text> is never closed", path.display());
    }
    Ok(reviews)
}
