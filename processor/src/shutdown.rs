//! The shutdown signal every loop of the processor watches.
//!
//! Shutdown is asked for by sending `true` on the watch channel, or by dropping its sender:
//! once nobody is left to send, nobody is left to wait for either.

use tokio::sync::watch;

/// Whether shutdown has been asked for.
pub(crate) fn is_requested(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// Resolves once shutdown is asked for.
pub(crate) async fn requested(shutdown: &mut watch::Receiver<bool>) {
    // `wait_for` fails only when the sender is gone, which asks for shutdown too.
    let _ = shutdown.wait_for(|stop| *stop).await;
}
