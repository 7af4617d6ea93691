//! Models fetched from the Hugging Face Hub: EasyNLP's model names and `org/name[@revision]` ids,
//! downloaded by the `hf-hub` client into the standard cache, only the files a BERT needs, each
//! checked against the size and hash the Hub gives before it is used.
//!
//! Environment, as Hugging Face's own tools read it: `HF_ENDPOINT` (a mirror), `HF_TOKEN`,
//! `HF_HUB_OFFLINE` (the cache only, never the network), `HF_HUB_CACHE` / `HF_HOME` (the cache
//! folder), `HF_HUB_DOWNLOAD_TIMEOUT` (seconds without data before a download is given up).

use crate::logging;
use anyhow::{anyhow, bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::api::Progress;
use hf_hub::{Repo, RepoType};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::Digest;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// EasyNLP's model names and the public Hub repositories that hold them.
pub const EASYNLP_MODELS: &[(&str, &str)] = &[
    ("bert-base-uncased", "google-bert/bert-base-uncased"),
    ("bert-large-uncased", "google-bert/bert-large-uncased"),
    ("bert-small-uncased", "google/bert_uncased_L-4_H-512_A-8"),
    ("bert-tiny-uncased", "google/bert_uncased_L-2_H-128_A-2"),
    ("bert-base-chinese", "google-bert/bert-base-chinese"),
];

/// A model on the Hub: a repository id and a revision (branch, tag or commit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubModel {
    /// `org/name`.
    pub repo_id: String,
    /// `main` unless given as `@revision`.
    pub revision: String,
}

impl HubModel {
    /// One of EasyNLP's names, or an `org/name` id with an optional `@revision`; None otherwise.
    pub fn parse(name: &str) -> Option<Self> {
        let (id, revision) = match name.split_once('@') {
            Some((id, rev)) if !rev.is_empty() && !rev.chars().any(char::is_whitespace) => (id, rev),
            Some(_) => return None,
            None => (name, "main"),
        };
        let repo_id = match EASYNLP_MODELS.iter().find(|(n, _)| *n == id) {
            Some((_, repo)) => repo,
            None if is_repo_id(id) => id,
            None => return None,
        };
        Some(HubModel { repo_id: repo_id.to_string(), revision: revision.to_string() })
    }
}

impl std::fmt::Display for HubModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.repo_id, self.revision)
    }
}

/// `org/name` as the Hub allows them: letters, digits, `.`, `_`, `-`; no `--` or `..`.
fn is_repo_id(id: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            && p.starts_with(|c: char| c.is_ascii_alphanumeric())
            && !p.contains("--")
            && !p.contains("..")
    };
    matches!(id.split_once('/'), Some((org, name)) if part(org) && part(name))
}

/// Where and how to reach the Hub, from the environment.
#[derive(Clone, Debug)]
pub struct HubSettings {
    /// `HF_ENDPOINT`, else `https://huggingface.co`.
    pub endpoint: String,
    /// `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
    /// `~/.cache/huggingface/hub`.
    pub cache: PathBuf,
    /// `HF_TOKEN`, else the token file `huggingface-cli login` writes.
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE`: the cache only.
    pub offline: bool,
    /// `HF_HUB_DOWNLOAD_TIMEOUT` (default 10 s): how long a request may go without data.
    pub timeout: Duration,
}

impl HubSettings {
    /// Reads the settings from the environment.
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let home = || var("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| home().join(".cache")).join("huggingface")
        });
        let cache = var("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| hf_home.join("hub"));
        let token_file = var("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| hf_home.join("token"));
        let token = var("HF_TOKEN").or_else(|| {
            std::fs::read_to_string(token_file).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
        });
        let offline = match var("HF_HUB_OFFLINE").map(|v| v.trim().to_ascii_lowercase()) {
            None => false,
            Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => true,
            Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => false,
            Some(v) => bail!("HF_HUB_OFFLINE={v}: expected 1 or 0 (true/false, yes/no, on/off)"),
        };
        let timeout = match var("HF_HUB_DOWNLOAD_TIMEOUT") {
            None => Duration::from_secs(10),
            Some(v) => match v.trim().parse::<f64>() {
                Ok(s) if s > 0.0 && s.is_finite() => Duration::from_secs_f64(s),
                _ => bail!("HF_HUB_DOWNLOAD_TIMEOUT={v}: expected a number of seconds > 0"),
            },
        };
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into());
        Ok(HubSettings { endpoint: endpoint.trim_end_matches('/').to_string(), cache, token, offline, timeout })
    }
}

/// The files a BERT needs, in the order they are fetched: each the first of its alternatives
/// that the repository has.
const WANTED: &[(&[&str], bool)] = &[
    (&["config.json"], true),
    (&["vocab.txt", "tokenizer.json"], true),
    (&["tokenizer_config.json"], false),
    (&["model.safetensors", "pytorch_model.bin"], true),
];

/// The local directory of `model`: its cached snapshot when that holds every file a BERT needs
/// (no request is made), else downloaded from the Hub (never when offline).
pub fn fetch(model: &HubModel, settings: &HubSettings) -> Result<PathBuf> {
    let cache = CachedRepo::new(model, &settings.cache);
    if let Some((dir, files)) = cache.complete_snapshot() {
        for path in &files {
            let file = path.file_name().unwrap_or_default().to_string_lossy();
            verify(path, None).with_context(|| format!("{model}: the cached {file}"))?;
        }
        logging::info(format!("{model}: using the cached copy {}", dir.display()));
        return Ok(dir);
    }
    if settings.offline {
        bail!(
            "{model} is not (completely) in the Hugging Face cache {} and HF_HUB_OFFLINE is set, so it is not \
             downloaded: run once with the network (unset HF_HUB_OFFLINE), or pass a model directory",
            settings.cache.display()
        );
    }
    logging::info(format!(
        "{model}: downloading from {} into {} (HF_HUB_OFFLINE=1 uses the cache only)",
        settings.endpoint,
        settings.cache.display()
    ));
    download_watched(model, settings)
}

/// [`download`] on a worker thread, given up when no data has arrived for the timeout (the HTTP
/// client has no read timeout of its own, and a stalled server must not hang the run).
fn download_watched(model: &HubModel, settings: &HubSettings) -> Result<PathBuf> {
    let watch = Watch::default();
    let (send, receive) = mpsc::channel();
    let (m, s, w) = (model.clone(), settings.clone(), watch.clone());
    std::thread::spawn(move || {
        let _ = send.send(download(&m, &s, &w));
    });
    loop {
        match receive.recv_timeout(Duration::from_millis(200)) {
            Ok(result) => return result,
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("{model}: the download thread stopped"),
            Err(mpsc::RecvTimeoutError::Timeout) if watch.idle() > settings.timeout => bail!(
                "{model}: no data from {} for {:.0} s while fetching {} (HF_HUB_DOWNLOAD_TIMEOUT); check the \
                 network or HF_ENDPOINT, set HF_HUB_OFFLINE=1 to use the cache only, or pass a model directory \
                 (a partial download is resumed next time)",
                settings.endpoint,
                settings.timeout.as_secs_f64(),
                watch.file()
            ),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Downloads what the cache lacks, file by file, and returns the snapshot directory.
fn download(model: &HubModel, settings: &HubSettings, watch: &Watch) -> Result<PathBuf> {
    let api = ApiBuilder::new()
        .with_cache_dir(settings.cache.clone())
        .with_endpoint(settings.endpoint.clone())
        .with_token(settings.token.clone())
        .with_progress(false)
        .with_retries(3)
        .with_user_agent("easynlp-rs", env!("CARGO_PKG_VERSION"))
        .build()
        .map_err(|e| anyhow!("{model}: cannot set up the Hub client: {e}"))?;
    let repo = api.repo(Repo::with_revision(model.repo_id.clone(), RepoType::Model, model.revision.clone()));
    let cache = CachedRepo::new(model, &settings.cache);
    for (alternatives, required) in WANTED {
        let mut found = None;
        for file in *alternatives {
            let path = match cache.commit().map(|c| cache.lookup(&c, file)) {
                Some(Cached::Present(path)) => {
                    verify(&path, None).with_context(|| format!("{model}: {file}"))?;
                    path
                }
                Some(Cached::Absent) => continue,
                _ => match download_file(&repo, file, watch) {
                    Ok(path) => {
                        verify(&path, Some(watch.size())).with_context(|| format!("{model}: {file}"))?;
                        path
                    }
                    Err(e) if e.entry_not_found() => {
                        if let Some(c) = cache.commit() {
                            cache.mark_absent(&c, file)?;
                        }
                        continue;
                    }
                    Err(e) => return Err(e.explain(model, settings, file)),
                },
            };
            found = Some((file, path));
            break;
        }
        match found {
            Some((&"config.json", path)) => check_is_bert(&path, model)?,
            Some(_) => {}
            None if *required => bail!(
                "{model}: the repository on {} has no {} (is it a BERT model repository?)",
                settings.endpoint,
                alternatives.join(" or ")
            ),
            None => {}
        }
    }
    // Every file was verified above: the snapshot only needs to be complete.
    let (dir, _) =
        cache.complete_snapshot().with_context(|| format!("{model}: the download left an incomplete cache entry"))?;
    Ok(dir)
}

/// One file through `hf-hub` (resuming a `.part` left by an earlier attempt).
fn download_file(repo: &ApiRepo, file: &str, watch: &Watch) -> std::result::Result<PathBuf, HubError> {
    watch.start(file);
    repo.download_with_progress(file, watch.clone()).map_err(HubError)
}

/// Refuses a repository whose `config.json` names another architecture, before any weights.
fn check_is_bert(config: &Path, model: &HubModel) -> Result<()> {
    let text = std::fs::read_to_string(config).with_context(|| format!("{model}: cannot read {}", config.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{model}: config.json is not JSON"))?;
    match json.get("model_type").and_then(|t| t.as_str()) {
        None | Some("bert") => Ok(()),
        Some(other) => bail!(
            "{model} is a `{other}` model (config.json model_type), not a BERT: easynlp fine-tunes and distils \
             BERT encoders"
        ),
    }
}

/// Checks a downloaded or cached file against what the Hub said: its size when known, and the
/// hash its cache name carries (SHA-256 for LFS files, the git blob SHA-1 for others). A file
/// that fails is removed from the cache, so the next run downloads it afresh.
fn verify(pointer: &Path, expected_size: Option<u64>) -> Result<()> {
    let blob = std::fs::canonicalize(pointer).with_context(|| format!("{}: broken cache entry", pointer.display()))?;
    let etag = blob.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_ascii_lowercase();
    let size = std::fs::metadata(&blob)?.len();
    let problem = if expected_size.is_some_and(|n| n != size) {
        Some(format!("{size} bytes where the server announced {}", expected_size.unwrap_or_default()))
    } else {
        let hex = etag.chars().all(|c| c.is_ascii_hexdigit());
        let got = match etag.len() {
            64 if hex => Some(file_digest(&blob, sha2::Sha256::new(), None)?),
            40 if hex => Some(file_digest(&blob, sha1::Sha1::new(), Some(size))?),
            _ => None,
        };
        got.filter(|g| *g != etag).map(|g| format!("its hash is {g}, the Hub's is {etag}"))
    };
    if let Some(problem) = problem {
        let _ = std::fs::remove_file(&blob);
        let _ = std::fs::remove_file(pointer);
        bail!(
            "the file is corrupt ({problem}); removed it from the cache ({}), run again to download it \
             afresh",
            blob.display()
        );
    }
    Ok(())
}

/// Hex digest of a file; with `git_blob_len`, of git's blob header and the file (a git object id).
fn file_digest<D: Digest>(path: &Path, mut hasher: D, git_blob_len: Option<u64>) -> Result<String> {
    if let Some(len) = git_blob_len {
        hasher.update(format!("blob {len}\0").as_bytes());
    }
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// What the cache knows of a file at a commit.
enum Cached {
    Present(PathBuf),
    /// The repository does not have it (recorded in `.no_exist`, as `huggingface_hub` does).
    Absent,
    Unknown,
}

/// A repository's folder in the Hugging Face cache (`models--org--name/{refs,snapshots,blobs}`).
struct CachedRepo {
    dir: PathBuf,
    revision: String,
}

impl CachedRepo {
    fn new(model: &HubModel, cache: &Path) -> Self {
        let folder = Repo::with_revision(model.repo_id.clone(), RepoType::Model, model.revision.clone()).folder_name();
        CachedRepo { dir: cache.join(folder), revision: model.revision.clone() }
    }

    /// The commit the revision points at in the cache.
    fn commit(&self) -> Option<String> {
        let from_ref = std::fs::read_to_string(self.dir.join("refs").join(&self.revision)).ok();
        let commit = from_ref.map(|c| c.trim().to_string()).filter(|c| !c.is_empty());
        let is_commit = self.revision.len() == 40 && self.revision.chars().all(|c| c.is_ascii_hexdigit());
        commit.or_else(|| is_commit.then(|| self.revision.clone()))
    }

    fn snapshot(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }

    fn lookup(&self, commit: &str, file: &str) -> Cached {
        let path = self.snapshot(commit).join(file);
        if path.exists() {
            Cached::Present(path)
        } else if self.dir.join(".no_exist").join(commit).join(file).exists() {
            Cached::Absent
        } else {
            Cached::Unknown
        }
    }

    fn mark_absent(&self, commit: &str, file: &str) -> Result<()> {
        let dir = self.dir.join(".no_exist").join(commit);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(dir.join(file), b"").with_context(|| format!("cannot write {}", dir.join(file).display()))
    }

    /// The snapshot directory and the files present when the cache answers for every wanted
    /// file (the files are not verified here).
    fn complete_snapshot(&self) -> Option<(PathBuf, Vec<PathBuf>)> {
        let commit = self.commit()?;
        let mut present = Vec::new();
        for (alternatives, required) in WANTED {
            let mut answered = false;
            for file in *alternatives {
                match self.lookup(&commit, file) {
                    Cached::Present(path) => {
                        present.push(path);
                        answered = true;
                        break;
                    }
                    Cached::Absent => continue,
                    Cached::Unknown => return None,
                }
            }
            if !answered && *required {
                return None;
            }
        }
        Some((self.snapshot(&commit), present))
    }
}

/// Download activity shared with the watchdog: the file being fetched, its announced size,
/// when data last arrived, and a progress bar on a terminal.
#[derive(Clone, Default)]
struct Watch {
    inner: Arc<WatchState>,
    bar: Option<ProgressBar>,
}

#[derive(Default)]
struct WatchState {
    file: Mutex<String>,
    size: AtomicU64,
    /// Milliseconds since `epoch` at the last sign of life.
    last: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
}

impl Watch {
    fn now(&self) -> u64 {
        self.inner.epoch.get_or_init(Instant::now).elapsed().as_millis() as u64
    }
    fn touch(&self) {
        self.inner.last.store(self.now(), Ordering::Relaxed);
    }
    fn start(&self, file: &str) {
        *self.inner.file.lock().unwrap_or_else(|e| e.into_inner()) = file.to_string();
        self.inner.size.store(0, Ordering::Relaxed);
        self.touch();
    }
    fn idle(&self) -> Duration {
        Duration::from_millis(self.now().saturating_sub(self.inner.last.load(Ordering::Relaxed)))
    }
    fn file(&self) -> String {
        self.inner.file.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn size(&self) -> u64 {
        self.inner.size.load(Ordering::Relaxed)
    }
}

impl Progress for Watch {
    fn init(&mut self, size: usize, filename: &str) {
        self.inner.size.store(size as u64, Ordering::Relaxed);
        self.touch();
        if self.bar.is_none() && std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(size as u64).with_message(filename.to_string());
            if let Ok(style) =
                ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            self.bar = Some(bar);
        }
    }
    fn update(&mut self, size: usize) {
        self.touch();
        if let Some(bar) = &self.bar {
            bar.inc(size as u64);
        }
    }
    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// An error of the Hub client, explained for a user.
struct HubError(ApiError);

impl HubError {
    /// The repository answered that it has no such file.
    fn entry_not_found(&self) -> bool {
        match status(&self.0) {
            Some((404, code)) => code.as_deref() != Some("RepoNotFound") && code.as_deref() != Some("RevisionNotFound"),
            _ => false,
        }
    }

    fn explain(self, model: &HubModel, settings: &HubSettings, file: &str) -> anyhow::Error {
        let endpoint = &settings.endpoint;
        let offline_hint = format!(
            "set HF_HUB_OFFLINE=1 to use only the cache {}, use a mirror with HF_ENDPOINT, or pass a model directory",
            settings.cache.display()
        );
        if let Some(io) = io_error(&self.0) {
            if io.raw_os_error() == Some(libc::ENOSPC) || io.kind() == std::io::ErrorKind::StorageFull {
                return anyhow!(
                    "{model}: no space left on the device while downloading {file} into {}: free some space or \
                     point HF_HOME at a larger disk (the partial download is kept and resumed next time)",
                    settings.cache.display()
                );
            }
        }
        if gated(&self.0) {
            return anyhow!(
                "{model}: the repository is gated on {endpoint}: accept its terms on the Hub and set HF_TOKEN"
            );
        }
        match (status(&self.0), transport(&self.0)) {
            (Some((status, Some(code))), _) if code == "RepoNotFound" || status == 401 => {
                anyhow!("{model}: no repository `{}` on {endpoint} (a private one needs HF_TOKEN)", model.repo_id)
            }
            (Some((_, Some(code))), _) if code == "RevisionNotFound" => {
                anyhow!("{model}: `{}` has no revision `{}` on {endpoint}", model.repo_id, model.revision)
            }
            (Some((status, _)), _) => anyhow!("{model}: {endpoint} answered HTTP {status} for {file}"),
            (None, Some(t)) => {
                anyhow!("{model}: cannot reach {endpoint} ({t}); check the network or proxy, or {offline_hint}")
            }
            (None, None) => anyhow!("{model}: fetching {file} from {endpoint} failed: {}", describe(&self.0)),
        }
    }
}

/// The innermost error behind `hf-hub`'s retries.
fn innermost(e: &ApiError) -> &ApiError {
    match e {
        ApiError::TooManyRetries(inner) => innermost(inner),
        other => other,
    }
}

fn status(e: &ApiError) -> Option<(u16, Option<String>)> {
    match innermost(e) {
        ApiError::RequestError(r) => match r.as_ref() {
            ureq::Error::Status(code, response) => Some((*code, response.header("x-error-code").map(str::to_string))),
            ureq::Error::Transport(_) => None,
        },
        _ => None,
    }
}

fn gated(e: &ApiError) -> bool {
    status(e).is_some_and(|(_, code)| code.as_deref() == Some("GatedRepo"))
}

fn transport(e: &ApiError) -> Option<String> {
    match innermost(e) {
        ApiError::RequestError(r) => match r.as_ref() {
            ureq::Error::Transport(t) => Some(t.to_string()),
            ureq::Error::Status(..) => None,
        },
        _ => None,
    }
}

fn io_error(e: &ApiError) -> Option<&std::io::Error> {
    match innermost(e) {
        ApiError::IoError(io) => Some(io),
        _ => None,
    }
}

fn describe(e: &ApiError) -> String {
    match innermost(e) {
        ApiError::MissingHeader(h) => {
            format!("the answer has no `{h}` header (is HF_ENDPOINT a Hugging Face Hub or a mirror of one?)")
        }
        ApiError::InvalidResume => "a partial download is longer than the file; delete the .part file".into(),
        ApiError::LockAcquisition(p) => format!("another process holds the download lock {}", p.display()),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn easynlp_names_and_hub_ids_parse() {
        let m = HubModel::parse("bert-tiny-uncased").unwrap();
        assert_eq!((m.repo_id.as_str(), m.revision.as_str()), ("google/bert_uncased_L-2_H-128_A-2", "main"));
        let m = HubModel::parse("google-bert/bert-base-cased@v1.0").unwrap();
        assert_eq!((m.repo_id.as_str(), m.revision.as_str()), ("google-bert/bert-base-cased", "v1.0"));
        assert_eq!(HubModel::parse("bert-small-uncased@abc").unwrap().revision, "abc");
        for not_hub in ["minilm-l6", "a/b/c", "./x", "/abs", "org/", "/name", "a--b/c", "a/b@", "o/n@a b", "o/-n"] {
            assert_eq!(HubModel::parse(not_hub), None, "{not_hub}");
        }
    }

    #[test]
    fn a_git_blob_id_is_checked_like_git() {
        let dir = tempfile::tempdir().unwrap();
        // `printf 'hello\n' | git hash-object --stdin`
        let blob = dir.path().join("ce013625030ba8dba906f756967f9e9ca394464a");
        std::fs::write(&blob, "hello\n").unwrap();
        verify(&blob, Some(6)).unwrap();
        let bad = dir.path().join("ce013625030ba8dba906f756967f9e9ca394464b");
        std::fs::write(&bad, "hello\n").unwrap();
        let err = format!("{:#}", verify(&bad, None).unwrap_err());
        assert!(err.contains("corrupt") && !bad.exists(), "{err}");
    }

    #[test]
    fn a_short_file_is_refused_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("etag-without-hash");
        std::fs::write(&blob, "abc").unwrap();
        assert!(format!("{:#}", verify(&blob, Some(4)).unwrap_err()).contains("3 bytes where the server announced 4"));
    }
}
