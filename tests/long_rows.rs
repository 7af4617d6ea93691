//! A very long row costs bounded memory in predict: only the prefix of a text that yields
//! `--sequence_length` tokens is tokenized.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `easynlp` with `args` (stderr to `log`); returns whether it succeeded and its own peak
/// resident memory in KiB (from `wait4`, which reports the usage of that one child).
fn run_with_peak_rss(args: &[String], log: &Path) -> (bool, i64) {
    let child = Command::new(env!("CARGO_BIN_EXE_easynlp"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("run easynlp");
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is a plain C struct for which all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our own child, which nothing else waits for (its `Child` is never
        // waited on); `status` and `usage` are valid, writable and live for the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        assert_eq!(std::io::Error::last_os_error().kind(), std::io::ErrorKind::Interrupted, "wait4 failed");
    }
    drop(child);
    (libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, usage.ru_maxrss)
}

fn predict_args(table: &Path, ckpt: &Path, outputs: &Path) -> Vec<String> {
    vec![
        "--mode=predict".into(),
        format!("--tables={}", table.display()),
        "--input_schema=sent:str:1,label:str:1".into(),
        "--first_sequence=sent".into(),
        "--append_cols=label".into(),
        "--output_schema=predictions,probabilities".into(),
        format!("--outputs={}", outputs.display()),
        format!("--checkpoint_dir={}", ckpt.display()),
        "--sequence_length=128".into(),
    ]
}

/// Peak memory of predict on one 5 MB row stays within 4x that on 20 ordinary rows (it was about
/// 6x: the whole row went through the tokenizer, about 130 bytes per byte of text).
#[test]
fn a_five_megabyte_row_costs_bounded_memory() {
    let Some(shared) = common::shared_dir("a_five_megabyte_row_costs_bounded_memory") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dev = std::fs::read_to_string(shared.join("data/glue-sst2/dev.tsv")).unwrap();
    let rows: Vec<&str> = dev.lines().skip(1).collect();
    let small = tmp.path().join("small.tsv");
    std::fs::write(&small, rows[..20].join("\n") + "\n").unwrap();
    let mut long = String::new();
    for row in rows.iter().cycle() {
        if long.len() > 5_000_000 {
            break;
        }
        long.push_str(row.split('\t').next().unwrap().trim());
        long.push(' ');
    }
    let long_table = tmp.path().join("long.tsv");
    std::fs::write(&long_table, format!("{long}\t1\n")).unwrap();
    let ckpt = tmp.path().join("ckpt");
    let train: Vec<String> = vec![
        "--mode=train".into(),
        format!("--tables={},{}", small.display(), small.display()),
        "--input_schema=sent:str:1,label:str:1".into(),
        "--first_sequence=sent".into(),
        "--label_name=label".into(),
        "--label_enumerate_values=0,1".into(),
        format!("--checkpoint_dir={}", ckpt.display()),
        "--epoch_num=1".into(),
        "--micro_batch_size=20".into(),
        "--sequence_length=32".into(),
        format!("--user_defined_parameters=pretrain_model_name_or_path={}", shared.join("models/minilm-l3").display()),
    ];
    let log = tmp.path().join("log");
    let (ok, _) = run_with_peak_rss(&train, &log);
    assert!(ok, "train: {}", std::fs::read_to_string(&log).unwrap());
    let (ok, small_rss) = run_with_peak_rss(&predict_args(&small, &ckpt, &tmp.path().join("small.out")), &log);
    assert!(ok, "predict 20 rows: {}", std::fs::read_to_string(&log).unwrap());
    let out = tmp.path().join("long.out");
    let (ok, long_rss) = run_with_peak_rss(&predict_args(&long_table, &ckpt, &out), &log);
    assert!(ok, "predict one 5 MB row: {}", std::fs::read_to_string(&log).unwrap());
    println!("peak RSS: 20 rows {small_rss} KiB, one 5 MB row {long_rss} KiB");
    let written = std::fs::read_to_string(&out).unwrap();
    assert_eq!(written.lines().count(), 1);
    assert!(written.ends_with("\t1\n"), "the appended label column");
    assert!(
        long_rss <= 4 * small_rss,
        "one 5 MB row peaked at {long_rss} KiB, more than 4x the {small_rss} KiB of 20 rows"
    );
}
