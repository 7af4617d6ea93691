//! Tokenizing long texts by prefix gives exactly what tokenizing them whole gives: the same ids
//! and type ids (hence the same mask), for single texts and pairs, with any first window.

mod common;

use easynlp::data::tokenize::BertTokenizer;
use std::path::Path;

/// A small deterministic generator (64-bit LCG).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.next() % items.len()]
    }
}

/// Words and separators that exercise the normalizer (accents, case, final sigma, CJK, control and
/// invisible characters, full-width forms), the pre-tokenizer (punctuation, including the
/// case-ignorable kinds) and WordPiece (unknown and over-long words), and the special tokens.
const WORDS: &[&str] = &[
    "the",
    "movie",
    "Movie",
    "unbelievably",
    "good",
    "bad",
    "it",
    "'s",
    "don't",
    "U.S.A.",
    "3.14",
    "a:b",
    "^_^",
    "`quoted`",
    "Straße",
    "naïve",
    "CAFÉ",
    "e\u{301}",
    "\u{301}x",
    "ΣΊΣΥΦΟΣ",
    "ΑΣ",
    "Σ",
    "όσος",
    "İstanbul",
    "中文字",
    "日本語",
    "𠀀𠀁",
    "\u{f900}\u{f901}",
    "ｆｕｌｌ",
    "한국어",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "[PAD",
    "UNK]",
    "\u{0}",
    "\u{1b}[1m",
    "\u{85}",
    "\u{b}",
    "\u{200b}",
    "\u{fffd}",
    "\u{ad}",
    "ﬁne",
    "x-ray",
    "(a)",
    "#1",
    "@me",
    "100%",
    "$5",
    "a/b",
    "<b>",
    "q&a",
    "1+1=2",
    "~",
    "|",
    "{x}",
    "\\",
    "\"",
    "…",
    "—",
    "«",
    "»",
    "¿qué?",
    "¡hola!",
    "mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm",
];
const SEPARATORS: &[&str] =
    &[" ", " ", " ", "  ", "", "", ".", ",", "!", "-", "\u{a0}", "\u{3000}", "\r", "\u{2028}", "\t"];

fn text(rng: &mut Lcg, words: usize) -> String {
    let mut t = String::new();
    for _ in 0..words {
        t.push_str(rng.pick(WORDS));
        t.push_str(rng.pick(SEPARATORS));
    }
    t
}

/// Checks the prefix path against the whole-text path on generated rows, for several
/// truncation lengths and first windows.
fn check(tk_dir: &Path, lowercase: bool, seed: u64) {
    let mut rng = Lcg(seed);
    let mut rows: Vec<(String, Option<String>)> = Vec::new();
    for i in 0..120 {
        let a = text(&mut rng, [0, 1, 3, 10, 40, 120, 400][i % 7]);
        let b = match i % 3 {
            0 => None,
            _ => {
                let words = [1, 5, 30, 100, 300][rng.next() % 5];
                Some(text(&mut rng, words))
            }
        };
        rows.push((a, b));
    }
    // Both texts of a pair longer than the budget, with nearly equal token counts: the odd
    // token of an odd budget goes to the one with more tokens in all.
    for (n, m) in [(60, 60), (60, 61), (61, 60), (200, 201), (201, 200), (300, 90), (90, 300)] {
        rows.push(("good movie ".repeat(n), Some("bad film ".repeat(m))));
        rows.push(("good movie ".repeat(n) + &"ab".repeat(m), Some("bad film ".repeat(m) + "fin")));
    }
    let refs: Vec<(&str, Option<&str>)> = rows.iter().map(|(a, b)| (a.as_str(), b.as_deref())).collect();
    // (Small even halves are left out: the whole-text reference then builds the cross product of
    // both texts' overflowing parts, which takes minutes.)
    for max_len in [2, 3, 4, 17, 32, 33, 64, 128] {
        let tk = BertTokenizer::load(tk_dir, max_len, lowercase).unwrap();
        assert!(tk.tokenizes_prefixes(), "{}: the prefix path is not used", tk_dir.display());
        let whole = tk.encode_batch_whole(&refs).unwrap();
        for window in [1, 2, 5, 16, 64, 1000] {
            let bounded = tk.encode_batch_windowed(&refs, window).unwrap();
            for (i, (w, b)) in whole.iter().zip(&bounded).enumerate() {
                assert_eq!(
                    w,
                    b,
                    "{} max_len={max_len} window={window} lowercase={lowercase} row {i}: {:?}",
                    tk_dir.display(),
                    refs[i]
                );
            }
        }
        assert_eq!(tk.encode_batch(&refs).unwrap(), whole);
    }
}

/// The vocab.txt pipeline (tiny vocabulary, so many unknown words).
#[test]
fn prefixes_match_whole_texts_vocab_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_bert(&tmp.path().join("model"), 1, false);
    check(&model, false, 1);
    check(&model, true, 2);
}

/// Pipelines set up by tokenizer_config.json (tests/fixtures/tokenizers): cased; cased with CJK
/// not split (CJK ideographs are then no cut points) and renamed special tokens; a tokenizer.json
/// whose normalizer the config changes; and accents stripped without lower-casing.
#[test]
fn prefixes_match_whole_texts_configured_pipelines() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers");
    let dirs =
        [("cased", false), ("chinese-no-split", true), ("json-config-wins", false), ("cased-strip-accents", true)];
    for (seed, (name, lowercase)) in (10..).zip(dirs) {
        check(&fixtures.join(name), lowercase, seed);
    }
}

/// The shared models' tokenizer.json.
#[test]
fn prefixes_match_whole_texts_tokenizer_json() {
    let Some(shared) = common::shared_dir("prefixes_match_whole_texts_tokenizer_json") else {
        return;
    };
    let model = shared.join("models/minilm-l6");
    check(&model, false, 3);
    check(&model, true, 4);
}

/// A megabyte of text, single and paired. Two long texts are checked against their whole token
/// lists truncated by `tokenizers` itself (its whole-text pair path is out of reach: it builds
/// the cross product of both texts' overflowing parts, millions of encodings).
#[test]
fn a_megabyte_text_matches_whole() {
    use tokenizers::utils::truncation::truncate_encodings;
    use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};
    let Some(shared) = common::shared_dir("a_megabyte_text_matches_whole") else {
        return;
    };
    let dir = shared.join("models/minilm-l3");
    let tk = BertTokenizer::load(&dir, 128, false).unwrap();
    let mut rng = Lcg(5);
    let long = text(&mut rng, 150_000);
    assert!(long.len() > 1_000_000);
    let other = text(&mut rng, 149_000);
    let solid = "x".repeat(20_000) + " tail";
    let rows: Vec<(&str, Option<&str>)> =
        vec![(&long, None), ("short", Some(&long)), (&long, Some("a short one")), (&solid, None)];
    assert_eq!(tk.encode_batch(&rows).unwrap(), tk.encode_batch_whole(&rows).unwrap());
    let mut hf = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    hf.with_truncation(None).unwrap();
    hf.with_padding(None);
    let params = TruncationParams {
        max_length: 128 - 3,
        strategy: TruncationStrategy::LongestFirst,
        stride: 0,
        direction: TruncationDirection::Right,
    };
    for (a, b) in [(&long, &other), (&other, &long), (&long, &long)] {
        let got = &tk.encode_batch(&[(a, Some(b))]).unwrap()[0];
        let (ea, eb) = (hf.encode(a.as_str(), false).unwrap(), hf.encode(b.as_str(), false).unwrap());
        if a != b {
            assert_ne!(ea.len(), eb.len(), "the odd token goes to the text with more tokens");
        }
        let (ea, eb) = truncate_encodings(ea, Some(eb), &params).unwrap();
        let eb = eb.unwrap();
        let ids: Vec<u32> = [&[101][..], ea.get_ids(), &[102], eb.get_ids(), &[102]].concat();
        let types: Vec<u32> = [vec![0; ea.len() + 2], vec![1; eb.len() + 1]].concat();
        assert_eq!(got.ids, ids);
        assert_eq!(got.type_ids, types);
    }
}

/// Every possible first window on short texts built around the characters a wrong cut point
/// would break: a capital sigma before case-ignorable punctuation (lowercasing makes it final
/// at the end of a prefix), whitespace that the normalizer removes as a control character
/// (joining the words around it), combining marks, CJK, and the brackets of special tokens.
#[test]
fn every_window_on_tricky_texts_matches_whole() {
    let Some(shared) = common::shared_dir("every_window_on_tricky_texts_matches_whole") else {
        return;
    };
    // A word of over 100 characters is one [UNK]; a cut inside it would give its pieces.
    let x60 = "x".repeat(60);
    let joined = format!("aa {x60}\u{85}{x60} {x60}\u{b}{x60} {x60}\u{c}{x60}");
    let texts = [
        "ΑΣ.ΒΑΣ.ΓΑΣ:ΔΑΣ'ΕΑΣ^ΖΑΣ`ΗΑΣ.ΘΑΣ.Ι",
        "ab\u{85}cd\u{b}ef\u{1c}gh\u{85}ij\u{c}kl\u{1f}mn\u{85}op",
        &joined,
        "don't.stop:it's 3.14 e\u{301}\u{301}x ΑΣ ΑΣ.",
        "中文.字ΑΣ中Σ中\u{f900}Σ.x",
        "[CLS][SEP] [MASK]x[CLS]y[SEP",
    ];
    let mut rows: Vec<(&str, Option<&str>)> = texts.iter().map(|t| (*t, None)).collect();
    for (i, a) in texts.iter().enumerate() {
        rows.push((a, Some(texts[(i + 1) % texts.len()])));
    }
    // Pairs of nearly equal token counts where a cut inside `[CLS]` would miscount.
    let specials = "[CLS]".repeat(12);
    let (words12, words13) = ("a ".repeat(12), "a ".repeat(13));
    rows.extend([(specials.as_str(), Some(words13.as_str())), (&words12, Some(&specials))]);
    let longest = texts.iter().map(|t| t.len()).max().unwrap();
    for lowercase in [true, false] {
        for max_len in (2..=9).chain([13, 16, 24]) {
            let tk = BertTokenizer::load(&shared.join("models/minilm-l6"), max_len, lowercase).unwrap();
            let whole = tk.encode_batch_whole(&rows).unwrap();
            for window in (1..=64).chain((65..=longest).step_by(5)) {
                let bounded = tk.encode_batch_windowed(&rows, window).unwrap();
                for (i, (w, b)) in whole.iter().zip(&bounded).enumerate() {
                    assert_eq!(w, b, "max_len={max_len} window={window} lowercase={lowercase}: {:?}", rows[i]);
                }
            }
        }
    }
}
