//! BERT WordPiece tokenization of single sentences and pairs, truncated `longest_first`, set up
//! from a model directory as transformers' `BertTokenizerFast` sets it up.
//!
//! Only the prefix of a long text that can reach the output is tokenized: the tokenizer costs
//! about 130 bytes of memory per byte of text, so a multi-megabyte row tokenized whole would cost
//! gigabytes for at most `max_len` tokens. The result is the same as tokenizing the whole text.

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::path::Path;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{
    AddedToken, EncodeInput, Encoding, ModelWrapper, NormalizerWrapper, PostProcessor, PostProcessorWrapper,
    PreTokenizerWrapper, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

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
    /// The same pipeline without truncation, special tokens or padding: tokenizes prefixes.
    raw: Tokenizer,
    lowercase: bool,
    max_len: usize,
    /// Where a text can be cut; `None` for a pipeline whose cuts are not understood (texts are
    /// then tokenized whole).
    cuts: Option<CutPoints>,
}

impl BertTokenizer {
    /// Loads the tokenizer of `model_dir` as transformers' `BertTokenizerFast` does: `tokenizer.json`
    /// when there is one (its normalizer set as `tokenizer_config.json` says, when it says), else
    /// the BERT pipeline built from `vocab.txt` with `tokenizer_config.json`'s settings and
    /// special tokens ([`TokenizerSettings`]). `max_len` is the truncation length (special tokens
    /// included); `lowercase` lower-cases every text first (`--do_lower_case`).
    pub fn load(model_dir: &Path, max_len: usize, lowercase: bool) -> Result<Self> {
        let json = model_dir.join("tokenizer.json");
        let vocab = model_dir.join("vocab.txt");
        let settings = TokenizerSettings::read(model_dir)?;
        let mut inner = if json.is_file() {
            let mut tk =
                Tokenizer::from_file(&json).map_err(|e| anyhow!("cannot load tokenizer {}: {e}", json.display()))?;
            settings.apply_to_json(&mut tk);
            tk
        } else if vocab.is_file() {
            from_vocab(&vocab, &settings)?
        } else {
            bail!("{}: no tokenizer.json or vocab.txt (a BERT model directory needs one of them)", model_dir.display());
        };
        inner.with_padding(None);
        let mut raw = inner.clone();
        raw.with_truncation(None).map_err(|e| anyhow!("cannot turn truncation off: {e}"))?;
        raw.with_post_processor(None::<PostProcessorWrapper>);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| anyhow!("cannot set truncation to {max_len}: {e}"))?;
        let cuts = CutPoints::of(&inner);
        Ok(BertTokenizer { inner, raw, lowercase, max_len, cuts })
    }

    /// The id of a vocabulary token.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Tokenizes a batch of `(text_a, optional text_b)` rows. A text longer than a few bytes per
    /// token of `max_len` is tokenized only as far as it can reach the output.
    pub fn encode_batch(&self, rows: &[(&str, Option<&str>)]) -> Result<Vec<Encoded>> {
        self.encode_batch_windowed(rows, 16 * self.max_len + 1024)
    }

    /// Whether long texts are tokenized by prefix (the pipeline is BERT's normalizer and
    /// pre-tokenizer with WordPiece); otherwise they are tokenized whole.
    pub fn tokenizes_prefixes(&self) -> bool {
        self.cuts.is_some()
    }

    /// [`Self::encode_batch`] with texts longer than `first_window` bytes tokenized by prefix,
    /// the first one cut after about `first_window` bytes (exposed to test the prefix path).
    pub fn encode_batch_windowed(&self, rows: &[(&str, Option<&str>)], first_window: usize) -> Result<Vec<Encoded>> {
        let Some(cuts) = &self.cuts else { return self.encode_batch_whole(rows) };
        let long = |(a, b): &(&str, Option<&str>)| a.len() > first_window || b.is_some_and(|b| b.len() > first_window);
        if !rows.iter().any(long) {
            return self.encode_batch_whole(rows);
        }
        let short: Vec<(&str, Option<&str>)> = rows.iter().filter(|r| !long(r)).copied().collect();
        let mut short = self.encode_batch_whole(&short)?.into_iter();
        let long_rows: Vec<(&str, Option<&str>)> = rows.iter().filter(|r| long(r)).copied().collect();
        let bounded: Vec<Encoded> =
            long_rows.par_iter().map(|&(a, b)| self.encode_bounded(cuts, a, b, first_window)).collect::<Result<_>>()?;
        let mut bounded = bounded.into_iter();
        rows.iter()
            .map(|r| if long(r) { bounded.next() } else { short.next() })
            .map(|e| e.context("tokenization lost a row"))
            .collect()
    }

    /// Tokenizes whole texts, then truncates (the reference the prefix path is checked against).
    pub fn encode_batch_whole(&self, rows: &[(&str, Option<&str>)]) -> Result<Vec<Encoded>> {
        let inputs: Vec<EncodeInput> = rows
            .iter()
            .map(|(a, b)| match b {
                Some(b) => EncodeInput::Dual(self.case(a).into(), self.case(b).into()),
                None => EncodeInput::Single(self.case(a).into()),
            })
            .collect();
        let encodings = self.inner.encode_batch(inputs, true).map_err(|e| anyhow!("tokenization failed: {e}"))?;
        Ok(encodings.iter().map(encoded).collect())
    }

    /// One row, tokenizing only prefixes of its texts. Each text is cut at a point after which
    /// its tokens are a prefix of the whole text's ([`CutPoints`]), far enough to give one token
    /// more than fits (or whole); truncation then keeps what it would keep of the whole texts.
    fn encode_bounded(&self, cuts: &CutPoints, a: &str, b: Option<&str>, first_window: usize) -> Result<Encoded> {
        let added = self.inner.get_post_processor().map_or(0, |p| p.added_tokens(b.is_some()));
        let Some(budget) = self.max_len.checked_sub(added) else {
            return self.encode_batch_whole(&[(a, b)])?.into_iter().next().context("tokenization lost a row");
        };
        let mut pa = self.prefix(cuts, a, budget + 1, first_window)?;
        let Some(b) = b else {
            return self.post_process(pa.enc, None);
        };
        let mut pb = self.prefix(cuts, b, budget + 1, first_window)?;
        pb.enc.set_type_ids(vec![1; pb.enc.len()]);
        let cut = pa.cut < a.len() || pb.cut < b.len();
        if cut && pa.enc.len() > budget && pb.enc.len() > budget {
            // Both texts are longer than the budget: longest-first keeps half of it of each, and
            // an odd token goes to the text with more tokens in all (to `b` on a tie), which only
            // counting both whole tells.
            let half = budget / 2;
            let a_longer = budget % 2 == 1 && self.a_has_more_tokens(cuts, (a, &pa), (b, &pb), first_window)?;
            let (na, nb) = if a_longer { (half + 1, half) } else { (half, half + budget % 2) };
            pa.enc.truncate(na, 0, TruncationDirection::Right);
            pb.enc.truncate(nb, 0, TruncationDirection::Right);
        }
        self.post_process(pa.enc, Some(pb.enc))
    }

    /// The shortest prefix of `text` ending at a cut point at least `window` bytes long (doubling
    /// `window` as needed) that gives `need` tokens, or the whole text.
    fn prefix(&self, cuts: &CutPoints, text: &str, need: usize, window: usize) -> Result<Prefix> {
        let mut window = window.max(1);
        loop {
            let cut = cuts.cut(text, 0, window);
            let enc = self.raw_encode(&text[..cut])?;
            if cut == text.len() || enc.len() >= need {
                return Ok(Prefix { cut, enc });
            }
            window = cut.saturating_mul(2);
        }
    }

    /// Whether whole text `a` has more tokens than whole text `b`, counting on from their
    /// prefixes chunk by chunk (memory bounded by a chunk) until the answer is known.
    fn a_has_more_tokens(
        &self,
        cuts: &CutPoints,
        (a, pa): (&str, &Prefix),
        (b, pb): (&str, &Prefix),
        first_window: usize,
    ) -> Result<bool> {
        let chunk = first_window.saturating_mul(4).max(1);
        let (mut at_a, mut count_a) = (pa.cut, pa.enc.len());
        let (mut at_b, mut count_b) = (pb.cut, pb.enc.len());
        let advance = |text: &str, at: &mut usize, count: &mut usize| -> Result<()> {
            let end = cuts.cut(text, *at, chunk);
            *count += self.raw_encode(&text[*at..end])?.len();
            *at = end;
            Ok(())
        };
        loop {
            match (at_a == a.len(), at_b == b.len()) {
                (true, true) => return Ok(count_a > count_b),
                // `a` is whole: `b` has at least as many once it has counted as many.
                (true, false) if count_b >= count_a => return Ok(false),
                (false, true) if count_a > count_b => return Ok(true),
                (true, false) => advance(b, &mut at_b, &mut count_b)?,
                (false, true) => advance(a, &mut at_a, &mut count_a)?,
                (false, false) if count_a <= count_b => advance(a, &mut at_a, &mut count_a)?,
                (false, false) => advance(b, &mut at_b, &mut count_b)?,
            }
        }
    }

    /// Tokens of `text` alone: no special tokens, no truncation.
    fn raw_encode(&self, text: &str) -> Result<Encoding> {
        self.raw.encode(self.case(text), false).map_err(|e| anyhow!("tokenization failed: {e}"))
    }

    /// Truncates (longest first) and adds the special tokens, as `encode` does after tokenizing.
    fn post_process(&self, a: Encoding, b: Option<Encoding>) -> Result<Encoded> {
        let enc = self.inner.post_process(a, b, true).map_err(|e| anyhow!("tokenization failed: {e}"))?;
        Ok(encoded(&enc))
    }

    fn case<'t>(&self, text: &'t str) -> Cow<'t, str> {
        if self.lowercase {
            Cow::Owned(text.to_lowercase())
        } else {
            Cow::Borrowed(text)
        }
    }
}

fn encoded(e: &Encoding) -> Encoded {
    Encoded { ids: e.get_ids().to_vec(), type_ids: e.get_type_ids().to_vec() }
}

/// A tokenized prefix `text[..cut]`.
struct Prefix {
    cut: usize,
    enc: Encoding,
}

/// Where a text can be cut so that the tokens of the part before are exactly the first tokens of
/// the whole text, and the tokens of the whole are those of the parts end to end: right after a
/// character that BERT's normalizer keeps as is and its pre-tokenizer splits on:
/// - whitespace (not a control character, which the normalizer removes rather than splits on);
/// - a CJK ideograph, when the normalizer pads them with spaces;
/// - ASCII punctuation that the pre-tokenizer isolates, except the case-ignorable `.`, `:`, `'`,
///   `^` and `` ` ``, across which lowercasing a final capital sigma looks.
///
/// Every normalizer step is per character, except NFD's reordering of combining marks, which
/// never crosses these characters (all are starters). Characters of an added token (`[CLS]`'s
/// brackets) are never cut points, and a pipeline with an added token that contains whitespace
/// or must stand as a single word gets no cut points.
#[derive(Clone, Debug)]
struct CutPoints {
    cjk: bool,
    /// Characters of added tokens.
    reserved: Vec<char>,
}

/// ASCII punctuation after which a cut is safe (see [`CutPoints`]).
const CUT_PUNCTUATION: &str = "!\"#$%&()*+,-/;<=>?@[\\]_{|}~";

impl CutPoints {
    /// The cut points of `tk`'s pipeline, if it is one whose cut points are understood.
    fn of(tk: &Tokenizer) -> Option<Self> {
        let Some(NormalizerWrapper::BertNormalizer(norm)) = tk.get_normalizer() else { return None };
        if !matches!(tk.get_pre_tokenizer(), Some(PreTokenizerWrapper::BertPreTokenizer(_)))
            || !matches!(tk.get_model(), ModelWrapper::WordPiece(_))
        {
            return None;
        }
        let mut reserved = Vec::new();
        for token in tk.get_added_tokens_decoder().values() {
            if token.single_word || token.content.chars().any(char::is_whitespace) {
                return None;
            }
            reserved.extend(token.content.chars());
        }
        reserved.sort_unstable();
        reserved.dedup();
        Some(CutPoints { cjk: norm.handle_chinese_chars, reserved })
    }

    /// Whether a text can be cut right after `c`.
    fn after(&self, c: char) -> bool {
        let splits = (c.is_whitespace() && !c.is_control())
            || (self.cjk && is_cjk(c))
            || (c.is_ascii() && CUT_PUNCTUATION.contains(c));
        splits && self.reserved.binary_search(&c).is_err()
    }

    /// The first cut point of `text` at least `min_bytes` after `from`, or the end of `text`.
    fn cut(&self, text: &str, from: usize, min_bytes: usize) -> usize {
        let mut start = from.saturating_add(min_bytes.max(1)).min(text.len());
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        let start = start.max(from);
        text[start..].char_indices().find(|&(_, c)| self.after(c)).map_or(text.len(), |(i, c)| start + i + c.len_utf8())
    }
}

/// The CJK ideographs that BERT's normalizer pads with spaces (as `tokenizers` lists them).
fn is_cjk(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

/// The BERT pipeline from `vocab.txt`, as transformers' `BertTokenizerFast` builds it: BERT's
/// normalizer and pre-tokenizer, WordPiece, `[CLS] a [SEP] (b [SEP])`, and the special tokens
/// matched in the raw text before anything else.
fn from_vocab(vocab: &Path, settings: &TokenizerSettings) -> Result<Tokenizer> {
    settings.check_vocab_class()?;
    let path = vocab.to_str().context("vocab path is not UTF-8")?;
    let wordpiece = WordPiece::from_file(path)
        .unk_token(settings.unk.clone())
        .build()
        .map_err(|e| anyhow!("cannot load {}: {e}", vocab.display()))?;
    // The unknown token must be in the vocabulary too (WordPiece gives it to unknown words).
    wordpiece_id(&wordpiece, &settings.unk, vocab)?;
    let cls = wordpiece_id(&wordpiece, &settings.cls, vocab)?;
    let sep = wordpiece_id(&wordpiece, &settings.sep, vocab)?;
    let in_vocab = |t: &str| tokenizers::Model::token_to_id(&wordpiece, t);
    let mut added = Vec::new();
    for (id, token) in &settings.added {
        if in_vocab(&token.content) != Some(*id) {
            bail!(
                "{}: added token `{}` (id {id}) is not line {} of {} (only a tokenizer.json can add tokens \
                 beyond the vocabulary)",
                settings.config_file.display(),
                token.content,
                id + 1,
                vocab.display()
            );
        }
        added.push(token.clone());
    }
    // The named special tokens that the vocabulary holds, unless listed above with their own flags.
    for name in [&settings.unk, &settings.sep, &settings.pad, &settings.cls, &settings.mask] {
        if in_vocab(name).is_some() && !added.iter().any(|t: &AddedToken| &t.content == name) {
            added.push(AddedToken::from(name.as_str(), true));
        }
    }
    let mut tk = Tokenizer::new(wordpiece);
    tk.with_normalizer(Some(settings.normalizer()));
    tk.with_pre_tokenizer(Some(BertPreTokenizer));
    tk.with_post_processor(Some(BertProcessing::new((settings.sep.clone(), sep), (settings.cls.clone(), cls))));
    let (specials, others): (Vec<AddedToken>, Vec<AddedToken>) = added.into_iter().partition(|t| t.special);
    tk.add_special_tokens(&specials);
    tk.add_tokens(&others);
    Ok(tk)
}

fn wordpiece_id(wp: &WordPiece, token: &str, vocab: &Path) -> Result<u32> {
    use tokenizers::Model;
    wp.token_to_id(token).with_context(|| format!("{}: the vocabulary has no {token} token", vocab.display()))
}

/// Tokenizer classes whose `tokenizer_config.json` settings mean what they mean for BERT
/// (transformers builds the same WordPiece pipeline for each), without a `Fast` suffix.
const BERT_CLASSES: &[&str] = &[
    "BertTokenizer",
    "DistilBertTokenizer",
    "ElectraTokenizer",
    "MobileBertTokenizer",
    "SqueezeBertTokenizer",
    "LayoutLMTokenizer",
    "ConvBertTokenizer",
    "RetriBertTokenizer",
];

/// What a model directory's `tokenizer_config.json` and `special_tokens_map.json` say about BERT
/// tokenization, read as transformers reads them: `do_lower_case` (default true),
/// `strip_accents` (default null: strip when lower-casing), `tokenize_chinese_chars` (default
/// true), the special tokens' names (`unk_token`, ...: default `[UNK]`, ...; those of
/// `special_tokens_map.json` win unless the config has an `added_tokens_decoder`) and the
/// `added_tokens_decoder` entries.
#[derive(Clone, Debug)]
struct TokenizerSettings {
    lowercase: bool,
    strip_accents: Option<bool>,
    chinese_chars: bool,
    unk: String,
    cls: String,
    sep: String,
    pad: String,
    mask: String,
    /// `added_tokens_decoder`: id and token.
    added: Vec<(u32, AddedToken)>,
    /// `tokenizer_class`, when given.
    class: Option<String>,
    /// `tokenizer_config.json` (for messages).
    config_file: std::path::PathBuf,
    /// Whether `tokenizer_config.json` exists.
    has_config: bool,
}

impl TokenizerSettings {
    /// Reads the settings of `dir` (every default where a file or key is absent).
    fn read(dir: &Path) -> Result<Self> {
        let config_file = dir.join("tokenizer_config.json");
        let config = read_object(&config_file)?;
        let has_config = config.is_some();
        let config = config.unwrap_or_default();
        let flag = |key: &str| -> Result<Option<bool>> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Bool(b)) => Ok(Some(*b)),
                Some(v) => bail!("{}: `{key}` is {v}; expected true, false or null", config_file.display()),
            }
        };
        let (lowercase, strip_accents, chinese_chars) =
            (flag("do_lower_case")?, flag("strip_accents")?, flag("tokenize_chinese_chars")?);
        let class = match config.get("tokenizer_class") {
            None | Some(Value::Null) => None,
            Some(Value::String(c)) => Some(c.clone()),
            Some(v) => bail!("{}: `tokenizer_class` is {v}; expected a class name", config_file.display()),
        };
        let mut added = Vec::new();
        match config.get("added_tokens_decoder") {
            None | Some(Value::Null) => {}
            Some(Value::Object(decoder)) => {
                for (id, token) in decoder {
                    let entry = id.parse::<u32>().ok().zip(serde_json::from_value::<AddedToken>(token.clone()).ok());
                    let Some(entry) = entry else {
                        bail!(
                            "{}: added_tokens_decoder `\"{id}\": {token}` is not `\"id\": {{\"content\": ..., ...}}`",
                            config_file.display()
                        );
                    };
                    added.push(entry);
                }
            }
            Some(v) => bail!("{}: `added_tokens_decoder` is {v}; expected an object", config_file.display()),
        }
        added.sort_by_key(|(id, _)| *id);
        // special_tokens_map.json is read only where the config lists no added tokens (as transformers does).
        let map_file = dir.join("special_tokens_map.json");
        let map = if config.contains_key("added_tokens_decoder") { None } else { read_object(&map_file)? };
        let name = |key: &str, default: &str| -> Result<String> {
            for (source, file) in [(map.as_ref(), &map_file), (Some(&config), &config_file)] {
                let Some(value) = source.and_then(|m| m.get(key)) else { continue };
                return match value {
                    Value::String(s) => Ok(s.clone()),
                    Value::Object(o) if o.get("content").is_some_and(Value::is_string) => {
                        Ok(o["content"].as_str().unwrap_or_default().to_string())
                    }
                    Value::Null => continue,
                    v => bail!("{}: `{key}` is {v}; expected a token or {{\"content\": token, ...}}", file.display()),
                };
            }
            Ok(default.to_string())
        };
        Ok(TokenizerSettings {
            lowercase: lowercase.unwrap_or(true),
            strip_accents,
            chinese_chars: chinese_chars.unwrap_or(true),
            unk: name("unk_token", "[UNK]")?,
            cls: name("cls_token", "[CLS]")?,
            sep: name("sep_token", "[SEP]")?,
            pad: name("pad_token", "[PAD]")?,
            mask: name("mask_token", "[MASK]")?,
            added,
            class,
            config_file,
            has_config,
        })
    }

    /// Whether the configured tokenizer class (if any) is one of BERT's.
    fn is_bert_class(&self) -> bool {
        self.class.as_deref().is_none_or(|c| BERT_CLASSES.contains(&c.strip_suffix("Fast").unwrap_or(c)))
    }

    /// A `vocab.txt` pipeline is BERT's: an other configured class is an error.
    fn check_vocab_class(&self) -> Result<()> {
        match &self.class {
            Some(class) if !self.is_bert_class() => bail!(
                "{}: tokenizer_class `{class}` is not supported with vocab.txt (only BERT's WordPiece \
                 tokenizers: {}, with or without `Fast`); a tokenizer.json is used as it is",
                self.config_file.display(),
                BERT_CLASSES.join(", ")
            ),
            _ => Ok(()),
        }
    }

    /// BERT's normalizer with these settings (and `clean_text`, as transformers always sets it).
    fn normalizer(&self) -> BertNormalizer {
        BertNormalizer::new(true, self.chinese_chars, self.strip_accents, self.lowercase)
    }

    /// Sets the normalizer of a `tokenizer.json` pipeline as `tokenizer_config.json` says, as
    /// transformers' BERT tokenizer does: only when that file exists, names a BERT class (or none)
    /// and the pipeline uses BERT's normalizer. Otherwise `tokenizer.json` is used as it is.
    fn apply_to_json(&self, tk: &mut Tokenizer) {
        if !self.has_config || !self.is_bert_class() {
            return;
        }
        let Some(NormalizerWrapper::BertNormalizer(current)) = tk.get_normalizer() else { return };
        let wanted = self.normalizer();
        let same = (current.clean_text, current.handle_chinese_chars, current.strip_accents, current.lowercase)
            == (wanted.clean_text, wanted.handle_chinese_chars, wanted.strip_accents, wanted.lowercase);
        if !same {
            tk.with_normalizer(Some(wanted));
            // Normalized added tokens are matched on the normalized text: match them anew.
            tk.add_tokens(&[]);
        }
    }
}

/// A JSON object file, or None when there is no such file.
fn read_object(path: &Path) -> Result<Option<Map<String, Value>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: Map<String, Value> =
        serde_json::from_str(&text).with_context(|| format!("{}: not a JSON object", path.display()))?;
    Ok(Some(value))
}
