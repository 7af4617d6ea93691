//! Data parallelism over MPI (`--features mpi`, Open MPI's `mpirun` on the PATH): two workers
//! compute the update one worker computes over the same global batches, predict writes the same
//! bytes, a killed worker ends the job at once with the previous checkpoint intact, and a saved
//! state continues only with as many workers.
#![cfg(feature = "mpi")]

mod common;

use candle_core::{Device, Tensor};
use common::{easynlp_owned, metakd, stderr, tiny_bert};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The SST-2 rows and minilm-l3 of the shared folder, in a temporary directory.
struct Fixture {
    tmp: tempfile::TempDir,
    model: PathBuf,
    train: PathBuf,
    dev: PathBuf,
}

fn fixture(test: &str, train_rows: usize) -> Option<Fixture> {
    let shared = common::shared_dir(test)?;
    let tmp = tempfile::tempdir().unwrap();
    let take = |file: &str, n: usize, name: &str| {
        let text = std::fs::read_to_string(shared.join("data/glue-sst2").join(file)).unwrap();
        let path = tmp.path().join(name);
        std::fs::write(&path, text.lines().skip(1).take(n).collect::<Vec<_>>().join("\n") + "\n").unwrap();
        path
    };
    let train = take("train.tsv", train_rows, "train.tsv");
    let dev = take("dev.tsv", 64, "dev.tsv");
    Some(Fixture { model: shared.join("models/minilm-l3"), train, dev, tmp })
}

impl Fixture {
    fn train_args(&self, ckpt: &Path, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--mode=train".into(),
            format!("--tables={},{}", self.train.display(), self.dev.display()),
            "--input_schema=sent:str:1,label:str:1".into(),
            "--first_sequence=sent".into(),
            "--label_name=label".into(),
            "--label_enumerate_values=0,1".into(),
            format!("--checkpoint_dir={}", ckpt.display()),
            "--sequence_length=64".into(),
            "--learning_rate=5e-5".into(),
            "--random_seed=7".into(),
            "--logging_steps=1".into(),
            format!("--user_defined_parameters=pretrain_model_name_or_path={}", self.model.display()),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }
}

/// `mpirun -np N easynlp args...` (as root too, cores shared).
fn mpirun(np: usize, args: &[String]) -> Output {
    Command::new("mpirun")
        .args(["-np", &np.to_string(), "--bind-to", "none", "--oversubscribe"])
        .arg(env!("CARGO_BIN_EXE_easynlp"))
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .expect("mpirun runs")
}

fn ok(out: Output) -> String {
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    log
}

fn weights(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

/// The logged training losses (`metrics.jsonl`), by step.
fn losses(dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("log/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["event"] == "train")
        .map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap()))
        .collect()
}

fn max_abs_diff(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(name, x)| {
            let y = b.get(name).unwrap_or_else(|| panic!("{name} missing"));
            (x - y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
        })
        .fold(0.0, f32::max)
}

/// The acceptance run: minilm-l3, 256 SST-2 rows, 3 optimizer steps, the same seed:
/// `--worker_gpu=2 --micro_batch_size=8` (started through mpirun by easynlp itself, and
/// `mpirun -np 2` directly) against `--worker_gpu=1 --micro_batch_size=16`: every weight within
/// 1e-5, the logged losses within 1e-6, the same validation accuracy.
#[test]
fn two_workers_compute_the_update_of_one_worker_with_twice_the_micro_batch() {
    let Some(f) = fixture("two_workers_compute_the_update_of_one_worker_with_twice_the_micro_batch", 256) else {
        return;
    };
    // 256 rows / 16 per global batch = 16 batches; 3 of them.
    let steps = ["--epoch_num=0.1875"];
    let one = f.tmp.path().join("one");
    let log =
        ok(easynlp_owned(&f.train_args(&one, &[&steps[..], &["--worker_gpu=1", "--micro_batch_size=16"]].concat())));
    assert!(log.contains("3 optimizer steps"), "{log}");
    let two = f.tmp.path().join("two");
    let log =
        ok(easynlp_owned(&f.train_args(&two, &[&steps[..], &["--worker_gpu=2", "--micro_batch_size=8"]].concat())));
    assert!(log.contains("data parallel over 2 workers: 16 rows per global micro-batch"), "{log}");
    let direct = f.tmp.path().join("direct");
    ok(mpirun(2, &f.train_args(&direct, &[&steps[..], &["--micro_batch_size=8"]].concat())));
    let base = weights(&one);
    let base_losses = losses(&one);
    assert_eq!(base_losses.len(), 3);
    for dir in [&two, &direct] {
        let diff = max_abs_diff(&base, &weights(dir));
        eprintln!("{}: max abs weight difference {diff:e}", dir.display());
        assert!(diff <= 1e-5, "{}: weights differ by {diff}", dir.display());
        let l = losses(dir);
        assert_eq!(l.len(), 3);
        for ((s1, a), (s2, b)) in base_losses.iter().zip(&l) {
            assert_eq!(s1, s2);
            assert!((a - b).abs() <= 1e-6, "step {s1}: loss {a} vs {b}");
        }
        let state = |d: &Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(d.join("latest/trainer_state.json")).unwrap()).unwrap()
        };
        assert_eq!(state(dir)["best_accuracy"], state(&one)["best_accuracy"]);
        assert_eq!(state(dir)["world_size"], 2);
    }
    // Only rank 0 writes: one log, one set of files.
    assert_eq!(
        std::fs::read_dir(two.join("log")).unwrap().count(),
        std::fs::read_dir(one.join("log")).unwrap().count()
    );
}

/// The two runs made the same model (every weight within 1e-5) with the same logged losses
/// (within 1e-6) at the same steps.
fn assert_same_training(one: &Path, two: &Path) {
    let diff = max_abs_diff(&weights(one), &weights(two));
    eprintln!("{}: max abs weight difference {diff:e}", two.display());
    assert!(diff <= 1e-5, "{}: weights differ by {diff}", two.display());
    let (a, b) = (losses(one), losses(two));
    assert!(!a.is_empty());
    assert_eq!(a.iter().map(|l| l.0).collect::<Vec<_>>(), b.iter().map(|l| l.0).collect::<Vec<_>>());
    for ((step, x), (_, y)) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-6, "step {step}: loss {x} vs {y}");
    }
}

/// Both Meta-KD student stages (tiny random BERTs: a 2-layer meta-teacher, a 1-layer student,
/// genre books): 2 workers with micro-batch 4 train the model of 1 worker with micro-batch 8,
/// stage first's teacher-guided loss with its instance weights and stage second's soft
/// cross-entropy with its evaluation on the genre's rows alike.
#[test]
fn meta_kd_student_stages_with_two_workers_train_the_model_of_one_worker() {
    let t = metakd::tables(|i| i % 4);
    let teacher = t.root.join("teacher");
    let udp = format!(
        "pretrain_model_name_or_path={} use_sample_weights=True use_domain_loss=True domain_loss_weight=0.5",
        tiny_bert(&t.root.join("bert2"), 2, true).display()
    );
    ok(easynlp_owned(&metakd::train_args(&t, &teacher, &["--epoch_num=0.5", "--micro_batch_size=16"], &udp)));
    let student = tiny_bert(&t.root.join("bert1"), 1, true);
    let run = |name: &str, model: &Path, stage: &str, workers: usize| -> PathBuf {
        let dir = t.root.join(name);
        let udp = format!(
            "pretrain_model_name_or_path={} teacher_model_path={} domain_loss_weight=0.5 distill_stage={stage} \
             genre=books T=2",
            model.display(),
            teacher.display()
        );
        let flags = [format!("--worker_gpu={workers}"), format!("--micro_batch_size={}", 8 / workers)];
        let extra: Vec<&str> = ["--epoch_num=2"].into_iter().chain(flags.iter().map(String::as_str)).collect();
        let log = ok(easynlp_owned(&metakd::train_args(&t, &dir, &extra, &udp)));
        assert!(log.contains(&format!("stage {stage}: genre books")), "{log}");
        dir
    };
    let first = run("first1", &student, "first", 1);
    assert_same_training(&first, &run("first2", &student, "first", 2));
    let second = run("second1", &first, "second", 1);
    let second2 = run("second2", &first, "second", 2);
    assert_same_training(&second, &second2);
    let state = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("latest/trainer_state.json")).unwrap()).unwrap()
    };
    assert_eq!(state(&second)["best_accuracy"], state(&second2)["best_accuracy"]);
}

/// `--mode=predict --output_schema=logits` with 2 workers writes the file (and its sidecar) of
/// one worker, byte for byte; so does evaluate its metrics.
#[test]
fn predict_and_evaluate_with_two_workers_match_one_worker_byte_for_byte() {
    let Some(f) = fixture("predict_and_evaluate_with_two_workers_match_one_worker_byte_for_byte", 64) else {
        return;
    };
    let ckpt = f.tmp.path().join("ckpt");
    ok(easynlp_owned(&f.train_args(&ckpt, &["--epoch_num=0.25", "--micro_batch_size=16"])));
    let predict = |workers: &str, out: &Path| {
        let args: Vec<String> = vec![
            "--mode=predict".into(),
            format!("--tables={}", f.dev.display()),
            "--input_schema=sent:str:1,label:str:1".into(),
            "--first_sequence=sent".into(),
            format!("--checkpoint_dir={}", ckpt.display()),
            format!("--outputs={}", out.display()),
            "--output_schema=logits".into(),
            "--micro_batch_size=8".into(),
            "--predict_slice_size=40".into(),
            "--sequence_length=64".into(),
            format!("--worker_gpu={workers}"),
        ];
        ok(easynlp_owned(&args));
    };
    let (a, b) = (f.tmp.path().join("one.tsv"), f.tmp.path().join("two.tsv"));
    predict("1", &a);
    predict("2", &b);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(std::fs::read_to_string(&a).unwrap().lines().count(), 64);
    let side = |p: &Path| std::fs::read(format!("{}.meta.json", p.display())).unwrap();
    assert_eq!(side(&a), side(&b));
    let evaluate = |workers: &str, out: &Path| {
        let args: Vec<String> = vec![
            "--mode=evaluate".into(),
            format!("--tables={}", f.dev.display()),
            "--input_schema=sent:str:1,label:str:1".into(),
            "--first_sequence=sent".into(),
            "--label_name=label".into(),
            format!("--checkpoint_dir={}", ckpt.display()),
            format!("--outputs={}", out.display()),
            "--micro_batch_size=8".into(),
            "--sequence_length=64".into(),
            format!("--worker_gpu={workers}"),
        ];
        ok(easynlp_owned(&args));
    };
    let (a, b) = (f.tmp.path().join("one.json"), f.tmp.path().join("two.json"));
    evaluate("1", &a);
    evaluate("2", &b);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

/// The processes of one job: the `easynlp` ranks whose environment carries `tag`, by MPI rank.
fn ranks_tagged(tag: &str) -> HashMap<usize, i32> {
    let mut ranks = HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else { continue };
        let vars: Vec<String> = env.split(|&b| b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        if !vars.iter().any(|v| v == &format!("EASYNLP_TEST_TAG={tag}")) {
            continue;
        }
        if let Some(rank) = vars.iter().find_map(|v| v.strip_prefix("OMPI_COMM_WORLD_RANK=")) {
            ranks.insert(rank.parse().unwrap(), pid);
        }
    }
    ranks
}

/// Killing one worker mid-training ends the job within 10 s with a non-zero status naming the
/// rank; the checkpoint directory holds the previous complete checkpoint. A saved state of 2
/// workers then continues with 2 and is refused with 1.
#[test]
fn a_killed_worker_ends_the_job_and_the_saved_state_needs_as_many_workers() {
    let Some(f) = fixture("a_killed_worker_ends_the_job_and_the_saved_state_needs_as_many_workers", 256) else {
        return;
    };
    let ckpt = f.tmp.path().join("ckpt");
    let args =
        f.train_args(&ckpt, &["--worker_gpu=2", "--micro_batch_size=8", "--epoch_num=1", "--save_checkpoint_steps=2"]);
    let tag = format!("kill-{}", std::process::id());
    let mut child = Command::new(env!("CARGO_BIN_EXE_easynlp"))
        .args(&args)
        .env("EASYNLP_TEST_TAG", &tag)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !ckpt.join("latest/trainer_state.json").is_file() {
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint within 2 minutes");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before its first checkpoint");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ranks = ranks_tagged(&tag);
    let victim = *ranks.get(&1).unwrap_or_else(|| panic!("rank 1 not found among {ranks:?}"));
    // SAFETY: a plain kill(2) of a process id this test found by its environment.
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
    let killed = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(killed.elapsed() < Duration::from_secs(10), "the job still runs 10 s after a worker was killed");
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = killed.elapsed();
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    eprintln!("the job ended {took:?} after rank 1 was killed");
    assert!(!status.success(), "{log}");
    assert!(log.contains("rank 1"), "the message names the rank:\n{log}");
    // The previous complete checkpoint: loadable weights and state, no temporary left.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("latest/trainer_state.json")).unwrap()).unwrap();
    let step = state["global_step"].as_u64().unwrap();
    assert!(step >= 2 && step.is_multiple_of(2), "{state}");
    assert_eq!(weights(&ckpt).len(), weights(&ckpt.join("latest")).len());
    let leftovers: Vec<_> = std::fs::read_dir(f.tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Resume: another number of workers is refused before anything is written...
    let other = f.tmp.path().join("other");
    let mut one =
        f.train_args(&other, &["--worker_gpu=1", "--micro_batch_size=8", "--epoch_num=1", "--save_checkpoint_steps=2"]);
    one.push(format!("--resume_from_checkpoint={}", ckpt.display()));
    let err = common::assert_failed_with(&easynlp_owned(&one), &["run of 2 worker(s); this run has 1"]);
    assert!(!other.exists(), "{err}");
    // ... and as many continue (here through mpirun -np 2, to the end).
    let mut two = args.clone();
    two.push(format!("--resume_from_checkpoint={}", ckpt.display()));
    let log = ok(mpirun(2, &two));
    assert!(log.contains(&format!("resumed at optimizer step {step}")), "{log}");
}
