//! `--mode=evaluate`, and the evaluation used during training.

use super::text::encode_rows;
use crate::cli::config::RunConfig;
use crate::data::batch::{bucketed_batches, make_batch, Example};
use crate::data::labels::LabelSet;
use crate::data::table::read_table;
use crate::data::tokenize::BertTokenizer;
use crate::logging;
use crate::model::bert::ForwardCtx;
use crate::model::checkpoint::load_checkpoint;
use crate::model::classifier::Classifier;
use crate::output::{Destination, OutputFile};
use anyhow::{bail, Context, Result};
use candle_core::{Device, D};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// Runs the model over `examples` (no dropout, no autograd graph) and computes the metrics.
pub fn evaluate_examples(
    model: &Classifier,
    examples: &[Example],
    batch_size: usize,
    num_labels: usize,
    device: &Device,
) -> Result<crate::train::metrics::EvalReport> {
    let ctx = ForwardCtx::eval();
    let (mut preds, mut labels, mut loss_sum) = (Vec::new(), Vec::new(), 0f64);
    let lengths: Vec<usize> = examples.iter().map(|e| e.enc.ids.len()).collect();
    for idx in bucketed_batches(&lengths, batch_size, None) {
        let rows: Vec<&Example> = idx.iter().map(|&i| &examples[i]).collect();
        let batch = make_batch(&rows, device)?;
        let logits = model.forward(&batch, &ctx)?;
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?.to_vec2::<f32>()?;
        for (row, lp) in rows.iter().zip(&log_probs) {
            let label = row.label.expect("evaluation rows carry labels") as usize;
            loss_sum -= lp[label] as f64;
            preds.push(argmax(lp));
            labels.push(label);
        }
    }
    Ok(crate::train::metrics::EvalReport::new(&preds, &labels, num_labels, loss_sum))
}

/// Index of the largest value (the first on ties).
pub fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, x)| if *x > v[best] { i } else { best })
}

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
    check_sequence_length(cfg, ckpt.config.max_position_embeddings)?;
    let tokenizer = BertTokenizer::load(&ckpt.dir, cfg.args.sequence_length, cfg.args.do_lower_case)?;
    let table = cfg.last_table();
    let domain_column = cfg.schema.columns.iter().position(|c| c.name == "domain");
    if let (Some(genre), None) = (cfg.udp.get("genre"), domain_column) {
        bail!("--user_defined_parameters: genre={genre} selects rows by their `domain` column, which --input_schema lacks");
    }
    let rows = read_table(table, &cfg.schema, cfg.skip_header(table)?)?;
    let examples = encode_rows(&rows, table, &cfg.columns, &cfg.schema.names(), &tokenizer, Some(&ckpt.labels))?;
    let model = Classifier::load(&ckpt.config, &|n| ckpt.params.frozen(n))?;
    if let Some(col) = domain_column {
        crate::metakd::domain_eval::run_evaluate(cfg, &ckpt, &model, &rows, examples, col, device)?;
        logging::info(format!("Duration time: {:.1} s", start.elapsed().as_secs_f64()));
        return Ok(());
    }
    let report = evaluate_examples(&model, &examples, cfg.args.micro_batch_size, ckpt.labels.len(), device)?;
    logging::info(format!("Evaluation of {} on {}: {}", ckpt.dir.display(), table.display(), report.summary()));
    let json = serde_json::to_string_pretty(&report.to_json())?;
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

/// `--sequence_length` must fit the model's position embeddings.
pub fn check_sequence_length(cfg: &RunConfig, max_positions: usize) -> Result<()> {
    if cfg.args.sequence_length > max_positions {
        bail!(
            "--sequence_length={} exceeds the model's max_position_embeddings ({max_positions})",
            cfg.args.sequence_length
        );
    }
    Ok(())
}
