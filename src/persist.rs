//! State on disk that is whole or absent: directory transactions swapped in by one rename, and
//! the exclusive lock a training run holds on its checkpoint directory.
//!
//! A [`DirTxn`] builds the next version of a directory in a hidden sibling (`.NAME.easynlp-new-*`):
//! the current files are hard-linked in (cheap, and they are already durable), changed files are
//! written anew (never through a link), everything is fsynced, and the sibling is exchanged with
//! the directory by `renameat2(RENAME_EXCHANGE)`. A kill at any instant leaves the old version or
//! the new one, plus at most a stale sibling that [`DirLock::acquire`] removes at the next start.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The lock file inside a locked directory (hard-linked into every new version, so the lock,
/// which belongs to the inode, survives the swaps).
pub const LOCK_FILE: &str = ".easynlp.lock";

/// Marks hidden siblings made by this module: `.NAME` + this + a suffix.
const SIBLING_TAG: &str = ".easynlp-";

/// An exclusive lock on a directory, held while the value lives. A directory it created that
/// holds nothing but the lock file (and entries marked [`DirLock::disposable`]) when it is
/// dropped (a run that failed before its first save) is removed again.
pub struct DirLock {
    dir: PathBuf,
    /// `dir` with every symlink resolved: the directory that is swapped (a link stays a link).
    real: PathBuf,
    file: Option<File>,
    created: bool,
    /// Entries that alone do not make a created directory worth keeping.
    disposable: Vec<String>,
}

impl DirLock {
    /// Creates `dir` if needed and locks it; fails at once, naming the holder, when another
    /// process holds it. A lock left by a dead process is free again (the kernel drops it), and
    /// the half-written versions that process left beside `dir` are removed.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let created = !dir.exists();
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        if !dir.is_dir() {
            bail!("{} is not a directory", dir.display());
        }
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                bail!(
                    "{} is in use by another training run ({}); wait for it to finish or choose another --checkpoint_dir",
                    dir.display(),
                    if holder.is_empty() { "holder unknown" } else { holder }
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        file.set_len(0)?;
        writeln!(file, "pid {} on host {}", std::process::id(), hostname())?;
        file.sync_all()?;
        let real = dir.canonicalize().with_context(|| format!("cannot resolve {}", dir.display()))?;
        remove_stale_siblings(&real)?;
        Ok(DirLock { dir: dir.to_path_buf(), real, file: Some(file), created, disposable: Vec::new() })
    }

    /// Marks the entry `name` (a file or folder in the directory, such as a log) as not worth
    /// keeping a directory this lock created for: it goes away with the directory.
    pub fn disposable(mut self, name: &str) -> Self {
        self.disposable.push(name.to_string());
        self
    }

    /// The locked directory, as given.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The locked directory with every symlink resolved: where new versions are swapped in, so
    /// that a checkpoint directory given as a symlink stays one.
    pub fn real_dir(&self) -> &Path {
        &self.real
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let only_lock = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .all(|e| e.file_name() == LOCK_FILE || self.disposable.iter().any(|d| e.file_name() == d.as_str()))
            })
            .unwrap_or(false);
        if self.created && only_lock {
            // Still locked while removing, so no other run can be using it.
            for name in &self.disposable {
                let _ = std::fs::remove_dir_all(self.dir.join(name));
                let _ = std::fs::remove_file(self.dir.join(name));
            }
            let _ = std::fs::remove_file(self.dir.join(LOCK_FILE));
            let _ = std::fs::remove_dir(&self.dir);
        }
        self.file.take();
    }
}

/// Removes the hidden siblings of `dir` left by a killed run (only the lock holder calls this).
fn remove_stale_siblings(dir: &Path) -> Result<()> {
    let (parent, name) = parent_and_name(dir)?;
    let prefix = format!(".{name}{SIBLING_TAG}");
    for entry in std::fs::read_dir(&parent).with_context(|| format!("cannot list {}", parent.display()))? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let path = entry.path();
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("cannot remove the stale temporary {}", path.display()))?;
        }
    }
    Ok(())
}

/// The next version of a directory, built beside it and swapped in by [`DirTxn::commit`];
/// dropped without a commit, it is removed.
pub struct DirTxn {
    target: PathBuf,
    staging: PathBuf,
    committed: bool,
}

impl DirTxn {
    /// Starts a version of `target` holding (hard links to) its current files.
    pub fn begin(target: &Path) -> Result<Self> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let (parent, name) = parent_and_name(target)?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let staging = parent.join(format!(".{name}{SIBLING_TAG}new-{}-{n}", std::process::id()));
        let txn = DirTxn { target: target.to_path_buf(), staging, committed: false };
        std::fs::create_dir(&txn.staging).with_context(|| format!("cannot create {}", txn.staging.display()))?;
        if target.is_dir() {
            link_tree(target, &txn.staging)?;
        }
        Ok(txn)
    }

    /// Where `rel` lives in the new version (for readers of files linked in).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.staging.join(rel)
    }

    /// Writes `rel` through `write` (given a path to create), replacing any linked-in file.
    pub fn write_with(&self, rel: &str, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let path = self.prepare(rel)?;
        write(&path)?;
        File::open(&path).and_then(|f| f.sync_all()).with_context(|| format!("cannot flush {}", path.display()))
    }

    /// Writes `rel` with `bytes`.
    pub fn write(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        self.write_with(rel, |p| std::fs::write(p, bytes).with_context(|| format!("cannot write {}", p.display())))
    }

    /// Makes `rel` the same file as `src` (a hard link; a copy across file systems).
    pub fn link(&self, rel: &str, src: &Path) -> Result<()> {
        let path = self.prepare(rel)?;
        if std::fs::hard_link(src, &path).is_err() {
            std::fs::copy(src, &path)
                .with_context(|| format!("cannot copy {} to {}", src.display(), path.display()))?;
            File::open(&path)?.sync_all()?;
        }
        Ok(())
    }

    /// Removes `rel` (a file or a folder) from the new version, if there.
    pub fn remove(&self, rel: &str) -> Result<()> {
        let path = self.staging.join(rel);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path)?,
            Ok(_) => std::fs::remove_file(&path)?,
            Err(_) => {}
        }
        Ok(())
    }

    /// Unlinks whatever is at `rel` (never writing through a shared link) and creates its folder.
    fn prepare(&self, rel: &str) -> Result<PathBuf> {
        let path = self.staging.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot replace {}", path.display())),
        }
        Ok(path)
    }

    /// Makes the new version durable and swaps it in with one rename.
    pub fn commit(mut self) -> Result<()> {
        sync_tree(&self.staging)?;
        let (parent, _) = parent_and_name(&self.target)?;
        if self.target.is_dir() {
            exchange(&self.staging, &self.target)?;
        } else {
            std::fs::rename(&self.staging, &self.target)
                .with_context(|| format!("cannot move {} into place", self.target.display()))?;
        }
        self.committed = true;
        File::open(&parent).and_then(|d| d.sync_all()).with_context(|| format!("cannot flush {}", parent.display()))?;
        // After an exchange the old version sits at the staging path.
        if self.staging.exists() {
            std::fs::remove_dir_all(&self.staging)
                .with_context(|| format!("cannot remove the old version {}", self.staging.display()))?;
        }
        Ok(())
    }
}

impl Drop for DirTxn {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

/// Hard-links every file under `src` into `dst` (folders recreated).
fn link_tree(src: &Path, dst: &Path) -> Result<()> {
    for entry in std::fs::read_dir(src).with_context(|| format!("cannot list {}", src.display()))? {
        let entry = entry?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::create_dir(&to)?;
            link_tree(&from, &to)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&from)?;
            std::os::unix::fs::symlink(target, &to)?;
        } else {
            std::fs::hard_link(&from, &to)
                .with_context(|| format!("cannot link {} into {}", from.display(), dst.display()))?;
        }
    }
    Ok(())
}

/// fsyncs every folder under `dir` (files are synced when written).
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        }
    }
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot flush {}", dir.display()))
}

/// Swaps two directories atomically.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both are valid NUL-terminated paths that outlive the call; AT_FDCWD resolves them
    // like any relative or absolute path.
    let rc =
        unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(err).with_context(|| {
            format!(
                "cannot swap the new version of {} into place (the file system must support renameat2 RENAME_EXCHANGE)",
                b.display()
            )
        });
    }
    Ok(())
}

/// Swaps two directories: not atomic off Linux (a kill between the renames leaves `b` absent).
#[cfg(not(target_os = "linux"))]
fn exchange(a: &Path, b: &Path) -> Result<()> {
    let old = a.with_extension("old");
    std::fs::rename(b, &old)?;
    std::fs::rename(a, b)?;
    std::fs::rename(&old, a)?;
    Ok(())
}

/// The parent folder (`.` for a bare name) and the last component of `path`.
fn parent_and_name(path: &Path) -> Result<(PathBuf, String)> {
    let name = path
        .file_name()
        .with_context(|| format!("{} does not name a directory", path.display()))?
        .to_string_lossy()
        .into_owned();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

/// This machine's host name (for lock messages).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_replaces_the_directory_whole_and_keeps_unchanged_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ckpt");
        let txn = DirTxn::begin(&dir).unwrap();
        txn.write("a.txt", b"one").unwrap();
        txn.write("sub/b.txt", b"two").unwrap();
        assert!(!dir.exists(), "nothing is visible before the commit");
        txn.commit().unwrap();
        assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"one");
        let txn = DirTxn::begin(&dir).unwrap();
        txn.write("a.txt", b"three").unwrap();
        assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"one", "the old version is untouched until commit");
        txn.commit().unwrap();
        assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"three");
        assert_eq!(std::fs::read(dir.join("sub/b.txt")).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["ckpt"], "no temporary left beside it");
        // An abandoned transaction leaves nothing behind.
        let txn = DirTxn::begin(&dir).unwrap();
        txn.write("a.txt", b"four").unwrap();
        drop(txn);
        assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"three");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn the_lock_is_exclusive_survives_commits_and_clears_stale_versions() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ckpt");
        let stale = tmp.path().join(".ckpt.easynlp-new-1-0");
        std::fs::create_dir_all(stale.join("x")).unwrap();
        let lock = DirLock::acquire(&dir).unwrap();
        assert!(!stale.exists(), "a killed run's half-written version is removed");
        let txn = DirTxn::begin(&dir).unwrap();
        txn.write("m", b"1").unwrap();
        txn.commit().unwrap();
        // Another open file description of the same lock file cannot lock it.
        let other = File::open(dir.join(LOCK_FILE)).unwrap();
        assert!(other.try_lock().is_err(), "the lock survives the swap of the directory");
        let err = DirLock::acquire(&dir).err().unwrap().to_string();
        assert!(err.contains("in use by another training run") && err.contains("pid"), "{err}");
        drop(lock);
        DirLock::acquire(&dir).unwrap();
        // A checkpoint directory given as a symlink stays a symlink; its target gets the versions.
        let target = tmp.path().join("target");
        std::fs::create_dir(&target).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let linked = DirLock::acquire(&link).unwrap();
        let txn = DirTxn::begin(linked.real_dir()).unwrap();
        txn.write("m", b"2").unwrap();
        txn.commit().unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(target.join("m")).unwrap(), b"2");
        drop(linked);
        // A directory the lock created and nothing else filled goes away with it, with its
        // disposable entries; one with anything else stays.
        let fresh = tmp.path().join("fresh");
        drop(DirLock::acquire(&fresh).unwrap());
        assert!(!fresh.exists());
        let lock = DirLock::acquire(&fresh).unwrap().disposable("log");
        std::fs::create_dir_all(fresh.join("log")).unwrap();
        std::fs::write(fresh.join("log/x"), b"1").unwrap();
        drop(lock);
        assert!(!fresh.exists());
        let lock = DirLock::acquire(&fresh).unwrap().disposable("log");
        std::fs::create_dir_all(fresh.join("log")).unwrap();
        std::fs::write(fresh.join("m"), b"1").unwrap();
        drop(lock);
        assert!(fresh.join("log").is_dir() && fresh.join("m").is_file());
    }
}
