//! Output files (`--outputs` and the logits sidecar): how each kind of path is written, and the
//! refusal to write over a file the run reads.
//!
//! - A regular file, or a path that does not exist yet, is replaced atomically: a temporary sibling
//!   is written, synced, renamed over it and the directory synced, so the output is whole or absent.
//! - A symlink is followed: its final target is replaced that way and the link stays a link.
//! - Anything else that exists (a device, a FIFO) and every path under `/dev/` or `/proc/` is
//!   written through: opened for writing, with no temporary file and no rename. `/dev/stdout`,
//!   `/dev/stderr`, `/dev/fd/1|2` and `/proc/self/fd/1|2` are this process's own stdout/stderr.
//! - A directory is refused.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// Symlink hops followed before giving up (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// How an output path is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Written to a temporary sibling of `target` and renamed over it; `target` is the path with
    /// every symlink resolved.
    Replace {
        /// The regular file (existing or not) that is replaced.
        target: PathBuf,
    },
    /// This process's standard output.
    Stdout,
    /// This process's standard error.
    Stderr,
    /// Opened for writing and written in place (a device, a FIFO, a path under /dev or /proc).
    Through(PathBuf),
}

impl Destination {
    /// Decides how `path` is written; `what` names it in errors (e.g. `--outputs`). Fails for a
    /// directory, a missing parent directory or a symlink loop, before anything is written.
    pub fn resolve(path: &Path, what: &str) -> Result<Self> {
        let directory = || anyhow::anyhow!("{what}: `{}` is a directory; give a file path", path.display());
        let mut current = std::env::current_dir().context("cannot read the current directory")?.join(path);
        for _ in 0..MAX_LINKS {
            // Under /dev or /proc (checked on the normalised path): written through.
            let norm = lexical(&current);
            if let Some(dest) = special(&norm) {
                return if norm.is_dir() { Err(directory()) } else { Ok(dest) };
            }
            let Some(name) = current.file_name().map(|n| n.to_os_string()) else {
                return Err(directory());
            };
            let parent = current.parent().unwrap_or(Path::new("/"));
            let parent = parent.canonicalize().with_context(|| {
                format!("{what}: the directory `{}` of `{}` does not exist", parent.display(), path.display())
            })?;
            let real = parent.join(name);
            if let Some(dest) = special(&real) {
                return if real.is_dir() { Err(directory()) } else { Ok(dest) };
            }
            let meta = match std::fs::symlink_metadata(&real) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Destination::Replace { target: real }),
                Err(e) => return Err(e).with_context(|| format!("{what}: cannot inspect `{}`", real.display())),
            };
            let kind = meta.file_type();
            if kind.is_symlink() {
                let link = std::fs::read_link(&real)
                    .with_context(|| format!("{what}: cannot read the symlink `{}`", real.display()))?;
                current = parent.join(link);
            } else if kind.is_dir() {
                return Err(directory());
            } else if kind.is_file() {
                return Ok(Destination::Replace { target: real });
            } else {
                return Ok(Destination::Through(real));
            }
        }
        bail!("{what}: `{}`: too many levels of symbolic links", path.display())
    }

    /// Whether the output is written in place (no temporary file, no rename).
    pub fn is_through(&self) -> bool {
        !matches!(self, Destination::Replace { .. })
    }
}

/// The destination of a path under /dev or /proc (written through), else None.
fn special(abs: &Path) -> Option<Destination> {
    if !(abs.starts_with("/dev") || abs.starts_with("/proc")) {
        return None;
    }
    let pid = std::process::id().to_string();
    let is_fd = |fd: &str, name: &str| {
        abs == Path::new("/dev").join(name)
            || abs == Path::new("/dev/fd").join(fd)
            || ["self", "thread-self", pid.as_str()]
                .iter()
                .any(|p| abs == Path::new("/proc").join(p).join("fd").join(fd))
    };
    Some(if is_fd("1", "stdout") {
        Destination::Stdout
    } else if is_fd("2", "stderr") {
        Destination::Stderr
    } else {
        Destination::Through(abs.to_path_buf())
    })
}

/// `path` made absolute against the current directory, with `.` and `..` removed lexically.
fn absolute(path: &Path) -> Result<PathBuf> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    Ok(lexical(&cwd.join(path)))
}

/// `.` and `..` removed without looking at the file system.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// An output being written; dropped without [`OutputFile::commit`] (an error, an interruption)
/// it removes its temporary file and leaves the previous output untouched.
pub struct OutputFile {
    sink: BufWriter<Sink>,
    /// The temporary file and the target it replaces, for [`Destination::Replace`].
    replace: Option<(PathBuf, PathBuf)>,
    /// The path as given, for messages.
    shown: PathBuf,
}

enum Sink {
    File(File),
    Stdout(std::io::Stdout),
    Stderr(std::io::Stderr),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::File(f) => f.write(buf),
            Sink::Stdout(s) => s.write(buf),
            Sink::Stderr(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::File(f) => f.flush(),
            Sink::Stdout(s) => s.flush(),
            Sink::Stderr(s) => s.flush(),
        }
    }
}

impl OutputFile {
    /// Opens `dest` (resolved from `path`) for writing: a temporary sibling of the target, or the
    /// write-through path itself.
    pub fn create(path: &Path, dest: &Destination) -> Result<Self> {
        let (sink, replace) = match dest {
            Destination::Replace { target } => {
                remove_stale_temporaries(target);
                let tmp = temp_path(target);
                let file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
                (Sink::File(file), Some((tmp, target.clone())))
            }
            Destination::Stdout => (Sink::Stdout(std::io::stdout()), None),
            Destination::Stderr => (Sink::Stderr(std::io::stderr()), None),
            Destination::Through(p) => {
                let file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(p)
                    .with_context(|| format!("cannot open {} for writing", p.display()))?;
                (Sink::File(file), None)
            }
        };
        Ok(OutputFile { sink: BufWriter::new(sink), replace, shown: path.to_path_buf() })
    }

    /// Finishes the output: flushes it and, for a replaced file, syncs the temporary file, renames
    /// it over the target and syncs the directory.
    pub fn commit(mut self) -> Result<()> {
        let shown = self.shown.display().to_string();
        self.sink.flush().with_context(|| format!("cannot write {shown}"))?;
        let Some((tmp, target)) = self.replace.clone() else {
            return Ok(());
        };
        if let Sink::File(f) = self.sink.get_ref() {
            f.sync_all().with_context(|| format!("cannot sync {}", tmp.display()))?;
        }
        std::fs::rename(&tmp, &target)
            .with_context(|| format!("cannot move {} over {}", tmp.display(), target.display()))?;
        self.replace = None;
        let dir = target.parent().unwrap_or(Path::new("/"));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync the directory {} after writing {shown}", dir.display()))
    }
}

impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sink.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.sink.flush()
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if let Some((tmp, _)) = &self.replace {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// The temporary sibling used while replacing `target`: `.NAME.tmpPID`.
fn temp_path(target: &Path) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    target.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// Removes the temporaries of `target` left by killed processes (`.NAME.tmpPID` whose process is
/// gone); failures are ignored, a leftover is only clutter.
fn remove_stale_temporaries(target: &Path) {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else { return };
    let prefix = format!(".{}.tmp", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file.strip_prefix(&prefix).and_then(|p| p.parse::<i32>().ok()) else { continue };
        // SAFETY: kill(2) with signal 0 only checks whether the process exists; it sends nothing.
        let gone =
            unsafe { libc::kill(pid, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone && pid != std::process::id() as i32 {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Writes `bytes` to `path` by the rules of this module.
pub fn write_output(path: &Path, what: &str, bytes: &[u8]) -> Result<()> {
    let dest = Destination::resolve(path, what)?;
    let mut out = OutputFile::create(path, &dest)?;
    out.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    out.commit()
}

/// A file the run reads, and what it is (for messages).
pub struct Input {
    /// The path as given.
    pub path: PathBuf,
    /// E.g. "the input table", "the checkpoint file".
    pub role: &'static str,
}

impl Input {
    /// An input file.
    pub fn new(path: impl Into<PathBuf>, role: &'static str) -> Self {
        Input { path: path.into(), role }
    }
}

/// Fails when the output `path` (written as `dest`, named `what`) is one of `inputs`: the same
/// device and inode (hard links, symlinks) or the same normalised absolute path.
pub fn check_not_input(path: &Path, what: &str, dest: &Destination, inputs: &[Input]) -> Result<()> {
    let out_path = match dest {
        Destination::Replace { target } => target.clone(),
        Destination::Stdout => PathBuf::from("/dev/stdout"),
        Destination::Stderr => PathBuf::from("/dev/stderr"),
        Destination::Through(p) => p.clone(),
    };
    let out_id = std::fs::metadata(&out_path).ok().map(|m| (m.dev(), m.ino()));
    let out_norm = absolute(&out_path)?;
    for input in inputs {
        let same_file = match (out_id, std::fs::metadata(&input.path)) {
            (Some(id), Ok(m)) => id == (m.dev(), m.ino()),
            _ => false,
        };
        let in_norm = input.path.canonicalize().or_else(|_| absolute(&input.path))?;
        if same_file || in_norm == out_norm {
            bail!(
                "{what}: `{}` is the same file as {} `{}`; writing it would destroy the input, write to another path",
                path.display(),
                input.role,
                input.path.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_writers_temporary_is_removed_by_the_next_write() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("pred.tsv");
        // The pid of a process that has ended.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = tmp.path().join(format!(".pred.tsv.tmp{dead}"));
        let other = tmp.path().join(".other.tsv.tmp1");
        std::fs::write(&stale, "half").unwrap();
        std::fs::write(&other, "not ours").unwrap();
        write_output(&out, "--outputs", b"rows\n").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"rows\n");
        assert!(!stale.exists(), "the dead writer's temporary is removed");
        assert!(other.exists(), "another output's temporary is left alone");
    }

    #[test]
    fn lexical_normalisation() {
        assert_eq!(lexical(Path::new("/a/./b/../c")), Path::new("/a/c"));
        assert_eq!(lexical(Path::new("/../x")), Path::new("/x"));
    }

    #[test]
    fn resolves_each_kind_of_path() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f.tsv");
        assert_eq!(
            Destination::resolve(&file, "--outputs").unwrap(),
            Destination::Replace { target: tmp.path().canonicalize().unwrap().join("f.tsv") }
        );
        std::fs::write(&file, "x").unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink("f.tsv", &link).unwrap();
        assert_eq!(
            Destination::resolve(&link, "--outputs").unwrap(),
            Destination::Replace { target: tmp.path().canonicalize().unwrap().join("f.tsv") }
        );
        assert!(Destination::resolve(tmp.path(), "--outputs").unwrap_err().to_string().contains("is a directory"));
        assert!(Destination::resolve(&tmp.path().join("no/x"), "--outputs")
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        let lo = tmp.path().join("loop");
        std::os::unix::fs::symlink("loop", &lo).unwrap();
        assert!(Destination::resolve(&lo, "--outputs").unwrap_err().to_string().contains("symbolic links"));
        assert_eq!(Destination::resolve(Path::new("/dev/stdout"), "o").unwrap(), Destination::Stdout);
        assert_eq!(Destination::resolve(Path::new("/proc/self/fd/2"), "o").unwrap(), Destination::Stderr);
        assert_eq!(
            Destination::resolve(Path::new("/dev/null"), "o").unwrap(),
            Destination::Through(PathBuf::from("/dev/null"))
        );
        assert!(Destination::resolve(Path::new("/dev"), "o").is_err());
    }
}
