//! `scripts/gpu_check.sh --dry-run` on a tiny slice: the GPU check's own logic (tables, our
//! commands, the PyTorch workers, the bounds, the table, the exit status) runs on the CPU, so the
//! script does not rot before a GPU runs it. Needs a Python with torch and transformers, named by
//! `EASYNLP_TORCH_PYTHON` (e.g. the one `bash benches/setup_torch.sh` prints); without it the test
//! is skipped loudly, and `EASYNLP_REQUIRE_TORCH` makes that a failure.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn torch_python(test: &str) -> Option<String> {
    match std::env::var("EASYNLP_TORCH_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            let required = std::env::var_os("EASYNLP_REQUIRE_TORCH").is_some_and(|v| !v.is_empty() && v != "0");
            assert!(!required, "EASYNLP_REQUIRE_TORCH is set but EASYNLP_TORCH_PYTHON is not");
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr().lock(),
                "\n!!! SKIPPED {test}: set EASYNLP_TORCH_PYTHON to a python with torch and transformers !!!\n"
            );
            None
        }
    }
}

/// Runs the dry run with tiny sizes in `dir`; `extra` adds or overrides settings.
fn dry_run(python: &str, shared: &Path, dir: &Path, steps: &str, extra: &[(&str, &str)]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gpu_check.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .arg("--dry-run")
        .arg(format!("--steps={steps}"))
        .env("EASYNLP", env!("CARGO_BIN_EXE_easynlp"))
        .env("EASYNLP_SHARED", shared)
        .env("TORCH_PYTHON", python)
        .env("GPU_CHECK_WORK", dir.join("work"))
        .env("OUT", dir.join("out"));
    for (k, v) in [
        ("GPU_CHECK_LOGITS_TRAIN_ROWS", "8"),
        ("GPU_CHECK_LOGITS_BATCH", "8"),
        ("GPU_CHECK_LOGITS_DEV_ROWS", "12"),
        ("GPU_CHECK_FT_ROWS", "32"),
        ("GPU_CHECK_FT_DEV_ROWS", "16"),
        ("GPU_CHECK_BATCH", "2"),
        ("GPU_CHECK_SEQ", "16"),
        ("GPU_CHECK_TRAIN_WINDOWS", "2"),
        ("GPU_CHECK_TORCH_STEPS", "1"),
        ("GPU_CHECK_BIG_SHAPE", "2,64,2,128"),
        ("GPU_CHECK_MPI_ROWS", "48"),
    ] {
        cmd.env(k, v);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.output().expect("bash runs")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Every step that does not need a GPU runs and passes, the device step says it is skipped, step 4
/// runs or says why not, and the markdown table holds a row per measurement.
#[test]
fn gpu_check_dry_run_passes_on_the_cpu() {
    let test = "gpu_check_dry_run_passes_on_the_cpu";
    let Some(python) = torch_python(test) else { return };
    let Some(shared) = common::shared_dir(test) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = dry_run(&python, &shared, tmp.path(), "0,1,2,3,4", &[]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    for line in ["SKIP step 0: dry run", "PASS step 1:", "PASS step 2:", "PASS step 3:", "gpu_check: 0 failed"] {
        assert!(log.contains(line), "no `{line}` in:\n{log}");
    }
    let mpi = if cfg!(feature = "mpi") { "PASS step 4:" } else { "SKIP step 4: skipped: " };
    assert!(log.contains(mpi), "no `{mpi}` in:\n{log}");
    let table = std::fs::read_to_string(tmp.path().join("out/gpu_check.md")).unwrap();
    assert!(table.contains("dry run on the CPU"), "{table}");
    // Step 1, step 2, 2 models x 2 modes x 2 precisions, step 4.
    let rows = table.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| step")).count();
    assert_eq!(rows, 11, "{table}");
    assert!(table.contains("| 3 | BERT L2 H64 A2 I128 (random weights), train, f32"), "{table}");
    assert!(tmp.path().join("out/gpu_check_logs").is_dir());
}

/// A bound the logits cannot meet makes step 1 fail loudly and the script exit non-zero.
#[test]
fn gpu_check_fails_when_a_bound_is_missed() {
    let test = "gpu_check_fails_when_a_bound_is_missed";
    let Some(python) = torch_python(test) else { return };
    let Some(shared) = common::shared_dir(test) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = dry_run(&python, &shared, tmp.path(), "1", &[("GPU_CHECK_LOGITS_BOUND", "-1")]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("FAIL step 1: logits differ from PyTorch"), "{log}");
    let table = std::fs::read_to_string(tmp.path().join("out/gpu_check.md")).unwrap();
    assert!(table.contains("**FAIL**"), "{table}");
}
