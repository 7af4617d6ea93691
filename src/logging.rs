//! Log lines in EasyNLP's format, `[YYYY-mm-dd HH:MM:SS INFO] message`, on stderr, and the
//! progress bar drawn below them when stderr is a terminal (never otherwise, so logs written to
//! files and pipes are the log lines alone).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The bar on the terminal, if one is drawn.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Whether informational lines and the bar are off (the data-parallel workers other than rank 0).
static QUIET: AtomicBool = AtomicBool::new(false);

/// Turns informational lines and the progress bar off (warnings still print).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Logs one informational line.
pub fn info(msg: impl std::fmt::Display) {
    if QUIET.load(Ordering::Relaxed) {
        return;
    }
    line("INFO", msg);
}

/// Logs one warning line.
pub fn warn(msg: impl std::fmt::Display) {
    line("WARNING", msg);
}

fn line(level: &str, msg: impl std::fmt::Display) {
    let text = format!("[{} {level}] {msg}", timestamp());
    let bar = BAR.lock().unwrap_or_else(|e| e.into_inner());
    match bar.as_ref() {
        // The bar steps aside for the line and is drawn again below it.
        Some(bar) => bar.suspend(|| eprintln!("{text}")),
        None => eprintln!("{text}"),
    }
}

/// Shows `done` of `total` on the progress bar (with its rate, elapsed time and ETA) and
/// `label`, when stderr is a terminal; a new `total` starts a new bar, and the bar goes away when
/// `done` reaches `total`. The rate and ETA count from the first call, so a resumed run's ETA is
/// that of the steps left.
pub fn progress(done: usize, total: usize, label: &str) {
    if total == 0 || QUIET.load(Ordering::Relaxed) || !std::io::stderr().is_terminal() {
        return;
    }
    let mut slot = BAR.lock().unwrap_or_else(|e| e.into_inner());
    if slot.as_ref().is_none_or(|b| b.length() != Some(total as u64)) {
        if let Some(old) = slot.take() {
            old.finish_and_clear();
        }
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
        bar.set_style(style());
        bar.set_position(done as u64);
        bar.reset_eta();
        *slot = Some(bar);
    }
    let bar = slot.as_ref().expect("set above");
    bar.set_message(label.to_string());
    bar.set_position(done as u64);
    if done >= total {
        bar.finish_and_clear();
        *slot = None;
    }
}

/// `[elapsed] [#####     ] done/total  rate/s  ETA eta  label`.
fn style() -> ProgressStyle {
    ProgressStyle::with_template("[{elapsed_precise}] [{bar:30}] {pos}/{len} {rate} ETA {eta} {msg}")
        .expect("a valid template")
        .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.2}/s", s.per_sec());
        })
        .progress_chars("#> ")
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
