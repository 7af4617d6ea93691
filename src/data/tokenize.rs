//! BERT uncased WordPiece tokenization of single sentences and pairs, truncated `longest_first`.

use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{EncodeInput, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// One tokenized row (no padding): token ids and segment ids of equal length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// WordPiece ids, `[CLS] a [SEP] (b [SEP])`.
    pub ids: Vec<u32>,
    /// Segment ids: 0 for the first text, 1 for the second.
    pub type_ids: Vec<u32>,
}

/// A BERT tokenizer that truncates to a fixed maximum length and never pads.
pub struct BertTokenizer {
    inner: Tokenizer,
    lowercase: bool,
}

impl BertTokenizer {
    /// Loads `tokenizer.json` from `model_dir`, or builds the uncased BERT pipeline from `vocab.txt`.
    /// `max_len` is the truncation length (special tokens included).
    pub fn load(model_dir: &Path, max_len: usize, lowercase: bool) -> Result<Self> {
        let json = model_dir.join("tokenizer.json");
        let vocab = model_dir.join("vocab.txt");
        let mut inner = if json.is_file() {
            Tokenizer::from_file(&json).map_err(|e| anyhow!("cannot load tokenizer {}: {e}", json.display()))?
        } else if vocab.is_file() {
            from_vocab(&vocab)?
        } else {
            bail!("{}: no tokenizer.json or vocab.txt (a BERT model directory needs one of them)", model_dir.display());
        };
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| anyhow!("cannot set truncation to {max_len}: {e}"))?;
        Ok(BertTokenizer { inner, lowercase })
    }

    /// The id of a vocabulary token.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Tokenizes a batch of `(text_a, optional text_b)` rows.
    pub fn encode_batch(&self, rows: &[(&str, Option<&str>)]) -> Result<Vec<Encoded>> {
        let inputs: Vec<EncodeInput> = rows
            .iter()
            .map(|(a, b)| {
                let a = self.case(a);
                match b {
                    Some(b) => EncodeInput::Dual(a.into(), self.case(b).into()),
                    None => EncodeInput::Single(a.into()),
                }
            })
            .collect();
        let encodings = self.inner.encode_batch(inputs, true).map_err(|e| anyhow!("tokenization failed: {e}"))?;
        Ok(encodings
            .into_iter()
            .map(|e| Encoded { ids: e.get_ids().to_vec(), type_ids: e.get_type_ids().to_vec() })
            .collect())
    }

    fn case(&self, text: &str) -> String {
        if self.lowercase {
            text.to_lowercase()
        } else {
            text.to_string()
        }
    }
}

fn from_vocab(vocab: &Path) -> Result<Tokenizer> {
    let path = vocab.to_str().context("vocab path is not UTF-8")?;
    let wordpiece = WordPiece::from_file(path)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| anyhow!("cannot load {}: {e}", vocab.display()))?;
    let cls = wordpiece_id(&wordpiece, "[CLS]", vocab)?;
    let sep = wordpiece_id(&wordpiece, "[SEP]", vocab)?;
    let mut tk = Tokenizer::new(wordpiece);
    tk.with_normalizer(Some(BertNormalizer::new(true, true, None, true)));
    tk.with_pre_tokenizer(Some(BertPreTokenizer));
    tk.with_post_processor(Some(BertProcessing::new(("[SEP]".into(), sep), ("[CLS]".into(), cls))));
    Ok(tk)
}

fn wordpiece_id(wp: &WordPiece, token: &str, vocab: &Path) -> Result<u32> {
    use tokenizers::Model;
    wp.token_to_id(token).with_context(|| format!("{}: the vocabulary has no {token} token", vocab.display()))
}
