//! Models by name from a Hugging Face Hub: a real HTTP server on 127.0.0.1 serves the shared
//! models under the Hub's URL layout, `HF_ENDPOINT` points at it, and each test counts what was
//! asked of it.

mod common;

use common::hub_server::{Fault, HubServer};
use common::{assert_failed_with, sentiment_train_args, stderr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The Hugging Face variables a developer's shell may hold; every run here sets its own.
const HF_VARS: &[&str] = &[
    "HF_ENDPOINT",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_TOKEN",
    "HF_TOKEN_PATH",
    "HF_HUB_OFFLINE",
    "HF_HUB_DOWNLOAD_TIMEOUT",
    "XDG_CACHE_HOME",
    "EASYNLP_MODELZOO",
];

/// `easynlp args` against `endpoint` with the Hugging Face home `hf_home` and `env` on top.
fn run(endpoint: &str, hf_home: &Path, args: &[String], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_easynlp"));
    for v in HF_VARS {
        cmd.env_remove(v);
    }
    cmd.env("HF_ENDPOINT", endpoint).env("HF_HOME", hf_home).env("EASYNLP_MODELZOO", hf_home.join("no-zoo"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args).output().unwrap()
}

fn train_args(model: &str, ckpt: &Path) -> Vec<String> {
    sentiment_train_args(Path::new(model), ckpt)
}

/// A server holding the shared minilm-l3 as `repo_id`.
fn serving_minilm_l3(test: &str, repo_id: &str) -> Option<(HubServer, PathBuf)> {
    let shared = common::shared_dir(test)?;
    let server = HubServer::start();
    let dir = shared.join("models/minilm-l3");
    server.serve_dir(repo_id, &dir);
    Some((server, dir))
}

fn weights_requests(server: &HubServer, repo_id: &str) -> usize {
    let path = format!("/{repo_id}/resolve/main/model.safetensors");
    server.seen().iter().filter(|s| s.path == path && s.range.as_deref() != Some("bytes=0-0")).count()
}

#[test]
fn a_hub_id_downloads_trains_and_the_second_run_makes_no_request() {
    let Some((server, dir)) = serving_minilm_l3("hub download", "easynlp-test/minilm-l3") else { return };
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = run(&server.endpoint, home.path(), &train_args("easynlp-test/minilm-l3", &work.path().join("a")), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = server.seen().len();
    eprintln!("first run: {first} requests: {:?}", server.seen().iter().map(|s| &s.path).collect::<Vec<_>>());
    assert!(first >= 4, "{:?}", server.seen());
    assert_eq!(weights_requests(&server, "easynlp-test/minilm-l3"), 1);
    // Only the files a BERT needs: no tokenizer.json, special_tokens_map.json.
    assert!(server
        .seen()
        .iter()
        .all(|s| !s.path.ends_with("tokenizer.json") && !s.path.ends_with("special_tokens_map.json")));
    let snapshot = home.path().join("hub/models--easynlp-test--minilm-l3/snapshots");
    let commit = std::fs::read_dir(&snapshot).unwrap().next().unwrap().unwrap().path();
    for f in ["config.json", "vocab.txt", "tokenizer_config.json", "model.safetensors"] {
        assert_eq!(std::fs::read(commit.join(f)).unwrap(), std::fs::read(dir.join(f)).unwrap(), "{f}");
    }
    assert!(std::fs::read_dir(home.path().join("hub/models--easynlp-test--minilm-l3/blobs")).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".part")));

    let out = run(&server.endpoint, home.path(), &train_args("easynlp-test/minilm-l3", &work.path().join("b")), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server.seen().len(), first, "the second run asked the server: {:?}", &server.seen()[first..]);
    assert!(stderr(&out).contains("using the cached copy"), "{}", stderr(&out));
    // Both runs started from the same weights: the same seed gives the same model.
    let a = std::fs::read(work.path().join("a/model.safetensors")).unwrap();
    assert_eq!(a, std::fs::read(work.path().join("b/model.safetensors")).unwrap());

    // Offline with that cache: works, and still asks nothing.
    let out = run(
        &server.endpoint,
        home.path(),
        &train_args("easynlp-test/minilm-l3", &work.path().join("c")),
        &[("HF_HUB_OFFLINE", "1")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server.seen().len(), first);
}

#[test]
fn offline_with_an_empty_cache_is_a_clear_error_without_a_request() {
    let Some((server, _)) = serving_minilm_l3("hub offline", "easynlp-test/minilm-l3") else { return };
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let args = train_args("bert-tiny-uncased", &work.path().join("a"));
    let out = run(&server.endpoint, home.path(), &args, &[("HF_HUB_OFFLINE", "1")]);
    assert_failed_with(&out, &["google/bert_uncased_L-2_H-128_A-2@main", "HF_HUB_OFFLINE", "model directory"]);
    assert!(server.seen().is_empty(), "{:?}", server.seen());
    assert!(!work.path().join("a").exists());
}

#[test]
fn easynlp_names_resolve_to_their_mapped_repositories() {
    let Some((server, _)) = serving_minilm_l3("hub names", "google/bert_uncased_L-2_H-128_A-2") else { return };
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = run(&server.endpoint, home.path(), &train_args("bert-tiny-uncased", &work.path().join("a")), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        server.seen().iter().any(|s| s.path == "/google/bert_uncased_L-2_H-128_A-2/resolve/main/config.json"),
        "{:?}",
        server.seen()
    );
    // A revision after `@` is the one asked for.
    let out = run(&server.endpoint, home.path(), &train_args("bert-tiny-uncased@v2", &work.path().join("b")), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(server.seen().iter().any(|s| s.path == "/google/bert_uncased_L-2_H-128_A-2/resolve/v2/config.json"));
}

#[test]
fn a_truncated_download_is_resumed_and_a_corrupted_one_is_never_loaded() {
    let repo = "easynlp-test/minilm-l3";
    let Some((server, _)) = serving_minilm_l3("hub faults", repo) else { return };
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();

    // The connection drops half-way: the client resumes from where it stopped (a Range request).
    server.fault_once(repo, "model.safetensors", Fault::Truncate);
    let out = run(&server.endpoint, home.path(), &train_args(repo, &work.path().join("a")), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let resumed = server.seen().iter().any(|s| {
        s.path.ends_with("/model.safetensors")
            && s.range.as_deref().is_some_and(|r| r != "bytes=0-0" && r != "bytes=0-")
    });
    assert!(resumed, "no resumed range request: {:?}", server.seen());

    // A corrupted body: refused by its SHA-256, removed from the cache, nothing trained.
    let home = tempfile::tempdir().unwrap();
    server.fault_once(repo, "model.safetensors", Fault::Corrupt);
    let out = run(&server.endpoint, home.path(), &train_args(repo, &work.path().join("b")), &[]);
    assert_failed_with(&out, &["model.safetensors", "corrupt", "run again"]);
    assert!(!work.path().join("b/model.safetensors").exists());
    let blobs = home.path().join("hub/models--easynlp-test--minilm-l3/blobs");
    let sizes: Vec<u64> = std::fs::read_dir(&blobs).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).collect();
    assert!(sizes.iter().all(|&n| n < 1_000_000), "a corrupt weights blob stayed in the cache: {sizes:?}");
    // The next run downloads it afresh and trains.
    let out = run(&server.endpoint, home.path(), &train_args(repo, &work.path().join("b")), &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A cached blob damaged on disk later is caught before it is loaded.
    let blob = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::metadata(p).unwrap().len() > 1_000_000)
        .unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let out = run(&server.endpoint, home.path(), &train_args(repo, &work.path().join("c")), &[("HF_HUB_OFFLINE", "1")]);
    assert_failed_with(&out, &["corrupt"]);
}

#[test]
fn unreachable_missing_stalled_and_foreign_repositories_are_clear_errors() {
    let Some((server, dir)) = serving_minilm_l3("hub errors", "easynlp-test/minilm-l3") else { return };
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let ckpt = work.path().join("x");

    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let out = run(&format!("http://{closed}"), home.path(), &train_args("bert-base-uncased", &ckpt), &[]);
    assert_failed_with(&out, &["google-bert/bert-base-uncased", "cannot reach", "HF_HUB_OFFLINE"]);

    // No such repository.
    let out = run(&server.endpoint, home.path(), &train_args("nobody/nothing", &ckpt), &[]);
    assert_failed_with(&out, &["no repository `nobody/nothing`", &server.endpoint]);

    // A repository that is not a BERT: refused from its config, before any weights.
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config["model_type"] = "gpt2".into();
    server.serve_dir("someone/gpt", &dir);
    server.serve_file("someone/gpt", "config.json", config.to_string().into_bytes());
    let out = run(&server.endpoint, home.path(), &train_args("someone/gpt", &ckpt), &[]);
    assert_failed_with(&out, &["`gpt2` model", "not a BERT"]);
    assert_eq!(weights_requests(&server, "someone/gpt"), 0);

    // A repository without weights names the files it looked for.
    server.serve_dir("someone/no-weights", &dir);
    server.remove_file("someone/no-weights", "model.safetensors");
    let out = run(&server.endpoint, home.path(), &train_args("someone/no-weights", &ckpt), &[]);
    assert_failed_with(&out, &["model.safetensors or pytorch_model.bin"]);

    // A server that never answers: given up after HF_HUB_DOWNLOAD_TIMEOUT, not a hang.
    server.fault_once("easynlp-test/minilm-l3", "model.safetensors", Fault::Stall);
    let started = std::time::Instant::now();
    let out = run(
        &server.endpoint,
        home.path(),
        &train_args("easynlp-test/minilm-l3", &ckpt),
        &[("HF_HUB_DOWNLOAD_TIMEOUT", "2")],
    );
    assert_failed_with(&out, &["no data from", "model.safetensors", "HF_HUB_DOWNLOAD_TIMEOUT"]);
    assert!(started.elapsed().as_secs() < 30, "took {:?}", started.elapsed());
    assert!(!ckpt.exists());
}

#[test]
fn hf_token_is_sent() {
    let Some((server, _)) = serving_minilm_l3("hub token", "easynlp-test/minilm-l3") else { return };
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let args = train_args("easynlp-test/minilm-l3", &work.path().join("a"));
    let out = run(&server.endpoint, home.path(), &args, &[("HF_TOKEN", "hf_test_token")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(server.seen().iter().all(|s| s.authorization.as_deref() == Some("Bearer hf_test_token")));
}

#[test]
fn a_full_disk_is_a_clear_error() {
    let Some((server, _)) = serving_minilm_l3("hub full disk", "easynlp-test/minilm-l3") else { return };
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let small = home.path().join("small");
    std::fs::create_dir(&small).unwrap();
    // A 4 MiB file system in a private mount namespace (as root, or as a mapped root user):
    // room for the small files, not for the 69 MB of weights.
    let script = r#"mount -t tmpfs -o size=4m tmpfs "$1" && shift && exec "$@""#;
    let mut args: Vec<String> = ["--mount", "--propagation", "private"].iter().map(|s| s.to_string()).collect();
    if is_not_root() {
        args.insert(0, "--map-root-user".into());
        args.insert(0, "--user".into());
    }
    let mut cmd = Command::new("unshare");
    cmd.args(&args).args(["sh", "-c", script, "sh"]).arg(&small).arg(env!("CARGO_BIN_EXE_easynlp"));
    cmd.args(train_args("easynlp-test/minilm-l3", &work.path().join("a")));
    for v in HF_VARS {
        cmd.env_remove(v);
    }
    cmd.env("HF_ENDPOINT", &server.endpoint).env("HF_HOME", &small);
    let out = cmd.output().unwrap();
    assert_failed_with(&out, &["no space left", "model.safetensors", "HF_HOME"]);
}

/// Whether this process runs as a user other than root (then the mount needs a user namespace).
fn is_not_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) != 0).unwrap_or(true)
}

/// A repository as old Hub uploads are: `pytorch_model.bin` only, `vocab.txt` without
/// `tokenizer_config.json`. The files it lacks are remembered, so the second run asks nothing;
/// the model trained from it is the one trained from the same weights as safetensors.
#[test]
fn a_pytorch_bin_vocab_only_repository_trains_like_its_safetensors_twin() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pytorch_bin");
    let server = HubServer::start();
    server.serve_dir("old/tiny-bin", &fixtures.join("bin"));
    server.serve_dir("new/tiny-st", &fixtures.join("safetensors"));
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = run(&server.endpoint, home.path(), &train_args("old/tiny-bin", &work.path().join("bin")), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let asked: Vec<String> = server.seen().iter().map(|s| s.path.clone()).collect();
    for file in ["model.safetensors", "pytorch_model.bin", "tokenizer_config.json", "vocab.txt"] {
        assert!(asked.iter().any(|p| p.ends_with(&format!("/old/tiny-bin/resolve/main/{file}"))), "{file}: {asked:?}");
    }
    let first = server.seen().len();
    let out = run(&server.endpoint, home.path(), &train_args("old/tiny-bin", &work.path().join("bin2")), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server.seen().len(), first, "{:?}", &server.seen()[first..]);
    let out = run(&server.endpoint, home.path(), &train_args("new/tiny-st", &work.path().join("st")), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let weights = |d: &str| std::fs::read(work.path().join(d).join("model.safetensors")).unwrap();
    assert_eq!(weights("bin"), weights("st"));
}
