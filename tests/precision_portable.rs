//! The portable kernel paths, forced with `EASYNLP_CPU_FEATURES=portable` as on a CPU without
//! AVX512-BF16 / AVX512-VNNI: the kernels and the encoder keep the bounds of `tests/precision.rs`,
//! and `--use_amp` / `--precision=int8` train, evaluate and predict and say they are emulated.
//! One test, so that the variable is set before any kernel runs in this process.

mod common;
mod precision_cases;

use common::{easynlp_owned, sample, sentiment_train_args, stderr};

#[test]
fn portable_paths_compute_the_same_and_say_they_are_emulated() {
    std::env::set_var("EASYNLP_CPU_FEATURES", "portable");
    assert!(easynlp::ops::precision::forced_portable());
    precision_cases::bf16_gemm_matches_f64();
    precision_cases::bf16_linear_backward_matches_f64();
    precision_cases::int8_linear_matches_f64();
    precision_cases::int8_outlier_columns_run_in_f32();
    precision_cases::encoder_matches_f32("portable: encoder_matches_f32");

    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_bert(&tmp.path().join("bert"), 2, true);
    let ckpt = tmp.path().join("ckpt");
    let mut args = sentiment_train_args(&model, &ckpt);
    args.push("--use_amp".into());
    let out = easynlp_owned(&args);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("Precision bf16: kernel path bf16 emulated"), "{err}");
    assert!(err.contains("training done"), "{err}");
    for precision in ["bf16", "int8"] {
        let out_file = tmp.path().join(format!("pred-{precision}.tsv"));
        let out = easynlp_owned(&[
            "--mode=predict".into(),
            format!("--tables={}", sample("sentiment-dev.tsv")),
            "--input_schema=sent:str:1,label:str:1".into(),
            "--first_sequence=sent".into(),
            "--output_schema=predictions,probabilities".into(),
            "--sequence_length=32".into(),
            format!("--outputs={}", out_file.display()),
            format!("--checkpoint_dir={}", ckpt.display()),
            format!("--precision={precision}"),
        ]);
        let err = stderr(&out);
        assert!(out.status.success(), "{err}");
        assert!(err.contains(&format!("Precision {precision}: kernel path {precision} emulated")), "{err}");
        let rows = std::fs::read_to_string(sample("sentiment-dev.tsv")).unwrap().lines().count();
        let written = std::fs::read_to_string(&out_file).unwrap();
        assert_eq!(written.lines().count(), rows, "{written}");
        for line in written.lines() {
            let probs: Vec<f64> = line.split('\t').nth(1).unwrap().split(',').map(|p| p.parse().unwrap()).collect();
            assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{line}");
        }
    }
}
