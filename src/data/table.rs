//! Reading tab-separated tables: one row per line, a UTF-8 BOM and trailing `\r` stripped,
//! optional header skipped, every row checked against the schema.

use super::schema::{Schema, Value};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// One parsed row with its 1-based line number in the file.
#[derive(Clone, Debug)]
pub struct Row {
    /// 1-based line number in the source file.
    pub line: usize,
    /// Values in schema order.
    pub values: Vec<Value>,
}

/// Reads the raw lines of a table: BOM and trailing `\r` stripped, the header skipped if asked,
/// a final empty line ignored. Returns `(line_number, text)` pairs.
pub fn read_lines(path: &Path, skip_first_line: bool) -> Result<Vec<(usize, String)>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read table {}", path.display()))?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let upto = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
            bail!("{}:{line}: the table is not valid UTF-8", path.display());
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut lines: Vec<(usize, String)> =
        text.split('\n').enumerate().map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l).to_string())).collect();
    if text.ends_with('\n') || text.is_empty() {
        lines.pop();
    }
    if skip_first_line && !lines.is_empty() {
        lines.remove(0);
    }
    Ok(lines)
}

/// Reads and parses a whole table against `schema`. An empty table is an error.
pub fn read_table(path: &Path, schema: &Schema, skip_first_line: bool) -> Result<Vec<Row>> {
    let lines = read_lines(path, skip_first_line)?;
    if lines.is_empty() {
        bail!("{}: the table has no rows", path.display());
    }
    let name = path.display().to_string();
    lines
        .iter()
        .map(|(line, text)| {
            let fields: Vec<&str> = text.split('\t').collect();
            let values = schema.parse_fields(&fields, &format!("{name}:{line}"))?;
            Ok(Row { line: *line, values })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_bom_cr_and_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.tsv");
        std::fs::write(&p, "\u{feff}h1\th2\r\nhello\t1\r\nbye\t0\r\n").unwrap();
        let schema = Schema::parse("s:str:1,l:str:1").unwrap();
        let rows = read_table(&p, &schema, true).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].line, 2);
        assert_eq!(rows[1].values[1], Value::Str("0".into()));
        std::fs::write(&p, "h1\th2\n").unwrap();
        let e = read_table(&p, &schema, true).unwrap_err().to_string();
        assert!(e.contains("no rows"), "{e}");
    }
}
