//! Unusual inputs through the binary: tables that are FIFOs, character devices, process
//! substitutions or directories; control characters in values quoted by error messages.

mod common;

use common::{easynlp_owned, sample, sentiment_train_args, stderr, tiny_bert};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `easynlp` with `args`, killing it after `secs` (a FIFO opened a second time would block it
/// forever).
fn run_timed(args: &[String], secs: u64) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_easynlp"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run easynlp");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("easynlp {args:?} did not finish within {secs}s (blocked on a second read of a FIFO?)");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// A process writing a file's content into a FIFO once; killed (if still blocked) when dropped.
struct FifoWriter(Child);

impl Drop for FifoWriter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Makes the FIFO `dir/name` and starts a writer that feeds it `content` once.
fn fifo(dir: &Path, name: &str, content: &Path) -> (PathBuf, FifoWriter) {
    let path = dir.join(name);
    assert!(Command::new("mkfifo").arg(&path).status().expect("mkfifo").success());
    let writer = Command::new("sh")
        .args(["-c", "exec cat \"$0\" > \"$1\""])
        .arg(content)
        .arg(&path)
        .spawn()
        .expect("start the FIFO writer");
    (path, FifoWriter(writer))
}

/// Trains a tiny checkpoint on the sample sentiment tables.
fn teacher(root: &Path) -> PathBuf {
    let model = tiny_bert(&root.join("model"), 1, true);
    let ckpt = root.join("teacher");
    let out = easynlp_owned(&sentiment_train_args(&model, &ckpt));
    assert!(out.status.success(), "teacher: {}", stderr(&out));
    ckpt
}

fn predict_args(table: &Path, schema: &str, first: &str, outputs: &Path, ckpt: &Path) -> Vec<String> {
    vec![
        "--mode=predict".into(),
        format!("--tables={}", table.display()),
        format!("--input_schema={schema}"),
        format!("--first_sequence={first}"),
        "--output_schema=logits".into(),
        format!("--outputs={}", outputs.display()),
        format!("--checkpoint_dir={}", ckpt.display()),
        "--micro_batch_size=16".into(),
        "--sequence_length=32".into(),
    ]
}

/// Replaces the value of `--flag=` in `args`.
fn set(args: &mut [String], flag: &str, value: &str) {
    let prefix = format!("--{flag}=");
    let slot = args.iter_mut().find(|a| a.starts_with(&prefix)).expect("flag present");
    *slot = format!("{prefix}{value}");
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn assert_failed_with(out: &Output, needles: &[&str], absent: &[&str]) {
    let err = common::assert_failed_with(out, needles);
    for n in absent {
        assert!(!err.contains(n), "stderr has `{n}`:\n{err}");
    }
}

/// A Meta-KD layout table (header line checked by the reader) from the sample sentiment table.
fn metakd_table(path: &Path) -> &'static str {
    let mut text = String::from("guid\ttext_a\ttext_b\tlabel\tdomain\tweight\n");
    let rows = std::fs::read_to_string(sample("sentiment-train.tsv")).unwrap();
    for (i, line) in rows.lines().enumerate() {
        let (sent, label) = line.split_once('\t').unwrap();
        text.push_str(&format!("train-{i}\t{sent}\t\t{label}\tbooks\t0.5\n"));
    }
    std::fs::write(path, text).unwrap();
    "guid:str:1,text_a:str:1,text_b:str:1,label:str:1,domain:str:1,weight:str:1"
}

/// A FIFO table is read once although predict looks at it three times (header check, rows, and the
/// fingerprint of the logits export): same logits and same sidecar as from the regular file.
#[test]
fn fifo_table_in_predict() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = teacher(tmp.path());
    let table = tmp.path().join("senti.tsv");
    let schema = metakd_table(&table);
    let regular = tmp.path().join("regular.logits");
    let out = run_timed(&predict_args(&table, schema, "text_a", &regular, &ckpt), 300);
    assert!(out.status.success(), "regular: {}", stderr(&out));
    let (pipe, _writer) = fifo(tmp.path(), "senti.fifo", &table);
    let piped = tmp.path().join("fifo.logits");
    let out = run_timed(&predict_args(&pipe, schema, "text_a", &piped, &ckpt), 300);
    assert!(out.status.success(), "FIFO: {}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&piped).unwrap(), std::fs::read_to_string(&regular).unwrap());
    let (a, b) = (json(&tmp.path().join("regular.logits.meta.json")), json(&tmp.path().join("fifo.logits.meta.json")));
    assert_eq!(a["table"]["rows"], b["table"]["rows"]);
    assert_eq!(a["table"]["sha256"], b["table"]["sha256"]);
}

/// Training reads FIFO tables, and the KD join reads a FIFO training table twice (rows and the
/// sidecar's fingerprint) and a FIFO logits file: the same model as from regular files.
#[test]
fn fifo_tables_in_train_with_kd() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let ckpt = teacher(root);
    let train = PathBuf::from(sample("sentiment-train.tsv"));
    let dev = PathBuf::from(sample("sentiment-dev.tsv"));
    let logits = root.join("train.logits");
    let out = run_timed(&predict_args(&train, "sent:str:1,label:str:1", "sent", &logits, &ckpt), 300);
    assert!(out.status.success(), "export: {}", stderr(&out));
    let model = root.join("model");
    let kd = |student: &Path, train: &Path, dev: &Path, logits: &Path| -> Vec<String> {
        let mut args = sentiment_train_args(&model, student);
        for a in args.iter_mut() {
            if a.starts_with("--tables=") {
                *a = format!("--tables={},{}", train.display(), dev.display());
            } else if a.starts_with("--input_schema=") {
                *a = "--input_schema=sent:str:1,label:str:1,logits:float:2".into();
            }
        }
        let udp = args.pop().unwrap();
        args.push(format!(
            "{udp} enable_distillation=True type=vanilla_kd temperature=2 alpha=0.5 logits_name=logits \
             logits_saved_path={}",
            logits.display()
        ));
        args
    };
    let a = root.join("student-regular");
    let out = run_timed(&kd(&a, &train, &dev, &logits), 300);
    assert!(out.status.success(), "regular: {}", stderr(&out));
    let (train_pipe, _w1) = fifo(root, "train.fifo", &train);
    let (dev_pipe, _w2) = fifo(root, "dev.fifo", &dev);
    let (logits_pipe, _w3) = fifo(root, "logits.fifo", &logits);
    std::fs::copy(root.join("train.logits.meta.json"), root.join("logits.fifo.meta.json")).unwrap();
    let b = root.join("student-fifo");
    let out = run_timed(&kd(&b, &train_pipe, &dev_pipe, &logits_pipe), 300);
    assert!(out.status.success(), "FIFO: {}", stderr(&out));
    let wa = std::fs::read(a.join("model.safetensors")).unwrap();
    let wb = std::fs::read(b.join("model.safetensors")).unwrap();
    assert!(wa == wb, "FIFO tables trained another model");
}

/// Bash process substitution `<(cmd)` is a pipe under /dev/fd: read like a file.
#[test]
fn process_substitution_table_in_predict() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = teacher(tmp.path());
    let outputs = tmp.path().join("out.logits");
    let mut args = predict_args(Path::new("PLACEHOLDER"), "sent:str:1,label:str:1", "sent", &outputs, &ckpt);
    set(&mut args, "tables", "<(cat \"$1\")");
    let script = format!(
        "exec \"$0\" {}",
        args.iter()
            .map(|a| if a.starts_with("--tables=") { a.clone() } else { format!("'{a}'") })
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = Command::new("bash")
        .args(["-c", &script, env!("CARGO_BIN_EXE_easynlp"), &sample("sentiment-train.tsv")])
        .output()
        .unwrap();
    assert!(out.status.success(), "process substitution: {}", stderr(&out));
    let rows = std::fs::read_to_string(sample("sentiment-train.tsv")).unwrap().lines().count();
    assert_eq!(std::fs::read_to_string(&outputs).unwrap().lines().count(), rows);
}

/// `/dev/null` is an empty table, not a missing one.
#[test]
fn dev_null_table_has_no_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_bert(&tmp.path().join("model"), 1, true);
    let mut args = sentiment_train_args(&model, &tmp.path().join("ckpt"));
    set(&mut args, "tables", "/dev/null,/dev/null");
    let out = run_timed(&args, 120);
    assert_failed_with(&out, &["/dev/null", "the table has no rows"], &["does not exist"]);
}

/// A directory given as a table says so, in train, predict and a Meta-KD preparation step.
#[test]
fn directory_table_is_reported_as_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tables.d");
    std::fs::create_dir(&dir).unwrap();
    let model = tiny_bert(&tmp.path().join("model"), 1, true);
    let mut args = sentiment_train_args(&model, &tmp.path().join("ckpt"));
    set(&mut args, "tables", &format!("{},{}", dir.display(), sample("sentiment-dev.tsv")));
    assert_failed_with(&run_timed(&args, 120), &["tables.d", "is a directory"], &["does not exist"]);
    let args = predict_args(&dir, "sent:str:1,label:str:1", "sent", &tmp.path().join("o"), &model);
    assert_failed_with(&run_timed(&args, 120), &["tables.d", "is a directory"], &["does not exist"]);
    let args: Vec<String> = vec![
        "--mode=metakd_dev".into(),
        format!("--tables={}", dir.display()),
        format!("--outputs={}", tmp.path().join("dev.tsv").display()),
    ];
    assert_failed_with(&run_timed(&args, 120), &["tables.d", "is a directory"], &["does not exist"]);
    let args = predict_args(&tmp.path().join("nope.tsv"), "sent:str:1", "sent", &tmp.path().join("o"), &model);
    assert_failed_with(&run_timed(&args, 120), &["nope.tsv", "does not exist"], &[]);
}

/// A NUL or an escape sequence in a value is made visible in the error that quotes it.
#[test]
fn control_characters_in_quoted_values_are_visible() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_bert(&tmp.path().join("model"), 1, true);
    let table = tmp.path().join("lab.tsv");
    std::fs::write(&table, "good movie\t1\nbad movie\t0\0\n").unwrap();
    let mut args = sentiment_train_args(&model, &tmp.path().join("ckpt"));
    set(&mut args, "tables", &format!("{},{}", table.display(), table.display()));
    assert_failed_with(&run_timed(&args, 120), &["lab.tsv:2", "`label`", "`0\\0`", "--label_enumerate_values"], &[]);
    std::fs::write(&table, "good movie\t1\t3\nbad movie\t0\t4\x1b[2J\n").unwrap();
    set(&mut args, "input_schema", "sent:str:1,label:str:1,n:int:1");
    assert_failed_with(&run_timed(&args, 120), &["lab.tsv:2", "`n`", "`4\\u{1b}[2J`", "integer"], &["\x1b"]);
}
