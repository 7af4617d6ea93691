//! What a training run leaves to be watched and compared: TensorBoard event files and
//! `metrics.jsonl` in `<checkpoint_dir>/log/` that agree with the log lines (also across a
//! killed and resumed run), and `--mode=report`'s SVG, PNG and markdown.
//!
//! The TensorBoard check with TensorBoard's own reader (`EventAccumulator`) runs when
//! `EASYNLP_TB_PYTHON` names a Python that has the `tensorboard` package (CI sets it); without it
//! that part is skipped loudly, unless `EASYNLP_REQUIRE_TB` is set, which makes it a failure.

mod common;

use common::signals::{run_and_signal, SIGKILL};
use common::{assert_failed_with, easynlp_owned, sample, stderr};
use easynlp::runlog::{read_records, Record};
use easynlp::tensorboard::{read_records as read_event_records, Event, ValueKind, What, SESSION_START};
use prost::Message;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The first `n` rows of the sample sentiment training table (repeated as needed).
fn rows(root: &Path, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(sample("sentiment-train.tsv")).unwrap();
    let lines: Vec<&str> = text.lines().cycle().take(n).collect();
    let path = root.join(format!("train{n}.tsv"));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// Train flags on the tiny model: 40 rows in batches of 8 (5 steps an epoch), 2 epochs, a log
/// line every step, an evaluation every 2 steps; `udp` is appended to the user-defined parameters.
fn train_args(model: &Path, ckpt: &Path, train: &Path, udp: &str) -> Vec<String> {
    vec![
        "--mode=train".into(),
        format!("--tables={},{}", train.display(), sample("sentiment-dev.tsv")),
        "--input_schema=sent:str:1,label:str:1".into(),
        "--first_sequence=sent".into(),
        "--label_name=label".into(),
        "--label_enumerate_values=0,1".into(),
        format!("--checkpoint_dir={}", ckpt.display()),
        "--sequence_length=32".into(),
        "--learning_rate=1e-3".into(),
        "--micro_batch_size=8".into(),
        "--epoch_num=2".into(),
        "--logging_steps=1".into(),
        "--save_checkpoint_steps=2".into(),
        "--random_seed=7".into(),
        format!("--user_defined_parameters=pretrain_model_name_or_path={} {udp}", model.display()),
    ]
}

fn run_ok(args: &[String]) -> String {
    let out = easynlp_owned(args);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    log
}

/// `(step, lr, loss)` of each training log line, as printed.
type TrainLines = Vec<(usize, String, String)>;

/// `(step, lr, loss)` of each training log line and `(step, accuracy)` of each evaluation line.
fn log_values(log: &str) -> (TrainLines, Vec<(usize, String)>) {
    let (mut train, mut evals) = (Vec::new(), Vec::new());
    for line in log.lines() {
        if let Some(rest) = line.split("step [").nth(1) {
            let step = rest.split('/').next().unwrap().parse().unwrap();
            let lr = line.split("lr ").nth(1).unwrap().split(',').next().unwrap().to_string();
            let loss = line.split("loss ").nth(1).unwrap().split(',').next().unwrap().to_string();
            train.push((step, lr, loss));
        } else if let Some(rest) = line.split("Evaluation at global step ").nth(1) {
            let step = rest.split(':').next().unwrap().parse().unwrap();
            let acc = rest.split("accuracy ").nth(1).unwrap().split(',').next().unwrap().to_string();
            evals.push((step, acc));
        }
    }
    (train, evals)
}

/// What TensorBoard shows of a log folder, read here the way it reads it: files in name order,
/// a `SessionLog.START` at step `s` dropping what was read before at steps `>= s`. Returns the
/// scalars by tag (`step -> value`, each step once) and the texts by tag (`(step, text)`).
type Scalars = BTreeMap<String, Vec<(i64, f32)>>;
fn tensorboard_view(log: &Path) -> (Scalars, BTreeMap<String, Vec<(i64, String)>>) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."))
        .collect();
    files.sort();
    let (mut scalars, mut texts): (Scalars, BTreeMap<String, Vec<(i64, String)>>) = Default::default();
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let events: Vec<Event> =
            read_event_records(&bytes).unwrap().iter().map(|r| Event::decode(*r).unwrap()).collect();
        assert_eq!(events[0].what, Some(What::FileVersion("brain.Event:2".into())), "{}", file.display());
        for e in events {
            match e.what {
                Some(What::SessionLog(s)) if s.status == SESSION_START => {
                    for v in scalars.values_mut() {
                        v.retain(|(step, _)| *step < e.step);
                    }
                    for v in texts.values_mut() {
                        v.retain(|(step, _)| *step < e.step);
                    }
                }
                Some(What::Summary(s)) => {
                    for v in s.value {
                        match v.value {
                            Some(ValueKind::SimpleValue(x)) => scalars.entry(v.tag).or_default().push((e.step, x)),
                            Some(ValueKind::Tensor(t)) => texts
                                .entry(v.tag)
                                .or_default()
                                .push((e.step, String::from_utf8(t.string_val[0].clone()).unwrap())),
                            None => panic!("a value without a value"),
                        }
                    }
                }
                _ => {}
            }
        }
    }
    (scalars, texts)
}

/// Checks a run's log folder against its log lines and `metrics.jsonl`: every optimizer step
/// `1..=steps` has exactly one loss and learning rate in TensorBoard, equal to the log line's
/// printed values and to the JSON record's values (as f32); every evaluation has its record and
/// scalars; the texts are there at step 0. `log` holds the log lines of the steps in question.
fn check_log_folder(ck: &Path, log: &str, steps: usize, kd: bool) {
    let (lines, evals) = log_values(log);
    let records = read_records(ck).unwrap();
    let train: BTreeMap<usize, _> = records
        .iter()
        .filter_map(|r| if let Record::Train(t) = r { Some((t.step, t.clone())) } else { None })
        .collect();
    let eval: BTreeMap<usize, _> =
        records.iter().filter_map(|r| if let Record::Eval(e) = r { Some((e.step, e.clone())) } else { None }).collect();
    assert_eq!(train.keys().copied().collect::<Vec<_>>(), (1..=steps).collect::<Vec<_>>(), "{records:?}");
    let (scalars, texts) = tensorboard_view(&ck.join("log"));
    for tag in ["losses/loss", "learning_rate/lr"] {
        let at: Vec<i64> = scalars[tag].iter().map(|(s, _)| *s).collect();
        assert_eq!(at, (1..=steps as i64).collect::<Vec<_>>(), "{tag}: one value per optimizer step");
    }
    for (step, lr, loss) in &lines {
        let t = &train[step];
        assert_eq!(&format!("{:.6}", t.lr), lr, "step {step}: metrics.jsonl lr");
        assert_eq!(&format!("{:.4}", t.loss), loss, "step {step}: metrics.jsonl loss");
        let tb = |tag: &str| scalars[tag].iter().find(|(s, _)| *s == *step as i64).unwrap().1;
        assert_eq!(tb("losses/loss"), t.loss as f32, "step {step}: TensorBoard loss");
        assert_eq!(tb("learning_rate/lr"), t.lr as f32, "step {step}: TensorBoard lr");
        if kd {
            let (k, c) = (t.parts["kd_loss"], t.parts["ce_loss"]);
            assert!((k + c - t.loss).abs() < 1e-5 * t.loss.abs().max(1.0), "step {step}: {k} + {c} != {}", t.loss);
            assert_eq!(tb("losses/kd_loss"), k as f32);
            assert_eq!(tb("losses/ce_loss"), c as f32);
        } else {
            assert!(t.parts.is_empty() && !scalars.contains_key("losses/kd_loss"));
        }
    }
    for (step, acc) in &evals {
        let e = &eval[step];
        assert_eq!(&format!("{:.4}", e.metrics["accuracy"].as_f64().unwrap()), acc, "evaluation at {step}");
        assert_eq!(e.confusion.iter().flatten().sum::<usize>(), e.metrics["rows"].as_u64().unwrap() as usize);
        let tb = scalars["eval/accuracy"].iter().filter(|(s, _)| *s == *step as i64).collect::<Vec<_>>();
        assert_eq!(tb.len(), 1, "evaluation at {step} once in TensorBoard");
        assert_eq!(tb[0].1, e.metrics["accuracy"].as_f64().unwrap() as f32);
    }
    for tag in ["eval/f1", "eval/loss"] {
        assert_eq!(scalars[tag].len(), eval.len(), "{tag}");
    }
    // The flags of the run's start (a resumed run's train_config.json adds the resume flag).
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ck.join("train_config.json")).unwrap()).unwrap();
    config["resume_from_checkpoint"] = serde_json::Value::Null;
    let training = &texts["config/training/text_summary"];
    assert_eq!(training.len(), 1);
    assert_eq!(training[0].0, 0);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&training[0].1).unwrap(), config);
    let model = &texts["config/model_config/text_summary"];
    let model_config: serde_json::Value = serde_json::from_str(&model[0].1).unwrap();
    assert_eq!(model_config["num_labels"], 2, "{model_config}");
    // Every line of metrics.jsonl is one JSON object.
    let text = std::fs::read_to_string(ck.join("log/metrics.jsonl")).unwrap();
    for line in text.lines() {
        assert!(serde_json::from_str::<serde_json::Value>(line).unwrap().is_object(), "{line}");
    }
}

#[test]
fn a_run_logs_tensorboard_events_and_metrics_jsonl_equal_to_its_log_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_bert(&tmp.path().join("model"), 2, true);
    let train = rows(tmp.path(), 40);
    let ck = tmp.path().join("plain");
    let log = run_ok(&train_args(&model, &ck, &train, ""));
    // Not a terminal: the log is the log lines alone, no progress bar.
    assert!(!log.contains('\r') && !log.contains("ETA"), "{log}");
    let (lines, evals) = log_values(&log);
    assert_eq!((lines.len(), evals.len()), (10, 5), "{log}");
    let text = std::fs::read_to_string(ck.join("log/metrics.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 1 + lines.len() + evals.len(), "a start, one per log line, one per evaluation");
    check_log_folder(&ck, &log, 10, false);
    // Vanilla KD with the first run as the teacher: the two terms are logged too.
    let student = tmp.path().join("kd");
    let udp =
        format!("enable_distillation=True type=vanilla_kd teacher_model_path={} temperature=2 alpha=0.5", ck.display());
    let log = run_ok(&train_args(&model, &student, &train, &udp));
    check_log_folder(&student, &log, 10, true);
    tensorboard_python_check(&student, &log);
}

#[test]
fn a_killed_and_resumed_run_shows_each_step_once_with_the_resumed_values() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_bert(&tmp.path().join("model"), 2, true);
    let train = rows(tmp.path(), 40);
    let ck = tmp.path().join("ck");
    let args = train_args(&model, &ck, &train, "");
    // Killed once step 5 is logged: the latest state is step 4's, step 5 is an orphan.
    let (status, first) = run_and_signal(&args, "step [5/10]", SIGKILL);
    assert_eq!(status.code(), None, "{first}");
    let mut resumed = args.clone();
    resumed.push(format!("--resume_from_checkpoint={}", ck.display()));
    let second = run_ok(&resumed);
    assert!(second.contains("resumed at optimizer step 4"), "{second}");
    let events = std::fs::read_dir(ck.join("log"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("events.out.tfevents."));
    assert_eq!(events.count(), 2, "the resumed process appends a new event file");
    // The history: steps 1-4 from the first process, 5-10 from the second, each once, with the
    // second process's values where both logged a step.
    let step_of = |l: &str| {
        let rest = l.split("step [").nth(1).or_else(|| l.split("Evaluation at global step ").nth(1))?;
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<usize>().ok()
    };
    let first_part: String =
        first.lines().filter(|l| step_of(l).is_none_or(|s| s <= 4)).map(|l| format!("{l}\n")).collect();
    check_log_folder(&ck, &format!("{first_part}{second}"), 10, false);
    let text = std::fs::read_to_string(ck.join("log/metrics.jsonl")).unwrap();
    assert!(text.lines().any(|l| l.contains("\"resumed\":true")), "{text}");
    tensorboard_python_check(&ck, &second);
    // Resuming into another directory brings the log so far along.
    let moved = tmp.path().join("moved");
    let mut args = train_args(&model, &moved, &train, "");
    args.push(format!("--resume_from_checkpoint={}", ck.display()));
    run_ok(&args);
    assert_eq!(
        read_records(&moved).unwrap().iter().filter(|r| matches!(r, Record::Train(_))).count(),
        10,
        "the copied history"
    );
}

/// TensorBoard's `EventAccumulator` on `ck/log`: the texts are there, and every step of `log`'s
/// lines has the loss and learning rate the line prints.
fn tensorboard_python_check(ck: &Path, log: &str) {
    let Some(python) = std::env::var_os("EASYNLP_TB_PYTHON").filter(|p| !p.is_empty()) else {
        let required = std::env::var_os("EASYNLP_REQUIRE_TB").is_some_and(|v| !v.is_empty() && v != "0");
        assert!(!required, "EASYNLP_REQUIRE_TB is set but EASYNLP_TB_PYTHON is not");
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr().lock(),
            "\n!!! SKIPPED the EventAccumulator check: set EASYNLP_TB_PYTHON to a python with tensorboard !!!\n"
        );
        return;
    };
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util
acc = EventAccumulator(sys.argv[1])
acc.Reload()
tags = acc.Tags()
out = {"scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]},
       "texts": {t: [[e.step, tensor_util.make_ndarray(e.tensor_proto).tolist()[0].decode()] for e in acc.Tensors(t)]
                 for t in tags["tensors"]},
       "text_plugin": sorted(acc.PluginTagToContent("text").keys())}
print(json.dumps(out))
"#;
    let out = std::process::Command::new(&python).arg("-c").arg(script).arg(ck.join("log")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["text_plugin"],
        serde_json::json!(["config/model_config/text_summary", "config/training/text_summary"]),
        "{v}"
    );
    assert_eq!(v["texts"]["config/training/text_summary"][0][0], 0);
    let scalars = |tag: &str| -> BTreeMap<i64, f64> {
        let pts = v["scalars"][tag].as_array().unwrap_or_else(|| panic!("no {tag}: {v}"));
        let map: BTreeMap<i64, f64> = pts.iter().map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap())).collect();
        assert_eq!(map.len(), pts.len(), "{tag}: a step shown twice");
        map
    };
    let (loss, lr) = (scalars("losses/loss"), scalars("learning_rate/lr"));
    assert_eq!(loss.keys().copied().collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>(), "every optimizer step once");
    let (lines, _) = log_values(log);
    assert!(!lines.is_empty());
    for (step, l, x) in lines {
        assert_eq!(format!("{:.6}", lr[&(step as i64)]), l, "TensorBoard lr at step {step}");
        assert_eq!(format!("{:.4}", loss[&(step as i64)]), x, "TensorBoard loss at step {step}");
    }
}

#[test]
fn report_draws_three_runs_as_valid_svg_png_and_markdown() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_bert(&tmp.path().join("model"), 2, true);
    let train = rows(tmp.path(), 24);
    let teacher = tmp.path().join("no-kd");
    run_ok(&train_args(&model, &teacher, &train, ""));
    let mut dirs = vec![teacher.clone()];
    for (name, t, a) in [("kd-t2", 2, 0.5), ("kd-t5", 5, 0.9)] {
        let dir = tmp.path().join(name);
        let udp = format!(
            "enable_distillation=True type=vanilla_kd teacher_model_path={} temperature={t} alpha={a}",
            teacher.display()
        );
        run_ok(&train_args(&model, &dir, &train, &udp));
        dirs.push(dir);
    }
    let out = tmp.path().join("report");
    let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let log = run_ok(&[
        "--mode=report".into(),
        format!("--checkpoint_dir={}", list.join(",")),
        format!("--outputs={}", out.display()),
    ]);
    assert!(log.contains("report of 3 runs"), "{log}");
    let best: Vec<f64> = dirs
        .iter()
        .map(|d| {
            let evals: Vec<_> = read_records(d)
                .unwrap()
                .into_iter()
                .filter_map(|r| if let Record::Eval(e) = r { Some(e) } else { None })
                .collect();
            evals.iter().rev().find(|e| e.best).unwrap().metrics["accuracy"].as_f64().unwrap()
        })
        .collect();
    // The SVG parses, and its text names every run and shows the heatmap's values.
    let svg = std::fs::read_to_string(out.join("report.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect();
    for name in ["no-kd", "kd-t2", "kd-t5"] {
        assert!(texts.iter().any(|t| t.starts_with(name)), "{name} not in the SVG's text: {texts:?}");
    }
    for acc in &best[1..] {
        assert!(texts.contains(&format!("{acc:.4}")), "heatmap cell {acc:.4} not in {texts:?}");
    }
    for axis in ["temperature", "alpha", "step", "prediction", "label"] {
        assert!(texts.iter().any(|t| t == axis), "{axis}");
    }
    // The PNG decodes, has the picture's size and is not blank.
    let decoder = png::Decoder::new(std::fs::File::open(out.join("report.png")).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).unwrap();
    let width: f64 = doc.root_element().attribute("width").unwrap().parse().unwrap();
    assert_eq!(info.width as f64, width);
    let pixels = &pixels[..info.buffer_size()];
    let inked = pixels.chunks(3).filter(|p| p != &[255, 255, 255]).count();
    let share = inked as f64 / (info.width * info.height) as f64;
    assert!(share > 0.02 && share < 0.9, "{share} of the pixels are inked");
    let colours: std::collections::HashSet<&[u8]> = pixels.chunks(3).collect();
    assert!(colours.len() > 20, "{} colours", colours.len());
    // The markdown sums up every run with its best accuracy, the heatmap and the matrices.
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for (name, acc) in ["no-kd", "kd-t2", "kd-t5"].iter().zip(&best) {
        assert!(md.lines().any(|l| l.starts_with(&format!("| {name} |")) && l.contains(&format!("{acc:.4}"))), "{md}");
    }
    assert!(md.contains("| temperature \\ alpha | 0.5 | 0.9 |") && md.contains("Without KD: "), "{md}");
    assert_eq!(md.matches("| label \\ prediction | 0 | 1 |").count(), 3, "{md}");
}

#[test]
fn report_errors_name_the_flag_and_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = tmp.path().join("out").display().to_string();
    let run = |args: &[String]| easynlp_owned(args);
    let r = run(&["--mode=report".into(), format!("--outputs={out}")]);
    assert_failed_with(&r, &["--mode=report needs --checkpoint_dir"]);
    let r = run(&["--mode=report".into(), format!("--checkpoint_dir={}", empty.display())]);
    assert_failed_with(&r, &["--mode=report needs --outputs"]);
    let r = run(&["--mode=report".into(), format!("--checkpoint_dir={}", empty.display()), format!("--outputs={out}")]);
    assert_failed_with(&r, &[&empty.display().to_string(), "has no training log", "metrics.jsonl"]);
    let missing = tmp.path().join("missing").display().to_string();
    let r = run(&["--mode=report".into(), format!("--checkpoint_dir={missing}"), format!("--outputs={out}")]);
    assert_failed_with(&r, &[&missing, "is not a directory"]);
    assert!(!Path::new(&out).join("report.svg").exists());
}

/// On a terminal the run draws a progress bar with the rate, the elapsed time and the ETA (run
/// under `script`, which gives it a pseudo-terminal; skipped where `script` is missing).
#[test]
fn on_a_terminal_the_progress_bar_shows_rate_elapsed_and_eta() {
    if std::process::Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no `script` command for a pseudo-terminal");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_bert(&tmp.path().join("model"), 2, true);
    let train = rows(tmp.path(), 40);
    let args = train_args(&model, &tmp.path().join("ck"), &train, "");
    let quoted: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_easynlp").to_string())
        .chain(args)
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let out = std::process::Command::new("script")
        .args(["-qec", &quoted.join(" "), "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ETA") && text.contains("/10") && text.contains("/s") && text.contains("loss 0."), "{text}");
    // The log lines are still whole lines.
    assert!(text.contains("Evaluation at global step 10: accuracy"), "{text}");
}
