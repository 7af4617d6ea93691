//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod metakd;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The shared folder (`$EASYNLP_SHARED`, else `../shared` beside the project), or None with a loud
/// message so that a skipped test is visible.
pub fn shared_dir(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("EASYNLP_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    if dir.join("models/minilm-l6/config.json").is_file() {
        Some(dir)
    } else {
        // Written to the stderr handle directly: libtest captures `eprintln!` of passing tests.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr().lock(),
            "\n!!! SKIPPED {test}: shared data not found at {} (set EASYNLP_SHARED) !!!\n",
            dir.display()
        );
        None
    }
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
    use candle_core::{Device, Tensor};
    use std::collections::{BTreeSet, HashMap};
    let mut words = BTreeSet::new();
    for f in ["sentiment-train.tsv", "sentiment-dev.tsv", "paraphrase-train.tsv", "paraphrase-dev.tsv"] {
        let text = std::fs::read_to_string(sample(f)).unwrap().to_lowercase();
        for w in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
            words.insert(w.to_string());
        }
    }
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].iter().map(|s| s.to_string()).collect();
    vocab.extend(".,!?'\"-:;()$".chars().map(|c| c.to_string()));
    vocab.extend(words);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("vocab.txt"), vocab.join("\n") + "\n").unwrap();
    let (h, inter, heads, max_pos) = (32usize, 64usize, 4usize, 64usize);
    let config = serde_json::json!({
        "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
        "vocab_size": vocab.len(), "hidden_size": h, "num_hidden_layers": layers,
        "num_attention_heads": heads, "intermediate_size": inter, "max_position_embeddings": max_pos,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "initializer_range": 0.02,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1
    });
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let dev = Device::Cpu;
    let mut seed = 12345u64;
    let mut rand = |shape: &[usize], std: f32| -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * std * 1.7
            })
            .collect();
        Tensor::from_vec(v, shape, &dev).unwrap()
    };
    let mut w: HashMap<String, Tensor> = HashMap::new();
    w.insert("embeddings.word_embeddings.weight".into(), rand(&[vocab.len(), h], 0.02));
    w.insert("embeddings.position_embeddings.weight".into(), rand(&[max_pos, h], 0.02));
    w.insert("embeddings.token_type_embeddings.weight".into(), rand(&[2, h], 0.02));
    let ln = |w: &mut HashMap<String, Tensor>, p: &str| {
        w.insert(format!("{p}.weight"), Tensor::ones(h, candle_core::DType::F32, &dev).unwrap());
        w.insert(format!("{p}.bias"), Tensor::zeros(h, candle_core::DType::F32, &dev).unwrap());
    };
    ln(&mut w, "embeddings.LayerNorm");
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
            w.insert(format!("{p}.{name}.weight"), rand(&[o, n], 0.05));
            w.insert(format!("{p}.{name}.bias"), rand(&[o], 0.01));
        }
        ln(&mut w, &format!("{p}.attention.output.LayerNorm"));
        ln(&mut w, &format!("{p}.output.LayerNorm"));
    }
    if with_pooler {
        w.insert("pooler.dense.weight".into(), rand(&[h, h], 0.05));
        w.insert("pooler.dense.bias".into(), rand(&[h], 0.01));
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
