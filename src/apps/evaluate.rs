//! `--mode=evaluate`, and the evaluation used during training.

use crate::config::run::{RunConfig, TableKind};
use crate::data::encode::encode_rows;
use crate::data::labels::LabelSet;
use crate::data::table::read_table;
use crate::data::tokenize::BertTokenizer;
use crate::logging;
use crate::model::checkpoint::load_checkpoint;
use crate::model::classifier::Classifier;
use crate::model::infer::{check_sequence_length, evaluate_examples};
use crate::output::{Destination, OutputFile};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// Checks that `--label_enumerate_values`, when given, matches the checkpoint's labels.
pub fn check_labels(cfg: &RunConfig, ckpt_labels: &LabelSet) -> Result<()> {
    if let Some(v) = cfg.args.label_enumerate_values.as_deref() {
        let given = LabelSet::parse(Some(v))?;
        if &given != ckpt_labels {
            bail!(
                "--label_enumerate_values ({}) differs from the checkpoint's labels ({})",
                given.names.join(","),
                ckpt_labels.names.join(",")
            );
        }
    }
    Ok(())
}

/// `--mode=evaluate`: metrics of the checkpoint on the last table, printed and optionally saved as
/// JSON to `--outputs` (written by [`crate::output`]'s rules).
pub fn run(cfg: &RunConfig, device: &Device) -> Result<()> {
    let start = Instant::now();
    let out_path = cfg.args.outputs.as_deref().map(Path::new);
    let dest = out_path.map(|p| super::output_destination(cfg, p, "--outputs")).transpose()?;
    let ckpt = load_checkpoint(&cfg.checkpoint_dir(), device)?;
    check_labels(cfg, &ckpt.labels)?;
    check_sequence_length(cfg.args.sequence_length, ckpt.config.max_position_embeddings)?;
    let tokenizer = BertTokenizer::load(&ckpt.dir, cfg.args.sequence_length, cfg.args.do_lower_case)?;
    let table = cfg.last_table();
    let domain_column = match cfg.table_kind {
        TableKind::MetaKd { domain_column } => Some(domain_column),
        TableKind::Plain => None,
    };
    if let (Some(genre), None) = (cfg.udp.get("genre"), domain_column) {
        bail!("--user_defined_parameters: genre={genre} selects rows by their `domain` column, which --input_schema lacks");
    }
    let rows = read_table(table, &cfg.schema, cfg.skip_header(table)?)?;
    let examples = encode_rows(&rows, table, &cfg.columns, &cfg.schema.names(), &tokenizer, Some(&ckpt.labels))?;
    let model = Classifier::load(&ckpt.config, &|n| ckpt.params.frozen(n))?;
    let metrics = match domain_column {
        Some(col) => crate::metakd::domain_eval::run_evaluate(cfg, &ckpt, &model, &rows, examples, col, device)?,
        None => {
            let report = evaluate_examples(&model, &examples, cfg.args.micro_batch_size, ckpt.labels.len(), device)?;
            logging::info(format!("Evaluation of {} on {}: {}", ckpt.dir.display(), table.display(), report.summary()));
            report.to_json()
        }
    };
    let json = serde_json::to_string_pretty(&metrics)?;
    // Data parallel: every worker evaluated its share; rank 0 prints and writes.
    if !crate::dist::world().is_root() {
        return Ok(());
    }
    // Printed once when --outputs is stdout itself.
    if dest != Some(Destination::Stdout) {
        println!("{json}");
    }
    if let (Some(path), Some(dest)) = (out_path, &dest) {
        let mut out = OutputFile::create(path, dest)?;
        writeln!(out, "{json}").with_context(|| format!("cannot write {}", path.display()))?;
        out.commit()?;
    }
    logging::info(format!("Duration time: {:.1} s", start.elapsed().as_secs_f64()));
    Ok(())
}
