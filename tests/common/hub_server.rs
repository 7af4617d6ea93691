//! A Hugging Face Hub stand-in on 127.0.0.1 for the download tests: it serves model directories
//! under the Hub's URL layout (`/{org}/{name}/resolve/{revision}/{file}`) with the headers the Hub
//! sends (`x-repo-commit`, `etag` = git blob id, `x-linked-etag` = SHA-256 for LFS files,
//! `content-range` for ranges, `x-error-code` on 404), counts every request, and misbehaves on
//! demand (a truncated or corrupted body, a stall).

use sha2::Digest;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// How a response misbehaves, once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Announces the whole length, sends half, closes the connection.
    Truncate,
    /// Sends the whole length with one byte changed.
    Corrupt,
    /// Reads the request and never answers.
    Stall,
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The request path.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

struct Served {
    bytes: Arc<Vec<u8>>,
    etag: String,
    lfs: bool,
}

#[derive(Default)]
struct State {
    /// repo id -> (commit, file name -> file)
    repos: HashMap<String, (String, HashMap<String, Served>)>,
    faults: Vec<(String, String, Fault)>,
    seen: Vec<Seen>,
}

/// The running server; it stops with the test process.
pub struct HubServer {
    /// `http://127.0.0.1:PORT`, for `HF_ENDPOINT`.
    pub endpoint: String,
    state: Arc<Mutex<State>>,
}

impl HubServer {
    /// Starts a server with no repositories.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || handle(stream, &state));
            }
        });
        HubServer { endpoint, state }
    }

    /// Serves the regular files of `dir` (except PROVENANCE.md) as repository `repo_id`.
    pub fn serve_dir(&self, repo_id: &str, dir: &Path) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().unwrap().is_file() && name != "PROVENANCE.md" {
                self.serve_file(repo_id, &name, std::fs::read(entry.path()).unwrap());
            }
        }
    }

    /// Serves `bytes` as `file` of `repo_id` (weights files as LFS files, like the Hub).
    pub fn serve_file(&self, repo_id: &str, file: &str, bytes: Vec<u8>) {
        let lfs = file.ends_with(".safetensors") || file.ends_with(".bin");
        let etag = if lfs {
            hex(&sha2::Sha256::digest(&bytes))
        } else {
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {}\0", bytes.len()).as_bytes());
            h.update(&bytes);
            hex(&h.finalize())
        };
        let mut state = self.state.lock().unwrap();
        let commit = hex(&sha1::Sha1::digest(repo_id.as_bytes()));
        let repo = state.repos.entry(repo_id.to_string()).or_insert_with(|| (commit, HashMap::new()));
        repo.1.insert(file.to_string(), Served { bytes: Arc::new(bytes), etag, lfs });
    }

    /// Stops serving `file` of `repo_id`.
    pub fn remove_file(&self, repo_id: &str, file: &str) {
        self.state.lock().unwrap().repos.get_mut(repo_id).unwrap().1.remove(file);
    }

    /// The next full download (not the `bytes=0-0` probe) of `file` in `repo_id` misbehaves.
    pub fn fault_once(&self, repo_id: &str, file: &str, fault: Fault) {
        self.state.lock().unwrap().faults.push((repo_id.to_string(), file.to_string(), fault));
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn handle(mut stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.trim_end().split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let range = headers.get("range").cloned();
    let mut st = state.lock().unwrap();
    st.seen.push(Seen {
        path: path.clone(),
        range: range.clone(),
        authorization: headers.get("authorization").cloned(),
    });
    // /{org}/{name}/resolve/{revision}/{file}
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    let (repo_id, file) = match parts.as_slice() {
        [org, name, "resolve", _rev, file] => (format!("{org}/{name}"), file.to_string()),
        _ => return respond(&mut stream, "404 Not Found", &[("x-error-code", "RepoNotFound".into())], b""),
    };
    let Some((commit, files)) = st.repos.get(&repo_id) else {
        return respond(&mut stream, "404 Not Found", &[("x-error-code", "RepoNotFound".into())], b"");
    };
    let commit = commit.clone();
    let Some(served) = files.get(&file) else {
        let h = [("x-error-code", "EntryNotFound".to_string()), ("x-repo-commit", commit)];
        return respond(&mut stream, "404 Not Found", &h, b"");
    };
    let (bytes, etag, lfs) = (served.bytes.clone(), served.etag.clone(), served.lfs);
    let probe = range.as_deref() == Some("bytes=0-0");
    let fault = if probe {
        None
    } else {
        let at = st.faults.iter().position(|(r, f, _)| *r == repo_id && *f == file);
        at.map(|i| st.faults.remove(i).2)
    };
    drop(st);
    if fault == Some(Fault::Stall) {
        std::thread::sleep(std::time::Duration::from_secs(3600));
        return;
    }
    let total = bytes.len();
    let start: usize = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let end = if probe { 0 } else { total.saturating_sub(1) };
    let mut body = bytes[start.min(total)..(end + 1).min(total)].to_vec();
    let mut h = vec![("x-repo-commit", commit), ("accept-ranges", "bytes".to_string())];
    h.push((if lfs { "x-linked-etag" } else { "etag" }, format!("\"{etag}\"")));
    let status = if range.is_some() {
        h.push(("content-range", format!("bytes {start}-{end}/{total}")));
        "206 Partial Content"
    } else {
        "200 OK"
    };
    match fault {
        Some(Fault::Corrupt) => {
            let mid = body.len() / 2;
            body[mid] ^= 0x55;
            respond(&mut stream, status, &h, &body)
        }
        Some(Fault::Truncate) => {
            let head = head(status, &h, body.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body[..body.len() / 2]);
            let _ = stream.flush();
        }
        _ => respond(&mut stream, status, &h, &body),
    }
}

fn head(status: &str, headers: &[(&str, String)], len: usize) -> String {
    let mut head = format!("HTTP/1.1 {status}\r\ncontent-length: {len}\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head + "\r\n"
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let _ = stream.write_all(head(status, headers, body.len()).as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}
