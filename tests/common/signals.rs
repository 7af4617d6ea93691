//! Running the binary and stopping it part-way: a signal sent when a log line appears, or a
//! SIGKILL after a delay.

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

/// SIGINT.
pub const SIGINT: i32 = 2;
/// SIGKILL.
pub const SIGKILL: i32 = 9;
/// SIGTERM.
pub const SIGTERM: i32 = 15;

/// Sends `signal` to process `pid`.
pub fn kill(pid: u32, signal: i32) {
    // SAFETY: kill(2) takes plain integers; a pid that has exited makes it fail harmlessly.
    unsafe { libc::kill(pid as i32, signal) };
}

/// Runs `easynlp args`, sends `signal` once a stderr line contains `needle`, and returns the exit
/// status and the whole stderr.
pub fn run_and_signal(args: &[String], needle: &str, signal: i32) -> (ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_easynlp"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run easynlp");
    let (pid, mut sent, mut log) = (child.id(), false, String::new());
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if !sent && line.contains(needle) {
            kill(pid, signal);
            sent = true;
        }
        log += &line;
        log.push('\n');
    }
    (child.wait().unwrap(), log)
}

/// Runs `easynlp args` and SIGKILLs it after `after` unless it ends first; returns whether it
/// was killed, or else how long it ran.
pub fn run_and_kill(args: &[String], after: Duration) -> Result<(), Duration> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_easynlp"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run easynlp");
    let start = std::time::Instant::now();
    while start.elapsed() < after {
        if child.try_wait().unwrap().is_some() {
            return Err(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    kill(child.id(), SIGKILL);
    child.wait().unwrap();
    Ok(())
}
