//! Reading tab-separated tables: one row per line, a UTF-8 BOM and trailing `\r` stripped,
//! optional header skipped, every row checked against the schema.

use super::schema::{Schema, Value};
use crate::digest::sha256_hex;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::BufRead;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// One parsed row with its 1-based line number in the file.
#[derive(Clone, Debug)]
pub struct Row {
    /// 1-based line number in the source file.
    pub line: usize,
    /// Values in schema order.
    pub values: Vec<Value>,
}

/// Checks a table path named by `flag` before anything is read: it must exist and not be a
/// directory. A FIFO, a character device or a process substitution `<(cmd)` is read like a file.
pub fn check_table_path(path: &Path, flag: &str) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => bail!("{flag}: `{}` is a directory, not a table file", path.display()),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{flag}: table file `{}` does not exist", path.display())
        }
        Err(e) => bail!("{flag}: cannot access table file `{}`: {e}", path.display()),
    }
}

/// The bytes of a table file. A regular file is read at each call; anything else (a FIFO, a
/// character device, a process substitution) can be read only once, so it is read at the first
/// call and its bytes are kept for the rest of the process (keyed by device and inode, so that
/// two paths to the same pipe share them).
pub fn table_bytes(path: &Path) -> Result<Arc<Vec<u8>>> {
    let read = || std::fs::read(path).with_context(|| format!("cannot read table {}", path.display()));
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read table {}", path.display()))?;
    if meta.is_dir() {
        bail!("{}: is a directory, not a table file", path.display());
    }
    if meta.is_file() {
        return Ok(Arc::new(read()?));
    }
    type Streams = HashMap<(u64, u64), Arc<Vec<u8>>>;
    static STREAMS: OnceLock<Mutex<Streams>> = OnceLock::new();
    let mut streams = STREAMS.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    let key = (meta.dev(), meta.ino());
    if let Some(bytes) = streams.get(&key) {
        return Ok(bytes.clone());
    }
    let bytes = Arc::new(read()?);
    streams.insert(key, bytes.clone());
    Ok(bytes)
}

/// The first line of a table, without a UTF-8 BOM and its line end (invalid UTF-8 replaced). Of a
/// regular file only that line is read.
pub fn first_line(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read table {}", path.display()))?;
    let mut first = Vec::new();
    if meta.is_file() {
        let file = std::fs::File::open(path).with_context(|| format!("cannot read table {}", path.display()))?;
        std::io::BufReader::new(file)
            .read_until(b'\n', &mut first)
            .with_context(|| format!("cannot read table {}", path.display()))?;
    } else {
        let bytes = table_bytes(path)?;
        first.extend(bytes.split(|&b| b == b'\n').next().unwrap_or_default());
    }
    let first = String::from_utf8_lossy(&first);
    Ok(first.trim_start_matches('\u{feff}').trim_end_matches(['\n', '\r']).to_string())
}

/// The lines of a table read as `bytes` from `path`: BOM and trailing `\r` stripped, the header
/// skipped if asked, a final empty line ignored. Returns `(line_number, text)` pairs.
pub fn lines_of<'b>(path: &Path, bytes: &'b [u8], skip_first_line: bool) -> Result<Vec<(usize, &'b str)>> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
            bail!("{}:{line}: the table is not valid UTF-8", path.display());
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines: Vec<(usize, &str)> =
        text.split('\n').enumerate().map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l))).collect();
    if text.ends_with('\n') || text.is_empty() {
        lines.pop();
    }
    if skip_first_line && !lines.is_empty() {
        lines.remove(0);
    }
    Ok(lines)
}

/// Reads the raw lines of a table (see [`lines_of`]).
pub fn read_lines(path: &Path, skip_first_line: bool) -> Result<Vec<(usize, String)>> {
    let bytes = table_bytes(path)?;
    Ok(lines_of(path, &bytes, skip_first_line)?.into_iter().map(|(n, l)| (n, l.to_string())).collect())
}

/// Reads and parses a whole table against `schema`. An empty table is an error.
pub fn read_table(path: &Path, schema: &Schema, skip_first_line: bool) -> Result<Vec<Row>> {
    let bytes = table_bytes(path)?;
    let lines = lines_of(path, &bytes, skip_first_line)?;
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
        let bytes = table_bytes(path)?;
        Ok(TableFingerprint {
            path: path.display().to_string(),
            rows: lines_of(path, &bytes, skip_first_line)?.len(),
            sha256: sha256_hex(&bytes),
        })
    }
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

    #[test]
    fn a_fifo_is_read_once_and_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.fifo");
        assert!(std::process::Command::new("mkfifo").arg(&p).status().unwrap().success());
        check_table_path(&p, "--tables").unwrap();
        let writer = {
            let p = p.clone();
            std::thread::spawn(move || std::fs::write(&p, "h1\th2\nhello\t1\n").unwrap())
        };
        // Reading a FIFO a second time would block for ever: read in a thread, with a deadline.
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = p.clone();
        std::thread::spawn(move || {
            let schema = Schema::parse("s:str:1,l:str:1").unwrap();
            let first = first_line(&reader).unwrap();
            let rows = read_table(&reader, &schema, true).unwrap().len();
            let lines = read_lines(&reader, false).unwrap().len();
            let same = Arc::ptr_eq(&table_bytes(&reader).unwrap(), &table_bytes(&reader).unwrap());
            tx.send((first, rows, lines, same)).unwrap();
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the FIFO was opened twice");
        assert_eq!(got, ("h1\th2".to_string(), 1, 2, true));
        writer.join().unwrap();
    }

    #[test]
    fn directories_and_missing_paths_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_table_path(dir.path(), "--tables").unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let e = check_table_path(&dir.path().join("nope.tsv"), "--tables").unwrap_err().to_string();
        assert!(e.contains("nope.tsv") && e.contains("does not exist"), "{e}");
        check_table_path(Path::new("/dev/null"), "--tables").unwrap();
        let e = read_table(Path::new("/dev/null"), &Schema::parse("s:str:1").unwrap(), false).unwrap_err();
        assert!(e.to_string().contains("no rows"), "{e}");
    }
}
