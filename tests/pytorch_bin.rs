//! `pytorch_model.bin` as the Hub holds it, read without Python: a tiny random BERT classifier
//! saved by `torch.save` in every layout (tests/fixtures/pytorch_bin, written by
//! scripts/make_pytorch_bin_fixtures.py) predicts exactly the logits of its safetensors copy, and
//! those are transformers' logits; damaged files are clear errors.

mod common;

use candle_core::Device;
use common::{assert_failed_with, easynlp_owned, stderr};
use easynlp::model::params::read_weights;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pytorch_bin")
}

/// The layouts of the same weights: safetensors first.
const LAYOUTS: &[&str] = &["safetensors", "bin", "pretraining-tied-bin", "legacy-format-bin", "fp16-bin"];

fn predict_args(ckpt: &Path, outputs: &Path) -> Vec<String> {
    vec![
        "--mode=predict".into(),
        format!("--tables={}", fixtures().join("texts.tsv").display()),
        "--input_schema=sent:str:1".into(),
        "--first_sequence=sent".into(),
        "--output_schema=logits".into(),
        format!("--outputs={}", outputs.display()),
        format!("--checkpoint_dir={}", ckpt.display()),
        "--sequence_length=32".into(),
        "--micro_batch_size=3".into(),
    ]
}

/// Predicts the fixture texts' logits with the checkpoint `ckpt` through the binary.
fn predict(ckpt: &Path, tmp: &Path) -> String {
    let outputs = tmp.join(format!("{}.logits.tsv", ckpt.file_name().unwrap().to_string_lossy()));
    let out = easynlp_owned(&predict_args(ckpt, &outputs));
    assert!(out.status.success(), "{}: {}", ckpt.display(), stderr(&out));
    std::fs::read_to_string(&outputs).unwrap()
}

#[test]
fn every_layout_predicts_the_same_logits_as_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let safetensors = predict(&fixtures().join(LAYOUTS[0]), tmp.path());
    for layout in &LAYOUTS[1..] {
        assert_eq!(predict(&fixtures().join(layout), tmp.path()), safetensors, "{layout}: logits");
    }
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap()).unwrap();
    let want = reference["logits"].as_array().unwrap();
    let got: Vec<&str> = safetensors.lines().collect();
    assert_eq!(got.len(), want.len());
    for (i, (line, row)) in got.iter().zip(want).enumerate() {
        let got: Vec<f64> = line.split(',').map(|x| x.parse().unwrap()).collect();
        let row: Vec<f64> = row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(got.len(), row.len());
        for (g, w) in got.iter().zip(&row) {
            assert!((g - w).abs() < 1e-5, "row {i}: {got:?} vs transformers {row:?}");
        }
    }
}

/// The library reads the same tensors from every layout (names normalised: `bert.` prefix,
/// gamma/beta), bit for bit; the pretraining heads are reported as unexpected.
#[test]
fn every_layout_reads_the_same_tensors() {
    let dev = Device::Cpu;
    let (want, unexpected) = read_weights(&fixtures().join(LAYOUTS[0]), &dev).unwrap();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    assert!(want.contains_key("bert.embeddings.LayerNorm.weight") && want.contains_key("classifier.weight"));
    for layout in &LAYOUTS[1..] {
        let (got, unexpected) = read_weights(&fixtures().join(layout), &dev).unwrap();
        let mut names: Vec<&String> = got.keys().collect();
        names.sort();
        let mut want_names: Vec<&String> = want.keys().collect();
        want_names.sort();
        assert_eq!(names, want_names, "{layout}: names");
        for (name, t) in &want {
            let a = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = got[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(t.dims(), got[name].dims(), "{layout}: {name} shape");
            assert!(a == b, "{layout}: {name} differs");
        }
        if *layout == "pretraining-tied-bin" {
            assert!(unexpected.iter().any(|n| n == "cls.predictions.decoder.weight"), "{unexpected:?}");
            assert!(unexpected.iter().any(|n| n == "cls.seq_relationship.weight"), "{unexpected:?}");
        } else {
            assert!(unexpected.iter().all(|n| n.ends_with("position_ids")), "{layout}: {unexpected:?}");
        }
    }
}

/// A copy of fixture directory `layout` in `tmp` whose `pytorch_model.bin` is `bin`.
fn with_weights(tmp: &Path, layout: &str, bin: &[u8]) -> PathBuf {
    let dir = tmp.join(format!("{layout}-damaged"));
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["config.json", "vocab.txt"] {
        std::fs::copy(fixtures().join(layout).join(file), dir.join(file)).unwrap();
    }
    std::fs::write(dir.join("pytorch_model.bin"), bin).unwrap();
    dir
}

#[test]
fn damaged_files_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let zip = std::fs::read(fixtures().join("bin/pytorch_model.bin")).unwrap();
    let legacy = std::fs::read(fixtures().join("legacy-format-bin/pytorch_model.bin")).unwrap();
    let nested = std::fs::read(fixtures().join("nested-state-dict.bin")).unwrap();
    let cases: [(&str, &str, Vec<u8>, &[&str]); 7] = [
        ("zip-half", "bin", zip[..zip.len() / 2].to_vec(), &["zip archive", "truncated"]),
        ("zip-tail-cut", "bin", zip[..zip.len() - 30].to_vec(), &["zip archive", "truncated"]),
        ("legacy-half", "legacy-format-bin", legacy[..legacy.len() / 2].to_vec(), &["legacy", "truncated"]),
        ("legacy-last-byte", "legacy-format-bin", legacy[..legacy.len() - 1].to_vec(), &["legacy", "truncated"]),
        ("legacy-head", "legacy-format-bin", legacy[..40].to_vec(), &["legacy", "truncated"]),
        ("html", "bin", b"<html><body>404 Not Found</body></html>".to_vec(), &["not a PyTorch weights file"]),
        ("nested", "bin", nested, &["no tensors", "state dict"]),
    ];
    for (name, layout, bytes, needles) in cases {
        let dir = with_weights(&tmp.path().join(name), layout, &bytes);
        let err = format!("{:#}", read_weights(&dir, &Device::Cpu).expect_err(name));
        let file = dir.join("pytorch_model.bin").display().to_string();
        assert!(err.contains(&file), "{name}: {err}");
        for needle in needles {
            assert!(err.contains(needle), "{name}: `{needle}` not in: {err}");
        }
        // The binary says the same, without a panic.
        let out = easynlp_owned(&predict_args(&dir, &tmp.path().join(format!("{name}.tsv"))));
        assert_failed_with(&out, &[&file]);
    }
}
