//! Turning parsed table rows into model examples: text columns, labels and tokenization.

use super::batch::Example;
use super::labels::LabelSet;
use super::schema::visible;
use super::table::Row;
use super::tokenize::BertTokenizer;
use anyhow::{bail, Result};
use std::path::Path;

/// Schema positions of the text and label columns.
#[derive(Clone, Debug)]
pub struct TextColumns {
    /// `--first_sequence`.
    pub first: usize,
    /// `--second_sequence`.
    pub second: Option<usize>,
    /// `--label_name` (absent in predict).
    pub label: Option<usize>,
}

/// Tokenizes `rows` of `path`; with `labels`, every row's label must be one of them.
pub fn encode_rows(
    rows: &[Row],
    path: &Path,
    columns: &TextColumns,
    schema_names: &[&str],
    tokenizer: &BertTokenizer,
    labels: Option<&LabelSet>,
) -> Result<Vec<Example>> {
    fn text<'r>(row: &'r Row, idx: usize, path: &Path, schema_names: &[&str]) -> Result<&'r str> {
        match row.values[idx].as_str() {
            Some(s) => Ok(s),
            None => bail!(
                "{}:{}: column `{}` must be typed str to be used as text",
                path.display(),
                row.line,
                schema_names[idx]
            ),
        }
    }
    let mut pairs = Vec::with_capacity(rows.len());
    for row in rows {
        let a = text(row, columns.first, path, schema_names)?;
        // An empty second text is a single-sentence row (not `[CLS] a [SEP] [SEP]`).
        let b = columns.second.map(|i| text(row, i, path, schema_names)).transpose()?.filter(|b| !b.is_empty());
        pairs.push((a, b));
    }
    let encoded = tokenizer.encode_batch(&pairs)?;
    let mut examples = Vec::with_capacity(rows.len());
    for (row, enc) in rows.iter().zip(encoded) {
        let label = match (labels, columns.label) {
            (Some(set), Some(idx)) => {
                let value = row.values[idx].to_output();
                match set.index(&value) {
                    Some(i) => Some(i as u32),
                    None => bail!(
                        "{}:{}: column `{}`: label `{}` is not one of --label_enumerate_values ({})",
                        path.display(),
                        row.line,
                        schema_names[idx],
                        visible(&value),
                        set.names.iter().map(|n| visible(n)).collect::<Vec<_>>().join(", ")
                    ),
                }
            }
            _ => None,
        };
        examples.push(Example { enc, label, teacher_logits: None, domain: None });
    }
    Ok(examples)
}
