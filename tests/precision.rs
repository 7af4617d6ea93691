//! `--precision` / `--use_amp`: the bf16 and int8 kernels against f64 references with stated
//! bounds, the encoder in bf16 and int8 against f32 on the shared MiniLM models, and the flags.
//! This binary uses the CPU's kernel path (AVX512-BF16 / AVX512-VNNI where present); the portable
//! path is checked by `tests/precision_portable.rs`, which forces it.

mod common;
mod precision_cases;

#[test]
fn bf16_gemm_matches_f64() {
    precision_cases::bf16_gemm_matches_f64();
}

#[test]
fn bf16_linear_backward_matches_f64() {
    precision_cases::bf16_linear_backward_matches_f64();
}

#[test]
fn int8_linear_matches_f64() {
    precision_cases::int8_linear_matches_f64();
}

#[test]
fn int8_outlier_columns_run_in_f32() {
    precision_cases::int8_outlier_columns_run_in_f32();
}

#[test]
fn encoder_in_bf16_and_int8_matches_f32() {
    precision_cases::encoder_matches_f32("encoder_in_bf16_and_int8_matches_f32");
}

#[test]
fn bf16_training_gradients_match_f32() {
    precision_cases::bf16_gradients_match_f32("bf16_training_gradients_match_f32");
}

#[test]
fn the_log_names_the_kernel_path() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_bert(&tmp.path().join("bert"), 1, true);
    let ckpt = tmp.path().join("ckpt");
    let mut args = common::sentiment_train_args(&model, &ckpt);
    args.push("--use_amp".into());
    let out = common::easynlp_owned(&args);
    let err = common::stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("Precision bf16: kernel path bf16 "), "{err}");
    // Checkpoints stay f32.
    let weights = candle_core::safetensors::load(ckpt.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert!(weights.values().all(|t| t.dtype() == candle_core::DType::F32));
}

#[test]
fn precision_flags_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_bert(&tmp.path().join("bert"), 1, true);
    let ckpt = tmp.path().join("ckpt");
    let mut args = common::sentiment_train_args(&model, &ckpt);
    args.push("--precision=int8".into());
    common::assert_failed_with(&common::easynlp_owned(&args), &["--precision=int8 is for --mode=evaluate"]);
    args.pop();
    args.extend(["--use_amp".into(), "--precision=f32".into()]);
    common::assert_failed_with(&common::easynlp_owned(&args), &["--use_amp means --precision=bf16"]);
    args.pop();
    args.pop();
    args.push("--precision=fp16".into());
    common::assert_failed_with(&common::easynlp_owned(&args), &["--precision", "fp16"]);
}
