//! `--outputs` of predict and evaluate: regular files are replaced atomically, symlinks keep being
//! links (their target is replaced), devices, FIFOs and /dev paths are written through, a directory
//! is refused, a Ctrl-C leaves no temporary file, and an output never overwrites an input.

mod common;

use common::{easynlp_owned, sample, stderr, tiny_checkpoint};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Rows of the sample dev table.
fn dev_rows() -> usize {
    std::fs::read_to_string(sample("sentiment-dev.tsv")).unwrap().lines().count()
}

fn predict_args(ckpt: &Path, table: &str, outputs: &Path, schema: &str) -> Vec<String> {
    vec![
        "--mode=predict".into(),
        format!("--tables={table}"),
        "--input_schema=sent:str:1,label:str:1".into(),
        "--first_sequence=sent".into(),
        format!("--output_schema={schema}"),
        "--sequence_length=32".into(),
        format!("--outputs={}", outputs.display()),
        format!("--checkpoint_dir={}", ckpt.display()),
    ]
}

fn evaluate_args(ckpt: &Path, table: &str, outputs: &Path) -> Vec<String> {
    vec![
        "--mode=evaluate".into(),
        format!("--tables={table}"),
        "--input_schema=sent:str:1,label:str:1".into(),
        "--first_sequence=sent".into(),
        "--label_name=label".into(),
        "--sequence_length=32".into(),
        format!("--outputs={}", outputs.display()),
        format!("--checkpoint_dir={}", ckpt.display()),
    ]
}

fn predict(ckpt: &Path, outputs: &Path) -> Output {
    easynlp_owned(&predict_args(ckpt, &sample("sentiment-dev.tsv"), outputs, "predictions"))
}

fn evaluate(ckpt: &Path, outputs: &Path) -> Output {
    easynlp_owned(&evaluate_args(ckpt, &sample("sentiment-dev.tsv"), outputs))
}

fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed: {}", stderr(out));
}

/// Temporary files (`.NAME.tmp*`) left in `dir`.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n.contains(".tmp"))
        .collect()
}

fn checkpoint(root: &Path) -> PathBuf {
    tiny_checkpoint(&root.join("ckpt"), &["0", "1"])
}

#[test]
fn a_character_device_is_written_through_not_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(tmp.path());
    // A private /dev/null.
    let null = tmp.path().join("null");
    let made = Command::new("mknod").arg(&null).args(["c", "1", "3"]).status().unwrap();
    assert!(made.success(), "mknod failed (the tests run as root)");
    assert_ok(&predict(&ckpt, &null), "predict");
    assert!(std::fs::symlink_metadata(&null).unwrap().file_type().is_char_device(), "predict replaced the device");
    assert_ok(&evaluate(&ckpt, &null), "evaluate");
    assert!(std::fs::symlink_metadata(&null).unwrap().file_type().is_char_device(), "evaluate replaced the device");
    // A logits export to a device writes no sidecar beside it, and says so.
    let out = easynlp_owned(&predict_args(&ckpt, &sample("sentiment-dev.tsv"), &null, "logits"));
    assert_ok(&out, "logits export");
    assert!(std::fs::symlink_metadata(&null).unwrap().file_type().is_char_device());
    assert!(!tmp.path().join("null.meta.json").exists(), "no sidecar for a write-through output");
    assert!(stderr(&out).contains("no sidecar"), "{}", stderr(&out));
    assert!(temp_files(tmp.path()).is_empty(), "{:?}", temp_files(tmp.path()));
}

#[test]
fn a_fifo_is_written_through() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(tmp.path());
    let fifo = tmp.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let reader = Command::new("cat").arg(&fifo).stdout(Stdio::piped()).spawn().unwrap();
    let out = predict(&ckpt, &fifo);
    let still_fifo = std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo();
    if !still_fifo {
        // The reader waits for a writer that never comes: end it before failing.
        let mut reader = reader;
        let _ = reader.kill();
        let _ = reader.wait();
        panic!("predict replaced the FIFO with a regular file");
    }
    assert_ok(&out, "predict");
    let read = reader.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&read.stdout).lines().count(), dev_rows());
}

#[test]
fn a_symlink_keeps_being_a_link_and_its_target_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(tmp.path());
    let real_dir = tmp.path().join("real");
    std::fs::create_dir(&real_dir).unwrap();
    let target = real_dir.join("pred.tsv");
    std::fs::write(&target, "old\n").unwrap();
    let link = tmp.path().join("pred.tsv");
    std::os::unix::fs::symlink("real/pred.tsv", &link).unwrap();
    assert_ok(&predict(&ckpt, &link), "predict");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("real/pred.tsv"));
    assert_eq!(std::fs::read_to_string(&target).unwrap().lines().count(), dev_rows());
    // Evaluate, and a dangling link: its target is created.
    let metrics = tmp.path().join("metrics.json");
    std::os::unix::fs::symlink("real/metrics.json", &metrics).unwrap();
    assert_ok(&evaluate(&ckpt, &metrics), "evaluate");
    assert!(std::fs::symlink_metadata(&metrics).unwrap().file_type().is_symlink());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(real_dir.join("metrics.json")).unwrap()).unwrap();
    assert!(json["accuracy"].is_number());
    // A logits export through the link: the sidecar is `<outputs>.meta.json`.
    let logits = easynlp_owned(&predict_args(&ckpt, &sample("sentiment-dev.tsv"), &link, "logits"));
    assert_ok(&logits, "logits export");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert!(tmp.path().join("pred.tsv.meta.json").is_file());
    assert!(temp_files(tmp.path()).is_empty() && temp_files(&real_dir).is_empty());
}

#[test]
fn a_directory_is_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    // No checkpoint: the output is checked first.
    let missing = tmp.path().join("no-ckpt");
    let dir = tmp.path().join("out");
    std::fs::create_dir(&dir).unwrap();
    let link = tmp.path().join("out-link");
    std::os::unix::fs::symlink("out", &link).unwrap();
    for out_path in [&dir, &link] {
        for out in [predict(&missing, out_path), evaluate(&missing, out_path)] {
            let err = stderr(&out);
            assert!(!out.status.success());
            assert!(err.contains("--outputs") && err.contains("is a directory"), "{err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    assert!(std::fs::read_dir(&dir).unwrap().next().is_none(), "nothing written into the directory");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
}

#[test]
fn dev_stdout_streams_to_stdout_and_is_never_renamed_over() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(tmp.path());
    let stdout_path = Path::new("/dev/stdout");
    // stdout a pipe.
    let out = predict(&ckpt, stdout_path);
    assert_ok(&out, "predict");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), dev_rows());
    // stdout a regular file: /dev/stdout resolves to it, and it is still written through.
    let log = tmp.path().join("stdout.log");
    let file = std::fs::File::create(&log).unwrap();
    let inode = file.metadata().unwrap().ino();
    let status = Command::new(env!("CARGO_BIN_EXE_easynlp"))
        .args(predict_args(&ckpt, &sample("sentiment-dev.tsv"), stdout_path, "logits"))
        .stdout(file)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_ok(&status, "predict > file");
    assert!(stderr(&status).contains("no sidecar"), "{}", stderr(&status));
    assert_eq!(std::fs::metadata(&log).unwrap().ino(), inode, "the redirected stdout file was replaced");
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), dev_rows());
    assert!(std::fs::symlink_metadata(stdout_path).unwrap().file_type().is_symlink(), "/dev/stdout is intact");
    assert!(!Path::new("/dev/stdout.meta.json").exists());
    // Evaluate: the JSON once on stdout.
    let out = evaluate(&ckpt, stdout_path);
    assert_ok(&out, "evaluate");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["accuracy"].is_number());
}

#[test]
fn ctrl_c_stops_predict_and_leaves_no_temporary_file() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(tmp.path());
    // Enough rows, one per batch, for predict to run for many seconds.
    let rows = std::fs::read_to_string(sample("sentiment-train.tsv")).unwrap();
    let table = tmp.path().join("big.tsv");
    std::fs::write(&table, rows.repeat(1000)).unwrap();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out_path = out_dir.join("pred.tsv");
    std::fs::write(&out_path, "previous\n").unwrap();
    let mut args = predict_args(&ckpt, &table.display().to_string(), &out_path, "predictions,probabilities");
    args.push("--micro_batch_size=1".into());
    let mut child = Command::new(env!("CARGO_BIN_EXE_easynlp"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while temp_files(&out_dir).is_empty() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("predict ended ({status}) before it started writing");
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no temporary file after 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(child.try_wait().unwrap().is_none(), "predict finished too fast for this test; use more rows");
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted by SIGINT"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(temp_files(&out_dir).is_empty(), "left behind: {:?}", temp_files(&out_dir));
    assert_eq!(std::fs::read_to_string(&out_path).unwrap(), "previous\n", "the previous output was touched");
}

/// Runs `args` expecting a refusal that names `output` and `input`, and checks `input` kept `before`.
fn expect_refused(args: &[String], output: &str, input: &Path, before: &[u8]) {
    let out = easynlp_owned(args);
    let err = stderr(&out);
    assert!(!out.status.success(), "expected a refusal for {args:?}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(output), "stderr lacks `{output}`:\n{err}");
    assert!(err.contains(&input.display().to_string()), "stderr lacks `{}`:\n{err}", input.display());
    assert!(err.contains("same file"), "{err}");
    assert_eq!(std::fs::read(input).unwrap(), before, "{} was overwritten", input.display());
}

#[test]
fn an_output_that_is_an_input_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let ckpt = checkpoint(root);
    let data = root.join("data");
    std::fs::create_dir(&data).unwrap();
    let table = data.join("in.tsv");
    std::fs::copy(sample("sentiment-dev.tsv"), &table).unwrap();
    let bytes = std::fs::read(&table).unwrap();
    let table_s = table.display().to_string();
    let other = data.join("other.tsv");
    std::fs::copy(sample("sentiment-train.tsv"), &other).unwrap();
    let dotted = root.join("data/../data/in.tsv");
    let link = root.join("link.tsv");
    std::os::unix::fs::symlink(&table, &link).unwrap();
    let hard = root.join("hard.tsv");
    std::fs::hard_link(&table, &hard).unwrap();
    for out in [&table, &dotted, &link, &hard] {
        let shown = out.display().to_string();
        expect_refused(&predict_args(&ckpt, &table_s, out, "predictions"), &shown, &table, &bytes);
        expect_refused(&evaluate_args(&ckpt, &table_s, out), &shown, &table, &bytes);
    }
    // Any of --tables, not only the last one.
    let two = format!("{table_s},{}", other.display());
    expect_refused(&evaluate_args(&ckpt, &two, &hard), &hard.display().to_string(), &table, &bytes);
    // The checkpoint's files.
    for name in ["config.json", "model.safetensors", "vocab.txt", "label_mapping.json"] {
        let file = ckpt.join(name);
        let before = std::fs::read(&file).unwrap();
        let shown = file.display().to_string();
        expect_refused(&predict_args(&ckpt, &table_s, &file, "predictions"), &shown, &file, &before);
        expect_refused(&evaluate_args(&ckpt, &table_s, &file), &shown, &file, &before);
    }
    // The logits sidecar `<outputs>.meta.json` may not be an input either.
    let side_table = data.join("t.meta.json");
    std::fs::copy(&table, &side_table).unwrap();
    let out_path = data.join("t");
    let args = predict_args(&ckpt, &side_table.display().to_string(), &out_path, "logits");
    expect_refused(&args, &side_table.display().to_string(), &side_table, &bytes);
    assert!(!out_path.exists(), "nothing written");
}
