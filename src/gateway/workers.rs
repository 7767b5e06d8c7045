//! The threads client connections live on: one single-threaded event loop per core.
//!
//! A connection is accepted once and then handed, whole, to the least busy worker thread; its
//! TLS, its WebSocket frames and its desktop socket are all served by that thread's event loop
//! from then on. Bytes going through a tunnel are never woken on one thread and moved on
//! another, which is what a shared work-stealing pool does and what costs a round trip
//! microseconds of cross-thread wake-ups. Many connections still spread over every core.
//!
//! The threads start on first use, so a [`super::Gateway`] made for a check or a test costs
//! nothing; they stop when the [`Workers`] is dropped.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// One worker thread's event loop and how many connections it serves.
struct Worker {
    handle: Handle,
    live: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

/// A set of worker threads, each running its own single-threaded event loop.
pub struct Workers {
    workers: Vec<Worker>,
}

/// Decrements a worker's load when its connection task ends (or is dropped).
struct Load(Arc<AtomicUsize>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `threads` workers (0: one per available core).
    pub fn start(threads: usize) -> std::io::Result<Workers> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("gatehouse-gw-{i}"))
                .spawn(move || {
                    // Runs spawned connections until the set is dropped; dropping the runtime
                    // then drops whatever is still open.
                    let _ = runtime.block_on(stopped);
                })?;
            workers.push(Worker {
                handle,
                live: Arc::new(AtomicUsize::new(0)),
                _stop: stop,
            });
        }
        Ok(Workers { workers })
    }

    /// How many worker threads there are.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether there are none (never: `start` makes at least one).
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Runs a connection's task on the worker serving the fewest connections. The task is
    /// built on that worker (`make` runs there), so the sockets it registers belong to that
    /// worker's event loop.
    pub fn spawn<F, Fut>(&self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let worker = self
            .workers
            .iter()
            .min_by_key(|w| w.live.load(Ordering::Relaxed))
            .expect("at least one worker");
        worker.live.fetch_add(1, Ordering::Relaxed);
        let load = Load(worker.live.clone());
        worker.handle.spawn(async move {
            let _load = load;
            make().await;
        });
    }

    /// How many connections each worker serves now.
    pub fn loads(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.live.load(Ordering::Relaxed))
            .collect()
    }
}
