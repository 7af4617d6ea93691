//! Log lines in EasyNLP's format, `[YYYY-mm-dd HH:MM:SS INFO] message`, on stderr.

use std::io::IsTerminal;
use std::time::{SystemTime, UNIX_EPOCH};

/// Logs one informational line.
pub fn info(msg: impl std::fmt::Display) {
    clear_progress();
    eprintln!("[{} INFO] {msg}", timestamp());
}

/// Logs one warning line.
pub fn warn(msg: impl std::fmt::Display) {
    clear_progress();
    eprintln!("[{} WARNING] {msg}", timestamp());
}

/// Draws a one-line progress bar on stderr when it is a terminal.
pub fn progress(done: usize, total: usize, label: &str) {
    if !std::io::stderr().is_terminal() || total == 0 {
        return;
    }
    let width = 30;
    let filled = (done * width / total).min(width);
    eprint!("\r[{}{}] {done}/{total} {label}\x1b[K", "#".repeat(filled), " ".repeat(width - filled));
}

fn clear_progress() {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[K");
    }
}

/// The current UTC time as `YYYY-mm-dd HH:MM:SS`.
pub fn timestamp() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}
