//! BERT uncased WordPiece tokenization of single sentences and pairs, truncated `longest_first`.
//!
//! Only the prefix of a long text that can reach the output is tokenized: the tokenizer costs
//! about 130 bytes of memory per byte of text, so a multi-megabyte row tokenized whole would cost
//! gigabytes for at most `max_len` tokens. The result is the same as tokenizing the whole text.

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use std::borrow::Cow;
use std::path::Path;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{
    EncodeInput, Encoding, ModelWrapper, NormalizerWrapper, PostProcessor, PostProcessorWrapper, PreTokenizerWrapper,
    Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
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
