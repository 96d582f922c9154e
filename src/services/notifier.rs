//! The notifier: wakes idle workers when work became due by time alone.
//!
//! An enqueue and a finished attempt notify by themselves (PostgreSQL `NOTIFY`, inside the
//! store); an action whose `not_before` or backoff passed notifies no one, so the tick calls
//! this when its snapshot counts due work. On SQLite there is nothing to wake (workers poll).
//! A failed notification is only logged: the workers' poll picks the work up anyway.

use crate::store::Store;

/// Sends the work notification for the lease holder.
#[derive(Clone, Debug)]
pub struct Notifier {
    store: Store,
}

impl Notifier {
    pub fn new(store: Store) -> Self {
        Notifier { store }
    }

    /// Wakes the workers when `due_now` actions are due.
    pub async fn wake_if_due(&self, due_now: i64) {
        if due_now > 0 {
            self.store
                .notify()
                .notify_work()
                .await
                .unwrap_or_else(|e| tracing::debug!(error = %e, "cannot notify workers"));
        }
    }
}
