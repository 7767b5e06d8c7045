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
//!
//! **Busy polling** (off by default): after bytes moved, a worker keeps asking its sockets for
//! more, without sleeping, for a short window. On a virtual machine a thread that sleeps
//! hands its CPU back to the hypervisor, and waking it again costs several microseconds per
//! hop; an interactive exchange (a keystroke and its echo) then arrives while the worker is
//! still awake. The price is CPU: a worker spins for the window after every burst, so at
//! most one core per worker while traffic flows, and nothing while the tunnels are idle.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// How many idle turns of the busy-polling loop pass between two looks at the clock.
const CLOCK_EVERY: u32 = 32;

/// The longest busy-polling window, in microseconds (one second): the limit of
/// `--busy-poll` and `gateway.busy_poll_us`.
pub const MAX_BUSY_POLL_US: u32 = 1_000_000;

/// One worker thread's event loop and how many connections it serves.
struct Worker {
    handle: Handle,
    live: Arc<AtomicUsize>,
    spin: Arc<SpinState>,
    _stop: oneshot::Sender<()>,
}

/// What a busy-polling task shows of itself.
#[derive(Debug, Default)]
pub struct SpinState {
    /// Polling now.
    spinning: AtomicBool,
    /// How many times it started polling.
    spells: AtomicU64,
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
    /// Starts `threads` workers (0: one per available core), each busy polling for
    /// `spin` after bytes moved (zero: never).
    pub fn start(threads: usize, spin: Duration) -> std::io::Result<Workers> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let state = Arc::new(SpinState::default());
            let (stop, stopped) = oneshot::channel::<()>();
            let (started, handle) = std::sync::mpsc::channel();
            let spinner = state.clone();
            // The event loop is made, run and dropped on its own thread: never on the caller's,
            // which may itself be inside an event loop (where dropping one is refused).
            std::thread::Builder::new()
                .name(format!("gatehouse-gw-{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => return drop(started.send(Err(e))),
                    };
                    if !spin.is_zero() {
                        runtime.spawn(busy_poll(spin, spinner));
                    }
                    let _ = started.send(Ok(runtime.handle().clone()));
                    // Runs spawned connections until the set is dropped; dropping the runtime
                    // then drops whatever is still open.
                    let _ = runtime.block_on(stopped);
                })?;
            let handle = handle.recv().map_err(|_| {
                std::io::Error::other("a gateway worker thread ended as it started")
            })??;
            workers.push(Worker {
                handle,
                live: Arc::new(AtomicUsize::new(0)),
                spin: state,
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

    /// How many workers are busy polling now, and how many times any of them started to.
    pub fn spinning(&self) -> (usize, u64) {
        self.workers.iter().fold((0, 0), |(now, spells), w| {
            (
                now + usize::from(w.spin.spinning.load(Ordering::Relaxed)),
                spells + w.spin.spells.load(Ordering::Relaxed),
            )
        })
    }

    /// How many connections each worker serves now.
    pub fn loads(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.live.load(Ordering::Relaxed))
            .collect()
    }
}

thread_local! {
    /// How many times bytes moved on this thread.
    static ACTIVITY: Cell<u64> = const { Cell::new(0) };
    /// The thread's spinner, while it waits for bytes to move.
    static SPINNER: RefCell<Option<Waker>> = const { RefCell::new(None) };
}

/// Tells this thread's spinner (if busy polling is on) that bytes moved.
pub fn note_activity() {
    ACTIVITY.with(|a| a.set(a.get().wrapping_add(1)));
    if let Some(waker) = SPINNER.with(|s| s.borrow_mut().take()) {
        waker.wake();
    }
}

/// The busy-polling task of one single-threaded event loop: once bytes move, it yields to
/// the loop over and over (each turn polls the sockets without blocking) until `window`
/// passes without any moving, then waits for the next bytes.
pub async fn busy_poll(window: Duration, state: Arc<SpinState>) {
    let activity = || ACTIVITY.with(Cell::get);
    let mut seen = activity();
    loop {
        std::future::poll_fn(|cx| {
            if activity() != seen {
                Poll::Ready(())
            } else {
                SPINNER.with(|s| *s.borrow_mut() = Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        seen = activity();
        state.spells.fetch_add(1, Ordering::Relaxed);
        state.spinning.store(true, Ordering::Relaxed);
        // The clock is read once every CLOCK_EVERY idle turns, not on each: a turn is short,
        // and reading the clock is a good part of it on a virtual machine.
        let mut last = Instant::now();
        let mut idle_turns = 0u32;
        loop {
            tokio::task::yield_now().await;
            let now = activity();
            if now != seen {
                seen = now;
                idle_turns = 0;
            } else {
                idle_turns += 1;
                if idle_turns.is_multiple_of(CLOCK_EVERY) {
                    if idle_turns == CLOCK_EVERY {
                        // The first check since bytes last moved: the window starts about here.
                        last = Instant::now();
                    } else if last.elapsed() >= window {
                        break;
                    }
                }
            }
        }
        state.spinning.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (bounded) until `done` holds.
    fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "gave up waiting: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Notes bytes moving on the worker thread.
    fn move_bytes(workers: &Workers) {
        let (tx, rx) = std::sync::mpsc::channel();
        workers.spawn(move || async move {
            note_activity();
            let _ = tx.send(());
        });
        rx.recv().expect("the task ran");
    }

    #[test]
    fn a_worker_polls_after_bytes_moved_and_sleeps_again_when_they_stop() {
        let workers = Workers::start(1, Duration::from_millis(2)).expect("workers");
        assert_eq!(workers.spinning(), (0, 0), "nothing moved yet");
        move_bytes(&workers);
        until("a first spell", || workers.spinning().1 == 1);
        until("the worker sleeps again", || workers.spinning().0 == 0);
        move_bytes(&workers);
        until("a second spell", || workers.spinning().1 == 2);
        until("the worker sleeps again", || workers.spinning().0 == 0);
    }

    #[test]
    fn without_busy_polling_a_worker_never_polls() {
        let workers = Workers::start(2, Duration::ZERO).expect("workers");
        for _ in 0..3 {
            move_bytes(&workers);
        }
        // The tasks above ran on the workers; one more round trip through each worker's
        // queue shows that no spinner was scheduled before it.
        move_bytes(&workers);
        assert_eq!(workers.spinning(), (0, 0));
    }
}
