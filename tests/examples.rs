//! The tutorial example scripts run end to end on a tiny slice of the shared data.

mod common;

use std::process::Command;

fn run_example(script: &str) {
    let Some(shared) = common::shared_dir(script) else { return };
    run_example_with(script, &shared, &[]);
}

/// Runs a KD example on 40 training and 16 dev rows with `env` on top, and checks its outputs.
fn run_example_with(script: &str, shared: &std::path::Path, env: &[(&str, &str)]) {
    let work = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("examples").join(script))
        .env("EASYNLP", env!("CARGO_BIN_EXE_easynlp"))
        .env("EASYNLP_SHARED", shared)
        .env("WORK", work.path())
        .env("ROWS", "40")
        .env("DEV_ROWS", "16")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let log = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{script} failed:\n{log}");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.path().join("student_metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["rows"], 16, "{log}");
    let logits = std::fs::read_to_string(work.path().join("results/large-sst2-teacher").join(match script {
        "kd_mrpc.sh" => "pred.tsv",
        _ => "logits.tsv",
    }))
    .unwrap();
    assert_eq!(logits.lines().count(), 40);
    let preds = std::fs::read_to_string(work.path().join("student_pred.tsv")).unwrap();
    assert!(preds.lines().count() == 40 || preds.lines().count() == 16);
}

#[test]
fn kd_sst2_example_runs() {
    run_example("kd_sst2.sh");
}

#[test]
fn kd_mrpc_example_runs() {
    run_example("kd_mrpc.sh");
}

/// The MRPC KD tutorial with EasyNLP's model names, the models served by a local Hub.
#[test]
fn kd_mrpc_example_runs_with_easynlp_model_names_from_a_hub() {
    let Some(shared) = common::shared_dir("kd_mrpc.sh with model names") else { return };
    let server = common::hub_server::HubServer::start();
    server.serve_dir("google-bert/bert-large-uncased", &shared.join("models/minilm-l6"));
    server.serve_dir("google/bert_uncased_L-4_H-512_A-8", &shared.join("models/minilm-l3"));
    let home = tempfile::tempdir().unwrap();
    let home = home.path().to_str().unwrap();
    run_example_with(
        "kd_mrpc.sh",
        &shared,
        &[
            ("TEACHER_MODEL", "bert-large-uncased"),
            ("STUDENT_MODEL", "bert-small-uncased"),
            ("HF_ENDPOINT", &server.endpoint),
            ("HF_HOME", home),
            ("HF_HUB_OFFLINE", "0"),
        ],
    );
    for repo in ["google-bert/bert-large-uncased", "google/bert_uncased_L-4_H-512_A-8"] {
        let weights = format!("/{repo}/resolve/main/model.safetensors");
        assert!(server.seen().iter().any(|s| s.path == weights), "{repo} not fetched: {:?}", server.seen());
    }
}

#[test]
fn metakd_pipeline_example_runs() {
    let Some(shared) = common::shared_dir("metakd.sh") else { return };
    let work = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("examples/metakd.sh"))
        .env("EASYNLP", env!("CARGO_BIN_EXE_easynlp"))
        .env("EASYNLP_SHARED", &shared)
        .env("WORK", work.path())
        .env("ROWS_PER_DOMAIN", "8")
        .env("GENRES", "books,kitchen")
        .env("EPOCHS1", "1")
        .env("EPOCHS2", "1")
        .env("SEQ_LEN", "32")
        .env("BATCH", "8")
        .output()
        .unwrap();
    let log = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "metakd.sh failed:\n{log}");
    for genre in ["books", "kitchen"] {
        let m = work.path().join(format!("students/{genre}/student.test.{genre}.json"));
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&m).unwrap()).unwrap();
        assert_eq!(v["genre"], genre, "{log}");
        assert!(v["accuracy"].as_f64().is_some());
        assert!(log.contains(&format!("{genre}: accuracy ")), "{log}");
    }
    // The results table (students alone, Meta-KD, per-domain teachers and vanilla KD) on the
    // same prepared tables.
    let out = Command::new("bash")
        .arg(root.join("examples/metakd_results.sh"))
        .env("EASYNLP", env!("CARGO_BIN_EXE_easynlp"))
        .env("EASYNLP_SHARED", &shared)
        .env("SENTI", work.path().join("prep/data/SENTI"))
        .env("WORK", work.path().join("results"))
        .env("GENRES", "books kitchen")
        .env("STUDENT_EPOCHS", "1")
        .env("META_EPOCHS", "1")
        .env("TEACHER_EPOCHS", "1")
        .env("SEQ_LEN", "32")
        .env("BATCH", "8")
        .output()
        .unwrap();
    let log = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "metakd_results.sh failed:\n{log}");
    let table: Vec<&str> = log.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(table.len(), 6, "header + 5 rows:\n{log}");
    for row in &table[1..] {
        let cells: Vec<&str> = row.split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
        assert_eq!(cells.len(), 4, "{row}");
        assert!(cells[1..].iter().all(|c| c.parse::<f64>().is_ok_and(|a| (0.0..=1.0).contains(&a))), "{row}");
    }
}

/// The KD sweep on a tiny slice: a teacher, two settings of students (no KD over two seeds, two
/// KD cells, the best cell's second seed; two students at a time), a report with a heatmap for
/// each; run again, it skips every finished run.
#[test]
fn kd_sweep_example_runs_and_resumes() {
    let Some(shared) = common::shared_dir("kd_sweep.sh") else { return };
    let work = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let sweep = || {
        let out = Command::new("bash")
            .arg(root.join("examples/kd_sweep.sh"))
            .env("EASYNLP", env!("CARGO_BIN_EXE_easynlp"))
            .env("EASYNLP_SHARED", &shared)
            .env("WORK", work.path())
            .envs([("ROWS", "32"), ("DEV_ROWS", "16"), ("SMALL_ROWS", "16"), ("TEMPERATURES", "1 5")])
            .envs([("ALPHAS", "0.5"), ("SEEDS", "1 2"), ("TEACHER_EPOCHS", "1"), ("EPOCHS", "1")])
            .envs([("SEQ_LEN", "32"), ("BATCH", "8"), ("SAVE_STEPS", "2"), ("LOGGING_STEPS", "1")])
            .env("JOBS", "2")
            .output()
            .unwrap();
        let log = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "kd_sweep.sh failed:\n{log}");
        log
    };
    let log = sweep();
    for setting in ["full", "small"] {
        let md = std::fs::read_to_string(work.path().join(format!("reports/{setting}/report.md"))).unwrap();
        for run in ["nokd-s1", "nokd-s2", "kd-t1-a0.5-s1", "kd-t5-a0.5-s1"] {
            assert!(md.contains(&format!("| {run} |")), "{setting}: {run} missing:\n{md}");
        }
        assert!(md.contains("| temperature \\ alpha | 0.5 |") && md.contains("Without KD: "), "{md}");
        assert_eq!(md.matches("-s2 |").count(), 2, "no-KD and the best cell have a second seed:\n{md}");
        for file in ["report.svg", "report.png"] {
            assert!(work.path().join(format!("reports/{setting}/{file}")).is_file());
        }
        assert!(work.path().join(format!("logs/{setting}-nokd-s1.log")).is_file(), "logs are kept");
    }
    assert_eq!(log.matches("\ntrain ").count() + log.starts_with("train ") as usize, 11, "{log}");
    let again = sweep();
    assert_eq!(again.matches("skip ").count(), 11, "{again}");
    assert!(!again.contains("\ntrain "), "{again}");
}
