//! `--mode=metakd_embeddings`: the embedding of every review under the pretrained (not fine-tuned)
//! BERT encoder, for the prototype weights.
//!
//! Each review is encoded alone (`[CLS] review [SEP]`, truncated to `--sequence_length`). Its
//! embedding is the mean of the last hidden states over its real tokens **after `[CLS]`**, i.e. the
//! word pieces and the final `[SEP]`. This is EasyNLP's choice (`last_hidden_state[:, 1:, :].mean`)
//! without its bug: padding positions are excluded, so a row's embedding does not depend on the
//! batch it is in, and equals EasyNLP's for a row that needs no padding.

use super::write_files_atomic;
use crate::config::run::PrepConfig;
use crate::data::batch::{bucketed_batches, make_batch, Example};
use crate::data::tokenize::BertTokenizer;
use crate::format::numpy_f32;
use crate::logging;
use crate::metakd::tables::{format_meta, guid_prefix, read_senti, MetaRow};
use crate::model::bert::{masked_mean, Bert, ForwardCtx, Taps};
use crate::model::config::BertConfig;
use crate::model::params::{read_weights, Params};
use crate::model::zoo::resolve_model;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::Path;

/// A pretrained BERT encoder with its tokenizer, for mean-pooled sentence embeddings.
pub struct Encoder {
    bert: Bert,
    tokenizer: BertTokenizer,
    device: Device,
}

impl Encoder {
    /// Loads the encoder of the BERT directory `model_dir` (pooler and heads are not needed),
    /// truncating inputs to `max_len` tokens.
    pub fn load(model_dir: &Path, max_len: usize, lowercase: bool, device: &Device) -> Result<Self> {
        let config = BertConfig::load(model_dir)?;
        if max_len > config.max_position_embeddings {
            bail!(
                "--sequence_length={max_len} exceeds the model's max_position_embeddings ({})",
                config.max_position_embeddings
            );
        }
        let (weights, _) = read_weights(model_dir, device)?;
        let mut params = Params::default();
        for (name, tensor) in weights.iter().filter(|(n, _)| n.starts_with("bert.")) {
            params.insert(name, tensor)?;
        }
        let bert = Bert::load(&config, &|n| params.frozen(n), false)
            .with_context(|| format!("{}: incomplete BERT weights", model_dir.display()))?;
        let tokenizer = BertTokenizer::load(model_dir, max_len, lowercase)?;
        Ok(Encoder { bert, tokenizer, device: device.clone() })
    }

    /// The hidden size H of the embeddings.
    pub fn hidden_size(&self) -> usize {
        self.bert.config().hidden_size
    }

    /// The embeddings of `texts`, in their order, computed in length-bucketed batches of
    /// `batch_size` rows (no dropout, no autograd graph).
    pub fn embed(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let pairs: Vec<(&str, Option<&str>)> = texts.iter().map(|t| (*t, None)).collect();
        let examples: Vec<Example> = self
            .tokenizer
            .encode_batch(&pairs)?
            .into_iter()
            .map(|enc| Example { enc, label: None, teacher_logits: None, domain: None })
            .collect();
        let lengths: Vec<usize> = examples.iter().map(|e| e.enc.ids.len()).collect();
        let ctx = ForwardCtx::eval();
        let mut out = vec![Vec::new(); examples.len()];
        let mut done = 0;
        for idx in bucketed_batches(&lengths, batch_size, None) {
            let rows: Vec<&Example> = idx.iter().map(|&i| &examples[i]).collect();
            let batch = make_batch(&rows, &self.device)?;
            let enc = self.bert.forward(
                &batch.input_ids,
                &batch.token_type_ids,
                &batch.attention_mask,
                Taps::default(),
                &ctx,
            )?;
            let len = enc.last_hidden.dim(1)?;
            if len < 2 {
                bail!("a tokenized review is shorter than [CLS] [SEP]");
            }
            // Positions 1.. : everything after [CLS]; the mask drops the padding.
            let hidden = enc.last_hidden.narrow(1, 1, len - 1)?;
            let mask = batch.attention_mask.narrow(1, 1, len - 1)?;
            for (&i, e) in idx.iter().zip(masked_mean(&hidden, &mask)?.to_vec2::<f32>()?) {
                out[i] = e;
            }
            done += idx.len();
            logging::progress(done, examples.len(), "rows embedded");
        }
        Ok(out)
    }
}

/// `--mode=metakd_embeddings`.
pub fn run(cfg: &PrepConfig) -> Result<()> {
    let rows = read_senti(&cfg.input, &cfg.domains)?;
    let model_dir = resolve_model(cfg.udp.require("pretrain_model_name_or_path")?, &cfg.args.modelzoo_base_dir)?;
    let device = crate::device::select(cfg.args.worker_gpu, crate::dist::world().local_rank())?;
    let encoder = Encoder::load(&model_dir, cfg.args.sequence_length, cfg.args.do_lower_case, &device)?;
    logging::info(format!(
        "embedding {} rows of {} with {} (H = {})",
        rows.len(),
        cfg.input.display(),
        model_dir.display(),
        encoder.hidden_size()
    ));
    let texts: Vec<&str> = rows.iter().map(|r| r.review.as_str()).collect();
    let embeddings = encoder.embed(&texts, cfg.args.micro_batch_size)?;
    let prefix = guid_prefix(&cfg.input);
    let out: Vec<MetaRow> = rows
        .into_iter()
        .zip(embeddings)
        .enumerate()
        .map(|(i, (r, e))| {
            MetaRow::from_senti(r, &prefix, i, e.iter().map(|v| numpy_f32(*v)).collect::<Vec<_>>().join(" "))
        })
        .collect();
    write_files_atomic(&[(cfg.output.clone(), format_meta("embeddings", &out))])?;
    logging::info(format!("wrote {} embeddings to {}", out.len(), cfg.output.display()));
    Ok(())
}
