//! The process-wide "shutting down" signal for open connections: set once
//! when the listeners stop accepting (SIGTERM), observed by every
//! connection's stream without a lock ([`Drain::poll_started`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Context;

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

#[derive(Default)]
pub struct Drain {
    started: AtomicBool,
    notify: Arc<Notify>,
}

/// A connection's registration for the drain signal.
pub type DrainWait = Option<Pin<Box<OwnedNotified>>>;

impl Drain {
    /// Shutdown began: wake every connection waiting for it.
    pub fn start(&self) {
        self.started.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Whether shutdown began; if not, `cx` is woken when it does.
    pub fn poll_started(&self, cx: &mut Context<'_>, wait: &mut DrainWait) -> bool {
        if self.started() {
            return true;
        }
        let w = wait.get_or_insert_with(|| Box::pin(self.notify.clone().notified_owned()));
        // Registered before the second look, so a start in between is not missed.
        w.as_mut().enable();
        self.started() || w.as_mut().poll(cx).is_ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiting_connection_is_woken_by_the_start() {
        let drain = Arc::new(Drain::default());
        let waiter = {
            let drain = drain.clone();
            tokio::spawn(async move {
                let mut wait = None;
                std::future::poll_fn(|cx| {
                    if drain.poll_started(cx, &mut wait) {
                        std::task::Poll::Ready(())
                    } else {
                        std::task::Poll::Pending
                    }
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        drain.start();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
    }
}
