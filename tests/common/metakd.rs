//! Fixtures shared by the Meta-KD integration tests: tables in the SENTI layout built from the
//! sample sentiment sentences, evaluation flags, small readers.

use super::sample;
use candle_core::{DType, Tensor};
use std::path::{Path, PathBuf};

/// EasyNLP's Meta-KD domains.
pub const DOMAINS: [&str; 4] = ["books", "dvd", "electronics", "kitchen"];
/// The `--input_schema` of the Meta-KD tables.
pub const SCHEMA: &str = "guid:str:1,text_a:str:1,text_b:str:1,label:str:1,domain:str:1,weight:str:1";

/// A temporary folder with `train_with_weights.tsv` and `dev_standard.tsv`.
pub struct Tables {
    pub _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub train: PathBuf,
    pub dev: PathBuf,
}

/// Meta-KD tables from the sample sentiment sentences, with headers; row `i` gets the domain
/// `DOMAINS[domain_of(i)]` and, in training, a weight in [0.5, 1.1].
pub fn tables(domain_of: impl Fn(usize) -> usize) -> Tables {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let write = |src: &str, name: &str, weights: bool| -> PathBuf {
        let mut out = String::from("guid\ttext_a\ttext_b\tlabel\tdomain\tweight\n");
        for (i, line) in std::fs::read_to_string(sample(src)).unwrap().lines().enumerate() {
            let (text, label) = line.split_once('\t').unwrap();
            let label = if label == "1" { "positive" } else { "negative" };
            let w = if weights { format!("{}", 0.5 + (i % 7) as f64 * 0.1) } else { "0".into() };
            out += &format!("{name}-{i}\t{text}\t\t{label}\t{}\t{w}\n", DOMAINS[domain_of(i)]);
        }
        let p = root.join(format!("{name}.tsv"));
        std::fs::write(&p, out).unwrap();
        p
    };
    let train = write("sentiment-train.tsv", "train_with_weights", true);
    let dev = write("sentiment-dev.tsv", "dev_standard", false);
    Tables { _tmp: tmp, root, train, dev }
}

/// `--mode=train` flags on the tables with `udp`, then `extra` (a repeated flag takes its last value).
pub fn train_args(t: &Tables, ckpt: &Path, extra: &[&str], udp: &str) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--mode=train".into(),
        "--app_name=text_classify".into(),
        format!("--tables={},{}", t.train.display(), t.dev.display()),
        format!("--input_schema={SCHEMA}"),
        "--first_sequence=text_a".into(),
        "--second_sequence=text_b".into(),
        "--label_name=label".into(),
        "--label_enumerate_values=positive,negative".into(),
        format!("--checkpoint_dir={}", ckpt.display()),
        "--learning_rate=1e-3".into(),
        "--random_seed=42".into(),
        "--logging_steps=1".into(),
        "--sequence_length=32".into(),
        "--micro_batch_size=8".into(),
        format!("--user_defined_parameters={udp}"),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// `--mode=evaluate` flags for `ckpt` on the dev table, metrics to `out`, optional udp.
pub fn eval_args(t: &Tables, ckpt: &Path, out: &Path, udp: Option<&str>) -> Vec<String> {
    let mut a = vec![
        "--mode=evaluate".into(),
        "--app_name=text_classify".into(),
        format!("--tables={}", t.dev.display()),
        format!("--input_schema={SCHEMA}"),
        "--first_sequence=text_a".into(),
        "--second_sequence=text_b".into(),
        "--label_name=label".into(),
        format!("--checkpoint_dir={}", ckpt.display()),
        "--sequence_length=32".into(),
        "--micro_batch_size=16".into(),
        format!("--outputs={}", out.display()),
    ];
    if let Some(u) = udp {
        a.push(format!("--user_defined_parameters={u}"));
    }
    a
}

/// Parses a JSON file.
pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A scalar tensor as f64.
pub fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}
