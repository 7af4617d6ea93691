//! Training never loses or mixes state: gradient accumulation uses every micro-batch once, an
//! interrupted and resumed run equals the uninterrupted one bit for bit, a kill at any instant
//! leaves a whole checkpoint, one run at a time trains into a directory, and a resume of a
//! different run is refused.

mod common;

use common::signals::{run_and_kill, run_and_signal, SIGINT, SIGTERM};
use common::{easynlp_owned, sample, stderr};
use std::path::{Path, PathBuf};

/// A tiny random BERT (2 layers) with dropout `p`.
fn tiny_model(root: &Path, dropout: f64) -> PathBuf {
    let dir = common::tiny_bert(&root.join("model"), 2, true);
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["hidden_dropout_prob"] = dropout.into();
    config["attention_probs_dropout_prob"] = dropout.into();
    std::fs::write(&path, config.to_string()).unwrap();
    dir
}

/// The first `n` rows of the sample sentiment training table.
fn rows(root: &Path, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(sample("sentiment-train.tsv")).unwrap();
    let lines: Vec<&str> = text.lines().cycle().take(n).collect();
    let path = root.join(format!("train{n}.tsv"));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// Train flags: `train` (and the sample dev table unless `dev` is None), then `extra`.
fn train_args(model: &Path, ckpt: &Path, train: &Path, dev: Option<&str>, extra: &[&str]) -> Vec<String> {
    let tables = match dev {
        Some(dev) => format!("{},{dev}", train.display()),
        None => train.display().to_string(),
    };
    let udp = if dev.is_some() { "" } else { " do_eval=False" };
    let mut a: Vec<String> = vec![
        "--mode=train".into(),
        format!("--tables={tables}"),
        "--input_schema=sent:str:1,label:str:1".into(),
        "--first_sequence=sent".into(),
        "--label_name=label".into(),
        "--label_enumerate_values=0,1".into(),
        format!("--checkpoint_dir={}", ckpt.display()),
        "--sequence_length=32".into(),
        "--learning_rate=1e-3".into(),
        "--random_seed=7".into(),
        format!("--user_defined_parameters=pretrain_model_name_or_path={}{udp}", model.display()),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run_ok(args: &[String]) -> String {
    let out = easynlp_owned(args);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    log
}

fn weights(path: &Path) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap()
}

/// Files (recursively) whose names say they are temporaries of this program.
fn temporaries(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.contains(".easynlp-") || name.contains(".tmp") {
            found.push(entry.path());
        } else if entry.file_type().unwrap().is_dir() {
            found.extend(temporaries(&entry.path()));
        }
    }
    found
}

#[test]
fn accumulation_uses_every_micro_batch_once_on_an_uneven_batch_count() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 0.1);
    // 200 rows, micro-batches of 16: 13 per epoch, in steps of 3 + 3 + 3 + 3 + 1.
    let train = rows(tmp.path(), 200);
    let extra = ["--micro_batch_size=16", "--gradient_accumulation_steps=3", "--epoch_num=2", "--logging_steps=1"];
    let log = run_ok(&train_args(&model, &tmp.path().join("ck"), &train, None, &extra));
    assert!(log.contains("13 batches/epoch, 10 optimizer steps (5/epoch"), "{log}");
    assert!(log.contains("Epoch [1/2], step [5/10]") && log.contains("Epoch [2/2], step [6/10]"), "{log}");
    assert!(log.contains("Epoch [2/2], step [10/10]"), "{log}");
}

#[test]
fn accumulated_micro_batches_equal_one_batch_of_the_same_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 0.0);
    let train = rows(tmp.path(), 32);
    // Plain SGD with lr 1 on one step: the weights move by exactly the (averaged) gradient.
    let common = ["--epoch_num=1", "--optimizer_type=SGD", "--learning_rate=1", "--warmup_proportion=0"];
    let run = |name: &str, batch: &str, accumulation: &str| -> PathBuf {
        let ck = tmp.path().join(name);
        let mut extra = common.to_vec();
        extra.extend([batch, accumulation]);
        let log = run_ok(&train_args(&model, &ck, &train, None, &extra));
        assert!(log.contains("1 optimizer steps"), "{log}");
        ck.join("model.safetensors")
    };
    let micro = weights(&run("micro", "--micro_batch_size=8", "--gradient_accumulation_steps=4"));
    let whole = weights(&run("whole", "--micro_batch_size=32", "--gradient_accumulation_steps=1"));
    let start = weights(&model.join("model.safetensors"));
    let mut moved = 0f32;
    for (name, w) in &whole {
        let diff = (w - &micro[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-6, "{name}: 4 micro-batches of 8 differ from one batch of 32 by {diff}");
        let hf = name.strip_prefix("bert.").unwrap_or(name);
        if let Some(s) = start.get(hf) {
            let m = (w - s).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            moved = moved.max(m);
        }
    }
    assert!(moved > 1e-3, "the step changed the weights ({moved})");
}

/// An uninterrupted run and one stopped by `signal` after its evaluation at step 2, then resumed:
/// the best models and the latest states are the same bytes.
fn assert_resume_is_exact(extra: &[&str], signal: i32, udp_tail: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 0.1);
    let train = rows(tmp.path(), 40);
    let dev = sample("sentiment-dev.tsv");
    let mut flags =
        vec!["--micro_batch_size=8", "--gradient_accumulation_steps=3", "--epoch_num=3", "--save_checkpoint_steps=2"];
    flags.extend(extra);
    let args = |ck: &Path| {
        let mut a = train_args(&model, ck, &train, Some(&dev), &flags);
        if !udp_tail.is_empty() {
            let last = a.iter().position(|s| s.starts_with("--user_defined_parameters")).unwrap();
            a[last] = format!("{} {udp_tail}", a[last]);
        }
        a
    };
    let stopped = tmp.path().join("stopped");
    let (status, log) = run_and_signal(&args(&stopped), "Evaluation at global step 2", signal);
    assert_eq!(status.code(), Some(128 + signal), "{log}");
    assert!(log.contains(&format!("continue with --resume_from_checkpoint={}", stopped.display())), "{log}");
    assert!(temporaries(tmp.path()).is_empty(), "{:?}", temporaries(tmp.path()));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(stopped.join("latest/trainer_state.json")).unwrap()).unwrap();
    let seed = state["seed"].as_u64().unwrap();
    let mut resumed = args(&stopped);
    resumed.push(format!("--resume_from_checkpoint={}", stopped.display()));
    let log = run_ok(&resumed);
    assert!(log.contains("resumed at optimizer step"), "{log}");
    // The uninterrupted run, with the seed the stopped run used.
    let whole = tmp.path().join("whole");
    let mut uninterrupted = args(&whole);
    uninterrupted.push(format!("--random_seed={seed}"));
    run_ok(&uninterrupted);
    for file in ["model.safetensors", "latest/model.safetensors", "latest/optimizer.safetensors"] {
        let (a, b) = (std::fs::read(whole.join(file)).unwrap(), std::fs::read(stopped.join(file)).unwrap());
        assert!(a == b, "{file}: interrupted + resumed differs from uninterrupted");
    }
}

#[test]
fn sigint_saves_the_latest_state_and_resume_is_bit_identical() {
    assert_resume_is_exact(&[], SIGINT, "");
}

#[test]
fn sigterm_with_a_drawn_seed_resumes_with_that_seed() {
    assert_resume_is_exact(&["--random_seed=-1"], SIGTERM, "");
}

#[test]
fn vanilla_kd_resumes_bit_identically() {
    // The teacher: a tiny model fine-tuned on the same rows.
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 0.1);
    let teacher = tmp.path().join("teacher");
    run_ok(&train_args(&model, &teacher, &rows(tmp.path(), 40), None, &["--epoch_num=1"]));
    let udp = format!(
        "enable_distillation=True type=vanilla_kd teacher_model_path={} temperature=2 alpha=0.5",
        teacher.display()
    );
    assert_resume_is_exact(&[], SIGINT, &udp);
}

#[test]
fn a_second_run_on_a_locked_checkpoint_dir_fails_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 0.1);
    let ck = tmp.path().join("ck");
    let lock = easynlp::persist::DirLock::acquire(&ck).unwrap();
    let out = easynlp_owned(&train_args(&model, &ck, &rows(tmp.path(), 40), None, &["--epoch_num=1"]));
    let log = stderr(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("in use by another training run") && log.contains(&format!("pid {}", std::process::id())),
        "{log}"
    );
    assert!(!log.contains("model in"), "{log}");
    assert!(!ck.join("model.safetensors").exists() && !ck.join("config.json").exists());
    drop(lock);
    run_ok(&train_args(&model, &ck, &rows(tmp.path(), 40), None, &["--epoch_num=1"]));
    assert!(ck.join("model.safetensors").is_file());
}

#[test]
fn resuming_into_a_new_dir_brings_the_best_model_and_a_different_run_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 0.1);
    let train = rows(tmp.path(), 40);
    let dev = sample("sentiment-dev.tsv");
    let done = tmp.path().join("done");
    let flags = ["--micro_batch_size=8", "--epoch_num=2", "--save_checkpoint_steps=2"];
    run_ok(&train_args(&model, &done, &train, Some(&dev), &flags));
    // Resuming a finished run into another directory: nothing left to train, and the best model
    // (with its config and vocabulary) is there.
    let moved = tmp.path().join("moved");
    let mut args = train_args(&model, &moved, &train, Some(&dev), &flags);
    args.push(format!("--resume_from_checkpoint={}", done.display()));
    let log = run_ok(&args);
    assert!(log.contains(&format!("model in {}", moved.display())), "{log}");
    for file in ["model.safetensors", "config.json", "vocab.txt", "label_mapping.json"] {
        assert!(
            std::fs::read(moved.join(file)).unwrap() == std::fs::read(done.join(file)).unwrap(),
            "{file} was not brought along"
        );
    }
    // A resume that changes what shapes the run names the first difference and changes nothing.
    let state_before = std::fs::read(done.join("latest/trainer_state.json")).unwrap();
    let other_dev = rows(tmp.path(), 12);
    let cases: [(Vec<String>, &str); 3] = [
        (
            train_args(&model, &done, &train, Some(&dev), &flags)
                .into_iter()
                .map(|a| if a.starts_with("--label_enumerate") { "--label_enumerate_values=1,0".into() } else { a })
                .collect(),
            "labels (in order): saved `0,1`, now `1,0`",
        ),
        (
            train_args(&model, &done, &train, Some(&other_dev.display().to_string()), &flags),
            "validation table (SHA-256)",
        ),
        (
            [train_args(&model, &done, &train, Some(&dev), &flags), vec!["--learning_rate=2e-3".into()]].concat(),
            "learning_rate: saved `0.001`, now `0.002`",
        ),
    ];
    for (mut args, needle) in cases {
        args.push(format!("--resume_from_checkpoint={}", done.display()));
        let out = easynlp_owned(&args);
        assert!(!out.status.success() && stderr(&out).contains(needle), "{needle}: {}", stderr(&out));
    }
    assert_eq!(std::fs::read(done.join("latest/trainer_state.json")).unwrap(), state_before);
    // A directory without a saved state is refused with the reason.
    let mut args = train_args(&model, &tmp.path().join("x"), &train, Some(&dev), &flags);
    args.push(format!("--resume_from_checkpoint={}", model.display()));
    let out = easynlp_owned(&args);
    assert!(stderr(&out).contains("holds no saved training state"), "{}", stderr(&out));
}

/// The acceptance run: minilm-l3 on a few hundred SST-2 rows, a save point at every step,
/// accumulation 3 on an uneven batch count, SIGKILLed at 20 random instants and resumed each
/// time: the best model is bit-identical to the uninterrupted run's, and no temporary is left.
#[test]
fn killed_at_random_instants_and_resumed_is_bit_identical() {
    let Some(shared) = common::shared_dir("killed_at_random_instants_and_resumed_is_bit_identical") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let sst2 = std::fs::read_to_string(shared.join("data/glue-sst2/train.tsv")).unwrap();
    let train = tmp.path().join("train.tsv");
    std::fs::write(&train, sst2.lines().skip(1).take(200).collect::<Vec<_>>().join("\n") + "\n").unwrap();
    let dev_text = std::fs::read_to_string(shared.join("data/glue-sst2/dev.tsv")).unwrap();
    let dev = tmp.path().join("dev.tsv");
    std::fs::write(&dev, dev_text.lines().skip(1).take(32).collect::<Vec<_>>().join("\n") + "\n").unwrap();
    let model = shared.join("models/minilm-l3");
    let flags = [
        "--micro_batch_size=16",
        "--gradient_accumulation_steps=3",
        "--epoch_num=1",
        "--save_checkpoint_steps=1",
        "--learning_rate=5e-5",
    ];
    let args = |ck: &Path| train_args(&model, ck, &train, Some(&dev.display().to_string()), &flags);
    let whole = tmp.path().join("whole");
    let started = std::time::Instant::now();
    run_ok(&args(&whole));
    let mut duration = started.elapsed();
    let expected = std::fs::read(whole.join("model.safetensors")).unwrap();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let (mut killed, mut runs) = (0, 0);
    // 20 kills at random instants of a run; a run that ends before its instant (this VM's speed
    // varies) is checked the same way, does not count, and shortens the window to its own length.
    while killed < 20 {
        assert!(runs < 60, "only {killed} of {runs} runs were killed before they ended");
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let at = duration.mul_f64((rng % 1000) as f64 / 1000.0 * 0.9);
        let ck = tmp.path().join(format!("run{runs}"));
        match run_and_kill(&args(&ck), at) {
            Ok(()) => killed += 1,
            Err(ran) => duration = duration.min(ran),
        }
        let mut resume = args(&ck);
        if ck.join("latest/trainer_state.json").is_file() {
            resume.push(format!("--resume_from_checkpoint={}", ck.display()));
        }
        run_ok(&resume);
        let got = std::fs::read(ck.join("model.safetensors")).unwrap();
        assert!(got == expected, "run {runs} (killed after {at:?}): the resumed model differs");
        assert!(temporaries(tmp.path()).is_empty(), "run {runs}: {:?}", temporaries(tmp.path()));
        std::fs::remove_dir_all(&ck).unwrap();
        runs += 1;
    }
}

#[test]
fn save_all_checkpoints_keeps_a_copy_per_evaluation_and_the_best_is_one_of_them() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 0.1);
    let ck = tmp.path().join("ck");
    let flags = ["--micro_batch_size=8", "--epoch_num=2", "--save_checkpoint_steps=2", "--save_all_checkpoints"];
    run_ok(&train_args(&model, &ck, &rows(tmp.path(), 40), Some(&sample("sentiment-dev.tsv")), &flags));
    // 5 steps per epoch, 10 in all: evaluations after steps 2, 4, 6, 8 and 10.
    for step in [2, 4, 6, 8, 10] {
        assert!(ck.join(format!("model_step_{step}.safetensors")).is_file(), "no copy of step {step}");
    }
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ck.join("latest/trainer_state.json")).unwrap()).unwrap();
    let best = state["best_step"].as_u64().unwrap();
    let copy = std::fs::read(ck.join(format!("model_step_{best}.safetensors"))).unwrap();
    assert!(copy == std::fs::read(ck.join("model.safetensors")).unwrap(), "the best model is step {best}'s copy");
    assert!(
        std::fs::read(ck.join("model_step_10.safetensors")).unwrap()
            == std::fs::read(ck.join("latest/model.safetensors")).unwrap()
    );
}
