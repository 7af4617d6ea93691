//! `--mode=metakd_dev`: a SENTI dev/test table in the Meta-KD layout
//! (`guid text_a text_b label domain weight`), with an empty text_b and weight 0.
//!
//! EasyNLP's `generate_dev_file.py` names the last column `embeddings` although it holds the
//! weight; here it is `weight`, the column the Meta-KD datasets read.

use super::write_files_atomic;
use crate::config::run::PrepConfig;
use crate::logging;
use crate::metakd::tables::{format_meta, guid_prefix, read_senti, MetaRow};
use anyhow::Result;

/// `--mode=metakd_dev`.
pub fn run(cfg: &PrepConfig) -> Result<()> {
    let rows = read_senti(&cfg.input, &cfg.domains)?;
    let prefix = guid_prefix(&cfg.input);
    let out: Vec<MetaRow> =
        rows.into_iter().enumerate().map(|(i, r)| MetaRow::from_senti(r, &prefix, i, "0".to_string())).collect();
    write_files_atomic(&[(cfg.output.clone(), format_meta("weight", &out))])?;
    logging::info(format!("wrote {} rows to {}", out.len(), cfg.output.display()));
    Ok(())
}
