//! Tokenization parity with transformers' `BertTokenizerFast` on model directories as the Hub holds
//! them: cased and Chinese-style vocabularies, `vocab.txt` with `tokenizer_config.json` /
//! `special_tokens_map.json`, and `tokenizer.json` as `save_pretrained` writes it
//! (`tests/fixtures/tokenizers`, written by `scripts/make_tokenizer_fixtures.py`); and the shared
//! uncased reference through the `vocab.txt` path.

mod common;

use easynlp::data::tokenize::BertTokenizer;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Tokenizes every case of `cases` with the tokenizer of `dir` as the CLI loads it, whole and by
/// prefix (every first window from one byte), and compares with the reference (unpadded, or
/// padded with zeros to `max_length` when `padded`). Returns the number of cases checked.
fn check_cases(dir: &Path, cases: &[Value], padded: bool) -> usize {
    for (i, case) in cases.iter().enumerate() {
        let max_len = case["max_length"].as_u64().unwrap() as usize;
        let tk = BertTokenizer::load(dir, max_len, false).unwrap();
        assert!(tk.tokenizes_prefixes(), "{}: long texts would be tokenized whole", dir.display());
        let a = case["text_a"].as_str().unwrap();
        let b = case["text_b"].as_str();
        let (mut want_ids, mut want_types) = (ids(&case["input_ids"]), ids(&case["token_type_ids"]));
        if padded {
            let len = ids(&case["attention_mask"]).iter().filter(|&&m| m == 1).count();
            want_ids.truncate(len);
            want_types.truncate(len);
        }
        let got = &tk.encode_batch(&[(a, b)]).unwrap()[0];
        let what = format!("{} case {i} ({a:?}, {b:?}, max_length {max_len})", dir.display());
        assert_eq!(got.ids, want_ids, "{what}: input_ids");
        assert_eq!(got.type_ids, want_types, "{what}: token_type_ids");
        for window in [1, 2, 3, 7, 20] {
            let bounded = &tk.encode_batch_windowed(&[(a, b)], window).unwrap()[0];
            assert_eq!(bounded, got, "{what}: tokenized by prefix from a {window}-byte window");
        }
    }
    cases.len()
}

#[test]
fn fixtures_match_bert_tokenizer_fast() {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    let models = reference["models"].as_object().unwrap();
    let expected = [
        "cased",
        "cased-json",
        "cased-strip-accents",
        "chinese",
        "chinese-json",
        "chinese-no-split",
        "json-config-wins",
        "uncased-keep-accents",
    ];
    let mut names: Vec<&str> = models.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, expected);
    for (name, cases) in models {
        let n = check_cases(&fixtures().join(name), cases.as_array().unwrap(), false);
        assert!(n >= 40, "{name}: only {n} cases");
    }
}

/// The settings make a difference on these texts: the same vocabulary tokenizes differently
/// cased and uncased, with and without accents, with and without CJK split; so a loader that
/// ignored tokenizer_config.json could not pass the parity test.
#[test]
fn settings_change_the_tokens() {
    let encode = |name: &str, text: &str| {
        BertTokenizer::load(&fixtures().join(name), 128, false).unwrap().encode_batch(&[(text, None)]).unwrap()[0]
            .ids
            .clone()
    };
    let text = "The Café in Zürich 我喜欢中文";
    let cased = encode("cased", text);
    assert_ne!(cased, encode("uncased-keep-accents", text));
    assert_ne!(cased, encode("cased-strip-accents", text));
    assert_eq!(cased, encode("cased-json", text));
    // tokenizer.json says lower case and no CJK split; tokenizer_config.json wins.
    assert_eq!(cased, encode("json-config-wins", text));
    let chinese = encode("chinese", text);
    assert_eq!(chinese, encode("chinese-json", text));
    assert_ne!(chinese[1..], encode("chinese-no-split", text)[1..]);
}

/// The `--do_lower_case` flag lower-cases the text before a cased tokenizer sees it.
#[test]
fn do_lower_case_flag_lowercases_for_a_cased_model() {
    let dir = fixtures().join("cased");
    let text = "The Quick Brown Fox in Zürich";
    let flagged = BertTokenizer::load(&dir, 64, true).unwrap().encode_batch(&[(text, None)]).unwrap();
    let plain = BertTokenizer::load(&dir, 64, false).unwrap();
    assert_eq!(flagged, plain.encode_batch(&[(&text.to_lowercase(), None)]).unwrap());
    assert_ne!(flagged, plain.encode_batch(&[(text, None)]).unwrap());
}

/// The shared uncased reference, through the vocab.txt path (the shared models' tokenizer.json
/// path is checked by tests/parity.rs).
#[test]
fn shared_uncased_reference_through_vocab_txt() {
    let Some(shared) = common::shared_dir("shared_uncased_reference_through_vocab_txt") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for file in ["vocab.txt", "tokenizer_config.json", "special_tokens_map.json"] {
        std::fs::copy(shared.join("models/minilm-l6").join(file), tmp.path().join(file)).unwrap();
    }
    let text = std::fs::read_to_string(shared.join("reference/torch/tokenization.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    assert!(check_cases(tmp.path(), reference["cases"].as_array().unwrap(), true) >= 8);
}

/// A model directory with a vocabulary and the given config files.
fn model_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("vocab.txt"), "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n").unwrap();
    for (name, text) in files {
        std::fs::write(tmp.path().join(name), text).unwrap();
    }
    tmp
}

fn load_error(dir: &Path) -> String {
    match BertTokenizer::load(dir, 16, false) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_tokenizer_settings_are_clear_errors() {
    // (files of the model directory, what the error must say)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (
            &[("tokenizer_config.json", r#"{"do_lower_case": "yes"}"#)],
            &["tokenizer_config.json", "do_lower_case", "\"yes\""],
        ),
        (
            &[("tokenizer_config.json", r#"{"tokenize_chinese_chars": 1}"#)],
            &["tokenizer_config.json", "tokenize_chinese_chars"],
        ),
        (&[("tokenizer_config.json", "[1]")], &["tokenizer_config.json", "not a JSON object"]),
        (
            &[("tokenizer_config.json", r#"{"tokenizer_class": "BertJapaneseTokenizer"}"#)],
            &["tokenizer_config.json", "BertJapaneseTokenizer", "not supported"],
        ),
        (&[("special_tokens_map.json", r#"{"unk_token": "<unk>"}"#)], &["vocab.txt", "no <unk> token"]),
        (&[("special_tokens_map.json", r#"{"cls_token": 5}"#)], &["special_tokens_map.json", "cls_token"]),
        (
            &[(
                "tokenizer_config.json",
                r#"{"added_tokens_decoder": {"9": {"content": "[X]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}}}"#,
            )],
            &["tokenizer_config.json", "[X]", "id 9", "vocab.txt"],
        ),
    ];
    for (files, needles) in cases {
        let dir = model_dir(files);
        let err = load_error(dir.path());
        for needle in *needles {
            assert!(err.contains(needle), "{files:?}: `{needle}` not in: {err}");
        }
    }
}

/// Special tokens are matched in the raw text (as transformers does): `[MASK]` written in a row is
/// the mask token, not `[`, `mask`, `]`; a renamed one is matched by its name.
#[test]
fn special_tokens_in_text_are_matched() {
    let dir = model_dir(&[]);
    let tk = BertTokenizer::load(dir.path(), 16, false).unwrap();
    assert_eq!(tk.encode_batch(&[("hello [MASK]hello", None)]).unwrap()[0].ids, [2, 5, 4, 5, 3]);
    let dir = model_dir(&[("special_tokens_map.json", r#"{"mask_token": {"content": "hello", "special": true}}"#)]);
    let tk = BertTokenizer::load(dir.path(), 16, false).unwrap();
    assert_eq!(tk.encode_batch(&[("xhellox", None)]).unwrap()[0].ids, [2, 1, 5, 1, 3]);
}

/// A config as transformers 4.34+ writes it (`added_tokens_decoder` listing the special tokens):
/// `special_tokens_map.json` is then not read, as in transformers.
#[test]
fn added_tokens_decoder_config_ignores_special_tokens_map() {
    let entry = |t: &str| {
        format!(
            r#"{{"content": "{t}", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true}}"#
        )
    };
    let config = format!(
        r#"{{"do_lower_case": true, "unk_token": "[UNK]", "added_tokens_decoder": {{"0": {}, "1": {}, "2": {}, "3": {}, "4": {}}}}}"#,
        entry("[PAD]"),
        entry("[UNK]"),
        entry("[CLS]"),
        entry("[SEP]"),
        entry("[MASK]")
    );
    let dir =
        model_dir(&[("tokenizer_config.json", &config), ("special_tokens_map.json", r#"{"unk_token": "<unk>"}"#)]);
    let tk = BertTokenizer::load(dir.path(), 16, false).unwrap();
    assert_eq!(tk.encode_batch(&[("Hello [MASK] world", None)]).unwrap()[0].ids, [2, 5, 4, 1, 3]);
}
