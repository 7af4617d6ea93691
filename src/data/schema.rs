//! `--input_schema`: `name:type:len` columns, and typed parsing of one table row against it.

use anyhow::{bail, Result};

/// The type of a schema column.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ColumnType {
    /// Raw text, kept as is.
    Str,
    /// Integer(s).
    Int,
    /// Finite float(s).
    Float,
}

/// One schema column.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Column type.
    pub kind: ColumnType,
    /// Declared length: 1 for a scalar, N for N comma-separated numbers.
    pub len: usize,
}

/// A parsed field value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A `str` column.
    Str(String),
    /// An `int:1` column.
    Int(i64),
    /// An `int:N` column.
    Ints(Vec<i64>),
    /// A `float:1` column.
    Float(f64),
    /// A `float:N` column.
    Floats(Vec<f32>),
}

impl Value {
    /// The text as written back in predict's `append_cols` (Python `str()` of the parsed value).
    pub fn to_output(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => crate::format::python_float(*f),
            Value::Ints(v) => format!("[{}]", v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")),
            Value::Floats(v) => {
                format!("[{}]", v.iter().map(|x| crate::format::python_float(*x as f64)).collect::<Vec<_>>().join(", "))
            }
        }
    }

    /// The string of a `str` column.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A table schema: the ordered columns of every row.
#[derive(Clone, Debug, PartialEq)]
pub struct Schema {
    /// The columns in file order.
    pub columns: Vec<Column>,
}

impl Schema {
    /// Parses `name:type:len,...`.
    pub fn parse(text: &str) -> Result<Self> {
        let mut columns: Vec<Column> = Vec::new();
        for item in text.split(',').map(str::trim) {
            let parts: Vec<&str> = item.split(':').collect();
            let [name, kind, len] = parts[..] else {
                bail!("--input_schema: `{item}` is not of the form name:type:len (e.g. sent:str:1)");
            };
            if name.is_empty() {
                bail!("--input_schema: `{item}` has an empty column name");
            }
            let kind = match kind {
                "str" => ColumnType::Str,
                "int" => ColumnType::Int,
                "float" => ColumnType::Float,
                other => bail!("--input_schema: column `{name}` has type `{other}`; expected str, int or float"),
            };
            let len: usize = match len.parse() {
                Ok(n) if n >= 1 => n,
                _ => bail!("--input_schema: column `{name}` has length `{len}`; expected a whole number >= 1"),
            };
            if kind == ColumnType::Str && len != 1 {
                bail!("--input_schema: str column `{name}` must have length 1, not {len}");
            }
            if columns.iter().any(|c| c.name == name) {
                bail!("--input_schema: column `{name}` appears twice");
            }
            columns.push(Column { name: name.to_string(), kind, len });
        }
        Ok(Schema { columns })
    }

    /// The index of column `name`, or an error naming the flag that asked for it.
    pub fn index_of(&self, name: &str, flag: &str) -> Result<usize> {
        match self.columns.iter().position(|c| c.name == name) {
            Some(i) => Ok(i),
            None => bail!("{flag}: column `{name}` is not in --input_schema (columns: {})", self.names().join(", ")),
        }
    }

    /// Column names in order.
    pub fn names(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.name.as_str()).collect()
    }

    /// A schema of only the first `n` columns.
    pub fn prefix(&self, n: usize) -> Schema {
        Schema { columns: self.columns[..n].to_vec() }
    }

    /// Parses the tab-separated `fields` of one row; `place` is `file:line` for error messages.
    pub fn parse_fields(&self, fields: &[&str], place: &str) -> Result<Vec<Value>> {
        if fields.len() != self.columns.len() {
            bail!(
                "{place}: expected {} tab-separated columns ({}), found {}",
                self.columns.len(),
                self.names().join(", "),
                fields.len()
            );
        }
        self.columns.iter().zip(fields).map(|(col, raw)| parse_value(col, raw, place)).collect()
    }
}

fn parse_value(col: &Column, raw: &str, place: &str) -> Result<Value> {
    let bad = |what: &str| -> anyhow::Error {
        anyhow::anyhow!("{place}: column `{}`: `{}` is not {what}", col.name, clip(raw))
    };
    Ok(match (col.kind, col.len) {
        (ColumnType::Str, _) => Value::Str(raw.to_string()),
        (ColumnType::Int, 1) => Value::Int(raw.trim().parse().map_err(|_| bad("an integer"))?),
        (ColumnType::Float, 1) => {
            let v: f64 = raw.trim().parse().map_err(|_| bad("a number"))?;
            if !v.is_finite() {
                return Err(bad("a finite number"));
            }
            Value::Float(v)
        }
        (ColumnType::Int, n) => {
            let v: Vec<i64> = raw
                .split(',')
                .map(|p| p.trim().parse())
                .collect::<Result<_, _>>()
                .map_err(|_| bad(&format!("{n} comma-separated integers")))?;
            if v.len() != n {
                return Err(bad(&format!("{n} comma-separated integers (found {})", v.len())));
            }
            Value::Ints(v)
        }
        (ColumnType::Float, n) => {
            let v: Vec<f32> = raw
                .split(',')
                .map(|p| p.trim().parse::<f32>())
                .collect::<Result<_, _>>()
                .map_err(|_| bad(&format!("{n} comma-separated numbers")))?;
            if v.len() != n {
                return Err(bad(&format!("{n} comma-separated numbers (found {})", v.len())));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(bad(&format!("{n} finite numbers")));
            }
            Value::Floats(v)
        }
    })
}

/// The first 60 characters of a field, made [`visible`], for error messages.
fn clip(s: &str) -> String {
    let head: String = s.chars().take(60).collect();
    let mut out = visible(&head);
    if head.len() < s.len() {
        out.push('…');
    }
    out
}

/// `s` as it can be quoted in a message: a backslash, control characters (NUL, escape...),
/// whitespace other than the space, and invisible format characters are written as Rust escapes
/// (`\\`, `\0`, `\t`, `\u{1b}`, `\u{200b}`), so that the message shows what the file holds.
pub fn visible(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || (c.is_whitespace() && c != ' ') || is_invisible(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Format characters and fillers that print as nothing (soft hyphen, zero-width and
/// direction marks, word joiners, the BOM, Hangul fillers, tags).
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{34f}'
            | '\u{61c}'
            | '\u{115f}'
            | '\u{1160}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{3164}'
            | '\u{feff}'
            | '\u{ffa0}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{e0000}'..='\u{e007f}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_schema_and_rows() {
        let s = Schema::parse("sent:str:1,label:str:1,logits:float:2,n:int:1").unwrap();
        let v = s.parse_fields(&["a b", "1", "0.5,-1", "3"], "t:1").unwrap();
        assert_eq!(v[2], Value::Floats(vec![0.5, -1.0]));
        assert_eq!(v[3], Value::Int(3));
        assert_eq!(v[2].to_output(), "[0.5, -1.0]");
    }

    #[test]
    fn rejects_bad_schema_and_rows() {
        assert!(Schema::parse("a:bool:1").unwrap_err().to_string().contains("expected str, int or float"));
        assert!(Schema::parse("a:str").is_err());
        let s = Schema::parse("a:str:1,l:float:2").unwrap();
        let e = s.parse_fields(&["x"], "f.tsv:3").unwrap_err().to_string();
        assert!(e.contains("f.tsv:3") && e.contains("expected 2"), "{e}");
        let e = s.parse_fields(&["x", "1,2,3"], "f.tsv:4").unwrap_err().to_string();
        assert!(e.contains("`l`") && e.contains("found 3"), "{e}");
        assert!(s.parse_fields(&["x", "1,nan"], "f:1").is_err());
        let e = s.parse_fields(&["x", "1,\u{1b}[2J"], "f.tsv:5").unwrap_err().to_string();
        assert!(e.contains("f.tsv:5") && e.contains("`l`") && e.contains("`1,\\u{1b}[2J`"), "{e}");
    }

    #[test]
    fn visible_escapes_what_would_not_show() {
        assert_eq!(visible("0\0"), "0\\0");
        assert_eq!(visible("a\tb\r\n"), "a\\tb\\r\\n");
        assert_eq!(visible("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(visible("x\u{200b}y\u{a0}z\u{feff}"), "x\\u{200b}y\\u{a0}z\\u{feff}");
        assert_eq!(visible("a\\0"), "a\\\\0", "a backslash is not mistaken for an escape");
        assert_eq!(visible("it's \"café\" 中文 ❤️"), "it's \"café\" 中文 ❤️");
    }
}
