//! train -> predict -> evaluate through the real binary on a tiny random BERT.

mod common;

use candle_core::Device;
use common::{easynlp_owned, sample, sentiment_train_args, stderr, tiny_bert};
use easynlp::data::batch::{make_batch, Example};
use easynlp::data::tokenize::BertTokenizer;
use easynlp::model::bert::ForwardCtx;
use easynlp::model::checkpoint::load_checkpoint;
use easynlp::model::classifier::Classifier;
use std::path::Path;

fn train_tiny(root: &Path) -> std::path::PathBuf {
    let model = tiny_bert(&root.join("model"), 2, false);
    let ckpt = root.join("ckpt");
    let out = easynlp_owned(&sentiment_train_args(&model, &ckpt));
    assert!(out.status.success(), "train failed: {}", stderr(&out));
    for f in ["model.safetensors", "config.json", "vocab.txt", "label_mapping.json", "train_config.json"] {
        assert!(ckpt.join(f).is_file(), "checkpoint lacks {f}");
    }
    ckpt
}

fn predict(ckpt: &Path, table: &str, out_file: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--mode=predict".to_string(),
        format!("--tables={table}"),
        "--input_schema=sent:str:1,label:str:1".into(),
        "--first_sequence=sent".into(),
        "--output_schema=predictions,probabilities,logits,output".into(),
        "--append_cols=label".into(),
        "--micro_batch_size=32".into(),
        "--sequence_length=32".into(),
        format!("--outputs={}", out_file.display()),
        format!("--checkpoint_dir={}", ckpt.display()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = easynlp_owned(&args);
    assert!(out.status.success(), "predict failed: {}", stderr(&out));
    std::fs::read_to_string(out_file).unwrap().lines().map(String::from).collect()
}

#[test]
fn predict_writes_one_line_per_row_for_any_batch_remainder() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = train_tiny(tmp.path());
    let rows: Vec<String> =
        std::fs::read_to_string(sample("sentiment-train.tsv")).unwrap().lines().map(String::from).collect();
    for n in [1usize, 2, 31, 32, 33] {
        let table = tmp.path().join(format!("in{n}.tsv"));
        std::fs::write(&table, rows[..n].join("\n") + "\n").unwrap();
        let lines = predict(&ckpt, &table.display().to_string(), &tmp.path().join(format!("out{n}.tsv")), &[]);
        assert_eq!(lines.len(), n, "{n} rows in, {} lines out", lines.len());
        for (line, row) in lines.iter().zip(&rows) {
            let cols: Vec<&str> = line.split('\t').collect();
            assert_eq!(cols.len(), 5, "{line}");
            assert!(cols[0] == "0" || cols[0] == "1");
            let probs: Vec<f32> = cols[1].split(',').map(|p| p.parse().unwrap()).collect();
            assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            assert!(cols[3].starts_with("[{'pred': '"), "{}", cols[3]);
            assert_eq!(cols[4], row.split('\t').nth(1).unwrap(), "append_cols carries the label");
        }
    }
}

#[test]
fn checkpoint_reloads_with_same_logits_and_predictions_match_evaluate() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = train_tiny(tmp.path());
    let dev = sample("sentiment-dev.tsv");
    let lines = predict(&ckpt, &dev, &tmp.path().join("pred.tsv"), &[]);
    // Logits from predict equal logits of the checkpoint loaded in-process.
    let loaded = load_checkpoint(&ckpt, &Device::Cpu).unwrap();
    let model = Classifier::load(&loaded.config, &|n| loaded.params.frozen(n)).unwrap();
    let tok = BertTokenizer::load(&ckpt, 32, false).unwrap();
    let texts: Vec<String> =
        std::fs::read_to_string(&dev).unwrap().lines().map(|l| l.split('\t').next().unwrap().to_string()).collect();
    let pairs: Vec<(&str, Option<&str>)> = texts.iter().map(|t| (t.as_str(), None)).collect();
    let examples: Vec<Example> = tok
        .encode_batch(&pairs)
        .unwrap()
        .into_iter()
        .map(|enc| Example { enc, label: None, teacher_logits: None, domain: None })
        .collect();
    let refs: Vec<&Example> = examples.iter().collect();
    let batch = make_batch(&refs, &Device::Cpu).unwrap();
    let logits: Vec<Vec<f32>> = model.forward(&batch, &ForwardCtx::eval()).unwrap().to_vec2().unwrap();
    for (line, want) in lines.iter().zip(&logits) {
        let got: Vec<f32> = line.split('\t').nth(2).unwrap().split(',').map(|x| x.parse().unwrap()).collect();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "predict logit {g} vs in-process {w}");
        }
    }
    // Evaluate's accuracy is the accuracy of predict's predictions.
    let hits = lines
        .iter()
        .filter(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            c[0] == c[4]
        })
        .count();
    let metrics = tmp.path().join("metrics.json");
    let out = easynlp_owned(&[
        "--mode=evaluate".into(),
        format!("--tables={dev}"),
        "--input_schema=sent:str:1,label:str:1".into(),
        "--first_sequence=sent".into(),
        "--label_name=label".into(),
        "--micro_batch_size=7".into(),
        "--sequence_length=32".into(),
        format!("--outputs={}", metrics.display()),
        format!("--checkpoint_dir={}", ckpt.display()),
    ]);
    assert!(out.status.success(), "evaluate failed: {}", stderr(&out));
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
    let acc = m["accuracy"].as_f64().unwrap();
    assert!((acc - hits as f64 / lines.len() as f64).abs() < 1e-12, "evaluate {acc} vs predict {hits}/{}", lines.len());
    assert!(m["f1"].as_f64().is_some() && m["eval_loss"].as_f64().unwrap() > 0.0);
}
