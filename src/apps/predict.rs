//! `--mode=predict`: output_schema columns then append_cols for every input row, no header.

use crate::config::run::RunConfig;
use crate::data::encode::encode_rows;
use crate::data::table::TableFingerprint;
use crate::data::table::{read_lines, Row};
use crate::data::tokenize::BertTokenizer;
use crate::digest::sha256_file;
use crate::distill::logits::{sidecar_json, sidecar_path, LogitsSidecar};
use crate::format::{numpy_f32, python_str_repr};
use crate::logging;
use crate::model::checkpoint::{load_checkpoint, weights_file};
use crate::model::classifier::Classifier;
use crate::model::infer::{argmax, check_sequence_length, model_outputs, ModelOutputs};
use crate::output::OutputFile;
use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::io::Write;
use std::path::Path;

/// The output columns EasyNLP's predictor knows.
const OUTPUT_COLUMNS: &[&str] = &["predictions", "probabilities", "logits", "output", "id"];

/// `--mode=predict`. The output is written by [`crate::output`]'s rules; a teacher logits export
/// (`--output_schema=logits`) also writes `<outputs>.meta.json`, except for a write-through output.
/// A SIGINT/SIGTERM stops it between batches, its temporary file removed.
pub fn run(cfg: &RunConfig, device: &Device) -> Result<()> {
    let outputs: Vec<&str> = cfg.args.output_schema.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if outputs.is_empty() {
        bail!("--output_schema is required in predict mode: any of {}", OUTPUT_COLUMNS.join(","));
    }
    for o in &outputs {
        if !OUTPUT_COLUMNS.contains(o) {
            bail!("--output_schema: unknown column `{o}` (known: {})", OUTPUT_COLUMNS.join(","));
        }
    }
    let append: Vec<usize> = match cfg.args.append_cols.as_deref().filter(|s| !s.is_empty()) {
        Some(cols) => cols.split(',').map(|c| cfg.schema.index_of(c.trim(), "--append_cols")).collect::<Result<_>>()?,
        None => Vec::new(),
    };
    let id_col = cfg.schema.columns.iter().position(|c| c.name == "id");
    let out_path = Path::new(cfg.args.outputs.as_deref().expect("checked in config"));
    let dest = super::output_destination(cfg, out_path, "--outputs")?;
    let logits_export = outputs == ["logits"];
    let sidecar = if logits_export && !dest.is_through() {
        let path = sidecar_path(out_path);
        let side_dest = super::output_destination(cfg, &path, "the logits sidecar")?;
        Some((path, side_dest))
    } else {
        None
    };
    let ckpt = load_checkpoint(&cfg.checkpoint_dir(), device)?;
    super::evaluate::check_labels(cfg, &ckpt.labels)?;
    check_sequence_length(cfg.args.sequence_length, ckpt.config.max_position_embeddings)?;
    let tokenizer = BertTokenizer::load(&ckpt.dir, cfg.args.sequence_length, cfg.args.do_lower_case)?;
    let model = Classifier::load(&ckpt.config, &|n| ckpt.params.frozen(n))?;
    let table = cfg.last_table();
    let skip_header = cfg.skip_header(table)?;
    let lines = read_lines(table, skip_header)?;
    if lines.is_empty() {
        bail!("{}: the table has no rows", table.display());
    }
    // Data parallel: every worker computes its batches of each chunk, rank 0 writes all rows.
    let root = crate::dist::world().is_root();
    let mut out = if root { Some(OutputFile::create(out_path, &dest)?) } else { None };
    // From here a signal stops at the next chunk or batch, which removes the temporary file.
    crate::interrupt::defer();
    let mut ids = Rng::from_entropy();
    let name = table.display().to_string();
    let mut written = 0;
    // The logits' SHA-256 as written, for the sidecar (so both can be complete before either moves).
    let mut logits_hash = sha2::Sha256::default();
    for chunk in lines.chunks(cfg.args.predict_slice_size.max(1)) {
        crate::interrupt::check()?;
        let rows: Vec<Row> = chunk
            .iter()
            .map(|(line, text)| {
                let fields: Vec<&str> = text.split('\t').collect();
                Ok(Row { line: *line, values: cfg.schema.parse_fields(&fields, &format!("{name}:{line}"))? })
            })
            .collect::<Result<_>>()?;
        let examples = encode_rows(&rows, table, &cfg.columns, &cfg.schema.names(), &tokenizer, None)?;
        let ModelOutputs { logits, probs } = model_outputs(&model, &examples, cfg.args.micro_batch_size, device)?;
        let Some(out) = out.as_mut() else {
            written += rows.len();
            continue;
        };
        for (i, row) in rows.iter().enumerate() {
            let mut cols: Vec<String> = Vec::with_capacity(outputs.len() + append.len());
            for o in &outputs {
                cols.push(match *o {
                    "predictions" => ckpt.labels.names[argmax(&probs[i])].clone(),
                    "probabilities" => join_f32(&probs[i]),
                    "logits" => join_f32(&logits[i]),
                    "output" => output_repr(&ckpt.labels.names, &probs[i], &logits[i]),
                    _ => match id_col {
                        Some(c) => row.values[c].to_output(),
                        None => ids.uuid4(),
                    },
                });
            }
            cols.extend(append.iter().map(|&c| row.values[c].to_output()));
            let line = cols.join("\t") + "\n";
            out.write_all(line.as_bytes()).with_context(|| format!("cannot write {}", out_path.display()))?;
            if sidecar.is_some() {
                sha2::Digest::update(&mut logits_hash, line.as_bytes());
            }
        }
        written += rows.len();
        logging::progress(written, lines.len(), "rows predicted");
    }
    let Some(out) = out else {
        return Ok(());
    };
    match sidecar {
        Some((path, side_dest)) => {
            // A teacher logits export: fingerprint the input so KD can check the join. Both files
            // are complete before either is moved into place.
            let meta = LogitsSidecar {
                table: TableFingerprint::of(table, skip_header)?,
                labels: ckpt.labels.names.clone(),
                teacher: ckpt.dir.canonicalize().unwrap_or(ckpt.dir.clone()).display().to_string(),
                teacher_weights_sha256: sha256_file(&weights_file(&ckpt.dir))?,
            };
            let mut side = OutputFile::create(&path, &side_dest)?;
            let sha = crate::digest::hex(&sha2::Digest::finalize(logits_hash));
            side.write_all(sidecar_json(&meta, &sha)?.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            out.commit()?;
            side.commit()?;
        }
        None => {
            out.commit()?;
            if logits_export {
                logging::info(format!(
                    "{} is written through (not a regular file): no sidecar {} written",
                    out_path.display(),
                    sidecar_path(out_path).display()
                ));
            }
        }
    }
    logging::info(format!("wrote {written} predictions to {}", out_path.display()));
    Ok(())
}

fn join_f32(v: &[f32]) -> String {
    v.iter().map(|x| numpy_f32(*x)).collect::<Vec<_>>().join(",")
}

/// EasyNLP's `output` column: a Python list of `{'pred', 'prob', 'logit'}` sorted by probability.
fn output_repr(names: &[String], probs: &[f32], logits: &[f32]) -> String {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let items: Vec<String> = order
        .iter()
        .map(|&i| {
            format!(
                "{{'pred': {}, 'prob': {}, 'logit': {}}}",
                python_str_repr(&names[i]),
                numpy_f32(probs[i]),
                numpy_f32(logits[i])
            )
        })
        .collect();
    format!("[{}]", items.join(", "))
}
