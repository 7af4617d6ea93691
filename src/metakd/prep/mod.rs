//! Meta-KD data preparation: EasyNLP's four preprocessing scripts
//! (`examples/knowledge_distillation/metakd/{generate_senti_data, extract_embeddings,
//! generate_meta_weights, generate_dev_file}.py`) as modes of the binary, with their bugs fixed.
//!
//! 1. `metakd_split` ([`split`]): per-domain reviews -> `{train,dev,test}.tsv` (`review domain sentiment`);
//! 2. `metakd_embeddings` ([`embeddings`]): mean-pooled pretrained-encoder embedding of every review;
//! 3. `metakd_weights` ([`weights`]): the prototype weight of every training instance;
//! 4. `metakd_dev` ([`dev`]): a dev/test split in the Meta-KD table layout with weight 0.
//!
//! Every table is UTF-8, one row per line, tab-separated, with a header row ([`tables`]). Outputs are
//! written to temporary files and renamed when complete, so a failed step leaves no partial output.

pub mod dev;
pub mod embeddings;
pub mod source;
pub mod split;
pub mod weights;

use crate::output::{Destination, OutputFile};
use anyhow::{Context, Result};
use std::io::Write;
use std::path::PathBuf;

/// Puts `text` on one line: every whitespace run that holds a tab or a line break (`\n`, `\r`,
/// vertical tab, form feed, U+0085, U+2028, U+2029) becomes a single space, other runs are kept
/// as they are, and the ends are trimmed.
pub fn one_line(text: &str) -> String {
    let is_break = |c: char| matches!(c, '\t' | '\n' | '\r' | '\u{0b}' | '\u{0c}' | '\u{85}' | '\u{2028}' | '\u{2029}');
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    for c in text.trim().chars() {
        if c.is_whitespace() {
            run.push(c);
            continue;
        }
        if run.chars().any(is_break) {
            out.push(' ');
        } else {
            out.push_str(&run);
        }
        run.clear();
        out.push(c);
    }
    out
}

/// Writes every `(path, contents)` by [`crate::output`]'s rules (regular files through a synced
/// temporary sibling), moving them into place only when all were written, so a failure leaves
/// none of them behind.
pub fn write_files_atomic(files: &[(PathBuf, String)]) -> Result<()> {
    let mut pending = Vec::with_capacity(files.len());
    for (path, contents) in files {
        let dest = Destination::resolve(path, "--outputs")?;
        let mut out = OutputFile::create(path, &dest)?;
        out.write_all(contents.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
        pending.push(out);
    }
    pending.into_iter().try_for_each(OutputFile::commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_collapses_breaks_only() {
        assert_eq!(one_line("Title\n\tBody  text.\r\n\r\nMore\ttext "), "Title Body  text. More text");
        assert_eq!(one_line("  a \n b  "), "a b");
        assert_eq!(one_line("\n\t"), "");
    }
}
