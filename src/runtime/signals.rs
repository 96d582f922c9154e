//! The process's signals, each listened for once: SIGTERM and SIGINT end a command
//! ([`shutdown_signal`]); SIGHUP is one listener whose hangups every reloader subscribes to
//! ([`hangups`]: `run` rereads its config's limits and its rules on the same signal).

use std::sync::OnceLock;

use tokio::sync::broadcast;

/// SIGTERM or SIGINT (Ctrl-C). The handlers are installed when this is called, not when the
/// future is first polled: a signal that comes just after a command says it is running (a
/// supervisor's stop right after start) is caught, not fatal.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
        async move {
            match handlers {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Each SIGHUP from now on, for one subscriber. The first call (inside a tokio runtime) installs
/// the process's one SIGHUP handler, at the call, not when the receiver is first polled; every
/// later call subscribes to it. Where the signal cannot be listened for, the receiver never
/// hears one.
pub(crate) fn hangups() -> broadcast::Receiver<()> {
    static HANGUPS: OnceLock<broadcast::Sender<()>> = OnceLock::new();
    HANGUPS
        .get_or_init(|| {
            let (tx, _) = broadcast::channel(4);
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                match signal(SignalKind::hangup()) {
                    Ok(mut hup) => {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            while hup.recv().await.is_some() {
                                // No subscriber yet is no error: the signal changes nothing then.
                                let _ = tx.send(());
                            }
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP; reloads need a restart"),
                }
            }
            tx
        })
        .subscribe()
}

/// Waits for the next hangup; `false` once none can come. Hangups missed while busy count as
/// one.
pub(crate) async fn next_hangup(rx: &mut broadcast::Receiver<()>) -> bool {
    match rx.recv().await {
        Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => true,
        Err(broadcast::error::RecvError::Closed) => false,
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_sighup_reaches_every_subscriber() {
        let (mut a, mut b) = (hangups(), hangups());
        let pid = std::process::id().to_string();
        let sent = std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        assert!(sent.success());
        let wait = std::time::Duration::from_secs(5);
        assert!(tokio::time::timeout(wait, next_hangup(&mut a)).await.unwrap());
        assert!(tokio::time::timeout(wait, next_hangup(&mut b)).await.unwrap());
    }
}
