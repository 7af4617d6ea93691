//! `--precision` / `--use_amp`: the bf16 and int8 kernels against f64 references with stated
//! bounds, the encoder in bf16 and int8 against f32 on the shared MiniLM models, and the flags.
//! This binary uses the CPU's kernel path (AMX tiles, else AVX512-BF16 / AVX512-VNNI, where
//! present); the AVX-512 path on an AMX CPU is checked by `tests/precision_no_amx.rs`, the
//! portable path by `tests/precision_portable.rs`, which force them.

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
    let (ckpt, _) = precision_cases::amp_training_logs_kernel_path(tmp.path());
    let path = easynlp::ops::Precision::Bf16.kernel_path();
    // Where the CPU has AMX (and nothing turned it off), the tiles are used.
    let amx =
        std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains(" amx_bf16") && c.contains(" amx_tile"));
    if amx && std::env::var_os("EASYNLP_CPU_FEATURES").is_none() {
        assert_eq!(path, "bf16 AMX (tdpbf16ps)");
        assert_eq!(easynlp::ops::Precision::Int8.kernel_path(), "int8 AMX (tdpbusd)");
    }
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
