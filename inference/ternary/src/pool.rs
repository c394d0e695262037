//! A fixed pool of worker threads for splitting one matrix product across cores with
//! microsecond-scale per-call cost. A decode step runs ~200 products per token, so waking threads
//! through the OS on every call would dominate; workers instead spin on a generation counter for a
//! while after each job and only then park on a condition variable.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker polls for the next job before parking. Long enough to cover the gaps
/// between the products of one decode step (norms, RoPE, attention), short enough to give the
/// core back when the server is idle.
const SPIN_BEFORE_PARK: Duration = Duration::from_micros(300);

type Job<'a> = &'a (dyn Fn(usize, usize) + Sync);

struct Shared {
    threads: usize,
    generation: AtomicUsize,
    /// Points at a `Job` on the stack of the thread inside `run`; only read while that call waits.
    job: AtomicPtr<()>,
    pending: AtomicUsize,
    sleepers: AtomicUsize,
    shutdown: AtomicBool,
    worker_panicked: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

/// A fixed set of threads that run a closure on every worker index at once.
pub struct ThreadPool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    /// Serialises `run` calls from different threads; jobs are not reentrant.
    run_lock: Mutex<()>,
}

impl ThreadPool {
    /// A pool of `threads` workers in total: the thread calling [`Self::run`] is worker 0, and
    /// `threads - 1` threads are spawned. `0` is treated as 1.
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            threads,
            generation: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            pending: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            worker_panicked: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let handles = (1..threads)
            .map(|index| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("ternary-{index}"))
                    .spawn(move || worker_loop(&shared, index))
                    .expect("the OS refused to start a ternary worker thread")
            })
            .collect();
        ThreadPool {
            shared,
            handles,
            run_lock: Mutex::new(()),
        }
    }

    /// Number of workers, including the calling thread.
    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// Runs `f(worker, workers)` once for every worker in `0..workers`, in parallel, and returns
    /// when all have finished. The calling thread runs worker 0. A panic in any worker is
    /// re-raised here after all workers are done. Calling `run` from inside `f` deadlocks.
    pub fn run<F: Fn(usize, usize) + Sync>(&self, f: F) {
        let threads = self.shared.threads;
        if threads == 1 {
            f(0, 1);
            return;
        }
        let _serial = self.run_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let job: Job<'_> = &f;
        let shared = &*self.shared;
        shared.pending.store(threads - 1, Ordering::Relaxed);
        shared
            .job
            .store(&job as *const Job<'_> as *mut (), Ordering::Relaxed);
        // SeqCst pairs with the sleeper registration in `wait_for_job`: either we see the sleeper
        // and notify it, or it sees the new generation before waiting.
        shared.generation.fetch_add(1, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = shared.lock.lock().unwrap_or_else(PoisonError::into_inner);
            shared.wake.notify_all();
        }
        let own = catch_unwind(AssertUnwindSafe(|| f(0, threads)));
        // The workers hold a pointer to `job` until they decrement `pending`: wait even when our
        // own part panicked.
        let started = Instant::now();
        while shared.pending.load(Ordering::Acquire) != 0 {
            if started.elapsed() < SPIN_BEFORE_PARK {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if let Err(payload) = own {
            resume_unwind(payload);
        }
        if shared.worker_panicked.swap(false, Ordering::Relaxed) {
            panic!("a ternary ThreadPool worker panicked while running a job");
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        {
            let _guard = self
                .shared
                .lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.shared.wake.notify_all();
        }
        for handle in self.handles.drain(..) {
            // A worker that panicked outside a job has nothing left to report at drop time.
            let _ = handle.join();
        }
    }
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.shared.threads)
            .finish()
    }
}

fn worker_loop(shared: &Shared, index: usize) {
    let mut seen = 0;
    loop {
        seen = wait_for_job(shared, seen);
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let job = shared.job.load(Ordering::Acquire) as *const Job<'static>;
        // SAFETY: `run` stored a pointer to a live `Job` before bumping the generation we just
        // observed (SeqCst/Acquire), and it does not return, so the job and the closure it
        // borrows stay alive, until every worker has decremented `pending` below.
        let job: Job<'_> = unsafe { *job };
        if catch_unwind(AssertUnwindSafe(|| job(index, shared.threads))).is_err() {
            shared.worker_panicked.store(true, Ordering::Relaxed);
        }
        shared.pending.fetch_sub(1, Ordering::Release);
    }
}

/// Returns the first generation different from `seen`: spins for a while, then parks.
fn wait_for_job(shared: &Shared, seen: usize) -> usize {
    let started = Instant::now();
    loop {
        for _ in 0..64 {
            let generation = shared.generation.load(Ordering::Acquire);
            if generation != seen {
                return generation;
            }
            std::hint::spin_loop();
        }
        if started.elapsed() >= SPIN_BEFORE_PARK {
            break;
        }
    }
    let mut guard = shared.lock.lock().unwrap_or_else(PoisonError::into_inner);
    shared.sleepers.fetch_add(1, Ordering::SeqCst);
    loop {
        let generation = shared.generation.load(Ordering::SeqCst);
        if generation != seen {
            shared.sleepers.fetch_sub(1, Ordering::SeqCst);
            return generation;
        }
        guard = shared
            .wake
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner);
    }
}
