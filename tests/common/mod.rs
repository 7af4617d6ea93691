//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod hub_server;
pub mod kd;
pub mod metakd;
pub mod signals;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The environment variable that turns a missing shared folder from a loud skip into a test
/// failure (CI sets it, so that a lost `../shared` cannot pass as green).
pub const REQUIRE_SHARED: &str = "EASYNLP_REQUIRE_SHARED";

/// Whether [`REQUIRE_SHARED`] is set to anything but empty or `0`.
pub fn shared_required() -> bool {
    std::env::var_os(REQUIRE_SHARED).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The shared folder (`$EASYNLP_SHARED`, else `../shared` beside the project), or None with a loud
/// message so that a skipped test is visible. Panics instead when [`shared_required`].
pub fn shared_dir(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("EASYNLP_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let probe = dir.join("models/minilm-l6/config.json");
    if probe.is_file() {
        return Some(dir);
    }
    if shared_required() {
        panic!(
            "{test}: shared data not found: {} is missing ({REQUIRE_SHARED} is set, so this is a failure, not a \
             skip; set EASYNLP_SHARED to the shared folder)",
            probe.display()
        );
    }
    // Written to the stderr handle directly: libtest captures `eprintln!` of passing tests.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n!!! SKIPPED {test}: shared data not found at {} (set EASYNLP_SHARED; {REQUIRE_SHARED}=1 makes \
         this a failure) !!!\n",
        dir.display()
    );
    None
}

/// Runs the `easynlp` binary with `args`.
pub fn easynlp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_easynlp")).args(args).output().expect("run easynlp")
}

/// The project's `data/sample` folder.
pub fn sample(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample").join(name).display().to_string()
}

/// stderr of a run as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes a tiny random BERT (real file formats, synthetic weights) into `dir` and returns its path.
/// The vocabulary holds the special tokens plus every lower-cased word of the sample tables.
pub fn tiny_bert(dir: &Path, layers: usize, with_pooler: bool) -> PathBuf {
    tiny_bert_with(dir, &TinyBert { layers, with_pooler, ..TinyBert::default() })
}

/// What [`tiny_bert_with`] builds; the default is [`tiny_bert`]'s model (2 layers, pooler, hidden
/// 32, 4 heads, feed-forward 64, dropout 0.1, unit LayerNorms, small weights).
#[derive(Clone, Debug)]
pub struct TinyBert {
    /// Encoder layers.
    pub layers: usize,
    /// Whether the weights include `pooler.dense`.
    pub with_pooler: bool,
    /// Keep only the first this many words of the sample tables in the vocabulary (all: None).
    pub vocab_words: Option<usize>,
    /// `hidden_dropout_prob` and `attention_probs_dropout_prob` of config.json.
    pub dropout: f64,
    /// `initializer_range` of config.json (the std of heads `init_head` creates).
    pub initializer_range: f64,
    /// Multiplies the spread of every random weight (4 gives far from uniform attention).
    pub weight_scale: f32,
    /// Random LayerNorm gammas (around 1) and betas instead of ones and zeros.
    pub random_norms: bool,
    /// Seed of the weights.
    pub seed: u64,
}

impl Default for TinyBert {
    fn default() -> Self {
        TinyBert {
            layers: 2,
            with_pooler: true,
            vocab_words: None,
            dropout: 0.1,
            initializer_range: 0.02,
            weight_scale: 1.0,
            random_norms: false,
            seed: 12345,
        }
    }
}

/// Writes the tiny random BERT that `opts` describes into `dir` and returns its path.
pub fn tiny_bert_with(dir: &Path, opts: &TinyBert) -> PathBuf {
    use candle_core::{Device, Tensor};
    use std::collections::{BTreeSet, HashMap};
    let (layers, scale) = (opts.layers, opts.weight_scale);
    let mut words = BTreeSet::new();
    for f in ["sentiment-train.tsv", "sentiment-dev.tsv", "paraphrase-train.tsv", "paraphrase-dev.tsv"] {
        let text = std::fs::read_to_string(sample(f)).unwrap().to_lowercase();
        for w in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
            words.insert(w.to_string());
        }
    }
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].iter().map(|s| s.to_string()).collect();
    vocab.extend(".,!?'\"-:;()$".chars().map(|c| c.to_string()));
    vocab.extend(words.into_iter().take(opts.vocab_words.unwrap_or(usize::MAX)));
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("vocab.txt"), vocab.join("\n") + "\n").unwrap();
    let (h, inter, heads, max_pos) = (32usize, 64usize, 4usize, 64usize);
    let config = serde_json::json!({
        "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
        "vocab_size": vocab.len(), "hidden_size": h, "num_hidden_layers": layers,
        "num_attention_heads": heads, "intermediate_size": inter, "max_position_embeddings": max_pos,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "initializer_range": opts.initializer_range,
        "hidden_dropout_prob": opts.dropout, "attention_probs_dropout_prob": opts.dropout
    });
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let dev = Device::Cpu;
    let mut seed = opts.seed;
    // Uniform with standard deviation about `std * scale`, plus `offset`.
    let mut rand = |shape: &[usize], std: f32, offset: f32| -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * std * scale * 1.7 + offset
            })
            .collect();
        Tensor::from_vec(v, shape, &dev).unwrap()
    };
    let mut w: HashMap<String, Tensor> = HashMap::new();
    w.insert("embeddings.word_embeddings.weight".into(), rand(&[vocab.len(), h], 0.02, 0.0));
    w.insert("embeddings.position_embeddings.weight".into(), rand(&[max_pos, h], 0.02, 0.0));
    w.insert("embeddings.token_type_embeddings.weight".into(), rand(&[2, h], 0.02, 0.0));
    let ln = |w: &mut HashMap<String, Tensor>, p: &str, rand: &mut dyn FnMut(&[usize], f32, f32) -> Tensor| {
        let (gamma, beta) = if opts.random_norms {
            (rand(&[h], 0.1, 1.0), rand(&[h], 0.05, 0.0))
        } else {
            (
                Tensor::ones(h, candle_core::DType::F32, &dev).unwrap(),
                Tensor::zeros(h, candle_core::DType::F32, &dev).unwrap(),
            )
        };
        w.insert(format!("{p}.weight"), gamma);
        w.insert(format!("{p}.bias"), beta);
    };
    ln(&mut w, "embeddings.LayerNorm", &mut rand);
    for i in 0..layers {
        let p = format!("encoder.layer.{i}");
        for (name, o, n) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", inter, h),
            ("output.dense", h, inter),
        ] {
            w.insert(format!("{p}.{name}.weight"), rand(&[o, n], 0.05, 0.0));
            w.insert(format!("{p}.{name}.bias"), rand(&[o], 0.01, 0.0));
        }
        ln(&mut w, &format!("{p}.attention.output.LayerNorm"), &mut rand);
        ln(&mut w, &format!("{p}.output.LayerNorm"), &mut rand);
    }
    if opts.with_pooler {
        w.insert("pooler.dense.weight".into(), rand(&[h, h], 0.05, 0.0));
        w.insert("pooler.dense.bias".into(), rand(&[h], 0.01, 0.0));
    }
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
    dir.to_path_buf()
}

/// Common train flags for the sample sentiment tables with `model` and `ckpt`.
pub fn sentiment_train_args(model: &Path, ckpt: &Path) -> Vec<String> {
    vec![
        "--mode=train".into(),
        format!("--tables={},{}", sample("sentiment-train.tsv"), sample("sentiment-dev.tsv")),
        "--input_schema=sent:str:1,label:str:1".into(),
        "--first_sequence=sent".into(),
        "--label_name=label".into(),
        "--label_enumerate_values=0,1".into(),
        format!("--checkpoint_dir={}", ckpt.display()),
        "--epoch_num=1".into(),
        "--micro_batch_size=16".into(),
        "--sequence_length=32".into(),
        "--learning_rate=1e-3".into(),
        format!("--user_defined_parameters=pretrain_model_name_or_path={}", model.display()),
    ]
}

/// Asserts that a run failed with a clear error: a non-zero exit, no panic, and every one of
/// `needles` in its stderr, which it returns.
pub fn assert_failed_with(out: &Output, needles: &[&str]) -> String {
    let err = stderr(out);
    assert!(!out.status.success(), "expected failure:\n{err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks `{n}`:\n{err}");
    }
    err
}

/// Runs `easynlp` with owned args.
pub fn easynlp_owned(args: &[String]) -> Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    easynlp(&refs)
}

/// A fine-tuned checkpoint without training: [`tiny_bert`] (one layer, with pooler) plus random
/// `classifier.*` weights for `labels`, a `config.json` with `num_labels`/`id2label`/`label2id` and
/// `label_mapping.json`, as `--mode=train` writes them.
pub fn tiny_checkpoint(dir: &Path, labels: &[&str]) -> PathBuf {
    use candle_core::{Device, Tensor};
    tiny_bert(dir, 1, true);
    let weights_path = dir.join("model.safetensors");
    let mut w = candle_core::safetensors::load(&weights_path, &Device::Cpu).unwrap();
    let h = w["embeddings.word_embeddings.weight"].dims()[1];
    let n = labels.len();
    let values: Vec<f32> = (0..n * h).map(|i| ((i * 7919 % 101) as f32 / 101.0 - 0.5) * 0.4).collect();
    w.insert("classifier.weight".into(), Tensor::from_vec(values, (n, h), &Device::Cpu).unwrap());
    w.insert("classifier.bias".into(), Tensor::zeros(n, candle_core::DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&w, &weights_path).unwrap();
    let config_path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["architectures"] = serde_json::json!(["BertForSequenceClassification"]);
    config["num_labels"] = serde_json::json!(n);
    config["id2label"] = labels.iter().enumerate().map(|(i, l)| (i.to_string(), serde_json::json!(l))).collect();
    config["label2id"] = labels.iter().enumerate().map(|(i, l)| (l.to_string(), serde_json::json!(i))).collect();
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let mapping: serde_json::Map<String, serde_json::Value> =
        labels.iter().enumerate().map(|(i, l)| (l.to_string(), serde_json::json!(i))).collect();
    std::fs::write(dir.join("label_mapping.json"), serde_json::to_string(&mapping).unwrap()).unwrap();
    dir.to_path_buf()
}
