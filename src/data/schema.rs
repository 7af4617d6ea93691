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

/// The first 60 characters of a field, for error messages.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
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
    }
}
