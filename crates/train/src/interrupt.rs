//! A process-wide stop request: the binary's Ctrl-C handler sets it, and long work (training)
//! checks it at safe points, finishes what it is doing, saves, and returns.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks running work to stop at its next safe point.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether a stop was requested.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Clears a stop request (for a process that runs several jobs in turn).
pub fn clear() {
    STOP.store(false, Ordering::SeqCst);
}
