//! SIGINT and SIGTERM. By default they end the process at once (status 130 / 143). Inside work
//! that has safe points (training saves its latest state, predict removes its temporary file),
//! after [`defer`], the first one only asks the run to stop at its next safe point, and a second
//! one ends the process at once.

use signal_hook::consts::{SIGINT, SIGTERM};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// The signal received (0: none).
static RECEIVED: OnceLock<Arc<AtomicUsize>> = OnceLock::new();
/// Whether a signal ends the process at once (true until [`defer`], and after a first signal).
static IMMEDIATE: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// A run stopped by a signal; `main` exits with [`Interrupted::exit_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted {
    /// The signal number (SIGINT or SIGTERM).
    pub signal: i32,
}

impl Interrupted {
    /// The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
    pub fn exit_code(&self) -> i32 {
        128 + self.signal
    }

    fn name(&self) -> &'static str {
        if self.signal == SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        }
    }
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted by {}", self.name())
    }
}

impl std::error::Error for Interrupted {}

/// Installs the handlers (once per process; later calls do nothing).
pub fn install() -> std::io::Result<()> {
    if RECEIVED.get().is_some() {
        return Ok(());
    }
    let received = Arc::new(AtomicUsize::new(0));
    let immediate = Arc::new(AtomicBool::new(true));
    for signal in [SIGINT, SIGTERM] {
        // Registered first, so it reads `immediate` before the handler below sets it: exit at
        // once unless deferred, and on a second signal.
        signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, Arc::clone(&immediate))?;
        signal_hook::flag::register(signal, Arc::clone(&immediate))?;
        signal_hook::flag::register_usize(signal, Arc::clone(&received), signal as usize)?;
    }
    let _ = RECEIVED.set(received);
    let _ = IMMEDIATE.set(immediate);
    Ok(())
}

/// From now on the first signal is only recorded, for [`check`] to report at a safe point.
pub fn defer() {
    if let (Some(immediate), None) = (IMMEDIATE.get(), pending()) {
        immediate.store(false, Ordering::SeqCst);
    }
}

/// The pending interruption, if a signal arrived.
pub fn pending() -> Option<Interrupted> {
    let signal = RECEIVED.get()?.load(Ordering::SeqCst);
    (signal != 0).then_some(Interrupted { signal: signal as i32 })
}

/// `Err(Interrupted)` once a signal has arrived: call at points where stopping loses nothing.
pub fn check() -> Result<(), Interrupted> {
    pending().map_or(Ok(()), Err)
}
