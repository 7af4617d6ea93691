//! The AVX-512 kernel paths on a CPU that also has AMX, kept with `EASYNLP_CPU_FEATURES=no-amx`
//! (`tests/precision.rs` runs the CPU's best path, AMX where present): the bf16 and int8 kernels
//! and the encoder keep the same bounds, and the log names the path. On a CPU without AMX this
//! repeats `tests/precision.rs`. One test, so that the variable is set before any kernel runs in
//! this process.

mod common;
mod precision_cases;

use easynlp::ops::Precision;

#[test]
fn avx512_paths_compute_the_same_on_an_amx_cpu() {
    std::env::set_var("EASYNLP_CPU_FEATURES", "no-amx");
    for p in [Precision::Bf16, Precision::Int8] {
        assert!(!p.kernel_path().contains("AMX"), "{}", p.kernel_path());
    }
    precision_cases::bf16_gemm_matches_f64();
    precision_cases::bf16_linear_backward_matches_f64();
    precision_cases::int8_linear_matches_f64();
    precision_cases::int8_outlier_columns_run_in_f32();
    precision_cases::encoder_matches_f32("no-amx: encoder_matches_f32");
    precision_cases::bf16_gradients_match_f32("no-amx: bf16_gradients_match_f32");

    let tmp = tempfile::tempdir().unwrap();
    precision_cases::amp_training_logs_kernel_path(tmp.path());
}
