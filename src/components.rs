//! The runtime's components: every long-lived task archway starts (the
//! watches of namespaces, nodes and owners, the guard, the gate controller,
//! the reloader, the settings report, writes that retry) is started
//! through one `Components`, told to stop by one token, and joined on
//! shutdown, so a stopped archway has nothing left running.
//!
//! Two kinds of start: `spawn` for a task that holds nothing to give back
//! (a watch): it is dropped at its next await once archway stops;
//! `spawn_graceful` for one that watches the token itself and finishes
//! what it must (the gate controller gives its Lease up).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The set of running components. Clones share it.
#[derive(Clone, Default)]
pub struct Components {
    tracker: TaskTracker,
    stop: CancellationToken,
    /// Running tasks by name, for the shutdown report.
    running: Arc<Mutex<BTreeMap<&'static str, usize>>>,
    started: Arc<AtomicUsize>,
}

/// What a shutdown found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// Tasks started over the process's life.
    pub started: usize,
    /// Names of the tasks still running when the grace period ran out.
    pub still_running: Vec<&'static str>,
}

/// Counts a running task under its name for as long as it lives.
struct Running {
    name: &'static str,
    running: Arc<Mutex<BTreeMap<&'static str, usize>>>,
}

impl Running {
    fn new(name: &'static str, running: &Arc<Mutex<BTreeMap<&'static str, usize>>>) -> Running {
        *lock(running).entry(name).or_default() += 1;
        Running {
            name,
            running: running.clone(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = lock(&self.running);
        if let Some(count) = running.get_mut(self.name) {
            *count -= 1;
            if *count == 0 {
                running.remove(self.name);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Components {
    pub fn new() -> Components {
        Components::default()
    }

    /// The token cancelled when archway stops.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs `task` until it ends or archway stops, whichever comes first.
    /// After the stop nothing new starts: the task is dropped unrun.
    pub fn spawn(&self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.spawn_graceful(name, async move {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Runs `task` to its end; it must watch `stop_token` and finish soon
    /// after it is cancelled.
    pub fn spawn_graceful(
        &self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let running = Running::new(name, &self.running);
        self.started.fetch_add(1, Ordering::Relaxed);
        self.tracker.spawn(async move {
            let _running = running;
            task.await;
        });
    }

    /// Names of the running tasks, with how many of each.
    pub fn running(&self) -> BTreeMap<&'static str, usize> {
        lock(&self.running).clone()
    }

    /// Stops every component and waits up to `grace` for them all to end.
    pub async fn shutdown(&self, grace: Duration) -> Stopped {
        self.stop.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(grace, self.tracker.wait()).await;
        let still_running = self.running().into_keys().collect();
        Stopped {
            started: self.started(),
            still_running,
        }
    }

    fn started(&self) -> usize {
        self.started.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_shutdown_stops_watches_waits_for_graceful_tasks_and_names_stragglers() {
        let components = Components::new();
        components.spawn("watch", std::future::pending());
        let stop = components.stop_token();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        components.spawn_graceful("gate", async move {
            stop.cancelled().await;
            // Gives its Lease up, then ends.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = done_tx.send(());
        });
        components.spawn_graceful("stubborn", async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        assert_eq!(
            components.running(),
            BTreeMap::from([("gate", 1), ("stubborn", 1), ("watch", 1)])
        );
        let stopped = components.shutdown(Duration::from_millis(200)).await;
        assert_eq!(stopped.still_running, vec!["stubborn"]);
        assert_eq!(stopped.started, 3);
        assert!(done_rx.await.is_ok(), "the graceful task finished its work");
        // Nothing starts after the stop.
        let (ran_tx, mut ran_rx) = tokio::sync::oneshot::channel::<()>();
        components.spawn("late", async move {
            let _ = ran_tx.send(());
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            ran_rx.try_recv().is_err(),
            "a task started after the stop ran"
        );
    }
}
