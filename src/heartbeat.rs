//! The one heartbeat loop: something this process holds (the lease's term, a worker's
//! registration) is renewed every period beside the work, and a flag goes up, and stays up
//! until its owner lowers it, once it is lost: a renewal found it gone, or renewals have failed
//! for longer than it can outlive them. Dropping the [`Heartbeat`] stops the loop.
//!
//! The lease (`Lease::heartbeat`), the executor's registration kept alive during a tick
//! (`Registration::keep_alive`) and a worker's registration (`Worker::run`) all beat through
//! here; each says what a renewal found, this module decides what it means.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What one renewal found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Renewed: still ours.
    Renewed,
    /// Gone for good (another holder took it, the registration lapsed): the flag goes up.
    Lost,
    /// The renewal could not be made (the database did not answer): lost only once renewals
    /// have failed for the grace period since the last success.
    Failed,
    /// Nothing to renew any more (the registration was given up): the loop ends quietly.
    Done,
}

/// After the flag goes up: end the loop (a lease: the next term has a heartbeat of its own), or
/// go on renewing (a worker's registration, which its owner takes anew and lowers the flag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenLost {
    Stop,
    GoOn,
}

/// A running heartbeat; see [`Heartbeat::start`].
pub struct Heartbeat {
    lost: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    /// Calls `renew` every `every`, the first time one period from now. The flag goes up at a
    /// [`Renewal::Lost`], or at a [`Renewal::Failed`] once `grace` has passed since the start or
    /// the last [`Renewal::Renewed`]; then `when_lost` says whether the loop goes on.
    /// `what` names it in the warning logged when failures outlast the grace.
    pub fn start<F, Fut>(
        what: &'static str,
        every: Duration,
        grace: Duration,
        when_lost: WhenLost,
        lost: Arc<AtomicBool>,
        renew: F,
    ) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Renewal> + Send + 'static,
    {
        let flag = lost.clone();
        let task = tokio::spawn(beat(what, every, grace, when_lost, flag, renew));
        Heartbeat { lost, task }
    }

    /// The flag that goes up once what it renews is lost.
    pub fn lost_flag(&self) -> Arc<AtomicBool> {
        self.lost.clone()
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn beat<F, Fut>(
    what: &'static str,
    every: Duration,
    grace: Duration,
    when_lost: WhenLost,
    lost: Arc<AtomicBool>,
    mut renew: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Renewal>,
{
    let mut last_ok = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let gone = match renew().await {
            Renewal::Renewed => {
                last_ok = Instant::now();
                false
            }
            Renewal::Lost => true,
            Renewal::Failed => {
                let lapsed = last_ok.elapsed() >= grace;
                if lapsed {
                    tracing::warn!(grace_s = grace.as_secs_f64(), "{what}: no renewal within the grace; taken as lost");
                }
                lapsed
            }
            Renewal::Done => return,
        };
        if gone {
            lost.store(true, Ordering::SeqCst);
            if when_lost == WhenLost::Stop {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A heartbeat over a scripted list of renewals; how many were asked for once it ends.
    fn scripted(script: Vec<Renewal>, grace: Duration, when_lost: WhenLost) -> (Heartbeat, Arc<Mutex<usize>>) {
        let asked = Arc::new(Mutex::new(0));
        let count = asked.clone();
        let script = Arc::new(script);
        let hb = Heartbeat::start(
            "a test",
            Duration::from_millis(5),
            grace,
            when_lost,
            Arc::new(AtomicBool::new(false)),
            move || {
                let (count, script) = (count.clone(), script.clone());
                async move {
                    let mut n = count.lock().unwrap();
                    *n += 1;
                    script.get(*n - 1).copied().unwrap_or(Renewal::Done)
                }
            },
        );
        (hb, asked)
    }

    /// Waits until the loop has ended (at a loss with `Stop`, or when the script runs out).
    async fn settle(hb: &Heartbeat) {
        let start = std::time::Instant::now();
        while !hb.task.is_finished() {
            assert!(start.elapsed() < Duration::from_secs(10), "the heartbeat loop did not end");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_lost_renewal_raises_the_flag_and_stops_or_goes_on() {
        let (hb, asked) =
            scripted(vec![Renewal::Renewed, Renewal::Lost, Renewal::Renewed], Duration::MAX, WhenLost::Stop);
        settle(&hb).await;
        assert!(hb.is_lost());
        assert_eq!(*asked.lock().unwrap(), 2, "stopped at the loss");
        let (hb, asked) = scripted(vec![Renewal::Lost, Renewal::Renewed], Duration::MAX, WhenLost::GoOn);
        settle(&hb).await;
        assert!(hb.is_lost(), "the owner lowers the flag, not a later renewal");
        assert_eq!(*asked.lock().unwrap(), 3, "went on until Done");
    }

    #[tokio::test]
    async fn failures_count_only_past_the_grace() {
        let (hb, _) = scripted(vec![Renewal::Failed; 3], Duration::from_secs(60), WhenLost::Stop);
        settle(&hb).await;
        assert!(!hb.is_lost(), "three failures within the grace");
        let (hb, asked) =
            scripted(vec![Renewal::Renewed, Renewal::Failed, Renewal::Failed], Duration::ZERO, WhenLost::Stop);
        settle(&hb).await;
        assert!(hb.is_lost());
        assert_eq!(*asked.lock().unwrap(), 2, "lost at the first failure past a zero grace");
    }

    #[tokio::test]
    async fn dropping_it_stops_the_loop() {
        let (hb, asked) = scripted(vec![Renewal::Renewed; 1000], Duration::MAX, WhenLost::Stop);
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(hb);
        let at_drop = *asked.lock().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(*asked.lock().unwrap() <= at_drop + 1, "no renewals after the drop");
    }
}
