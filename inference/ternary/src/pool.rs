//! A fixed pool of worker threads for splitting one matrix product across cores with
//! microsecond-scale per-call cost. A decode step runs ~200 products per token, so waking threads
//! through the OS on every call would dominate; idle workers instead spin on the job word for a
//! while and only then park on a condition variable.
//!
//! Worker indices are claimed, not assigned: the pool threads and the calling thread take indices
//! from a shared counter, and once the caller has finished its own share it runs every index no
//! thread has claimed yet. So a pool thread that the OS has descheduled (on a busy machine) delays
//! nothing, and `f(i, n)` still runs exactly once for every `i`.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::shared_out::SharedOut;

/// How long an idle worker polls for the next job before parking. Long enough to cover the gaps
/// between the products of one decode step (norms, RoPE, attention), short enough to give the
/// core back when the server is idle.
const SPIN_BEFORE_PARK: Duration = Duration::from_micros(300);
/// The job word packs: generation (bits 32..64), next unclaimed index (16..32), running (0..16).
const NEXT_ONE: u64 = 1 << 16;
const FIELD: u64 = 0xffff;
/// Keeps the index fields of the job word from overflowing.
const MAX_THREADS: usize = 1024;

type Job<'a> = &'a (dyn Fn(usize, usize) + Sync);

fn generation(word: u64) -> u32 {
    (word >> 32) as u32
}
fn next_index(word: u64) -> usize {
    ((word >> 16) & FIELD) as usize
}
fn running(word: u64) -> usize {
    (word & FIELD) as usize
}

struct Shared {
    threads: usize,
    word: AtomicU64,
    /// Points at a `Job` on the stack of the thread inside `run`; only dereferenced by a thread
    /// that claimed an index of the current generation, which `run` waits for.
    job: AtomicPtr<()>,
    sleepers: AtomicUsize,
    shutdown: AtomicBool,
    worker_panicked: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Shared {
    /// Claims the next unclaimed index of generation `gen`, counting it as running.
    fn claim(&self, gen: u32) -> Option<usize> {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            if generation(word) != gen || next_index(word) >= self.threads {
                return None;
            }
            match self.word.compare_exchange_weak(
                word,
                word + NEXT_ONE + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(next_index(word)),
                Err(now) => word = now,
            }
        }
    }

    /// Runs claimed index `index` of the current job and marks it finished.
    fn run_claimed(&self, index: usize) {
        let job = self.job.load(Ordering::Acquire) as *const Job<'static>;
        // SAFETY: the job pointer was stored before the generation we claimed in was published
        // (and the claim's Acquire sees it); `run` does not return, so the job and the closure it
        // borrows stay alive, until the running count we hold drops to zero below.
        let job: Job<'_> = unsafe { *job };
        if catch_unwind(AssertUnwindSafe(|| job(index, self.threads))).is_err() {
            self.worker_panicked.store(true, Ordering::Relaxed);
        }
        self.word.fetch_sub(1, Ordering::Release);
    }
}

/// A fixed set of threads that run a closure on every worker index at once.
pub struct ThreadPool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    /// Serialises `run` calls from different threads; jobs are not reentrant.
    run_lock: Mutex<()>,
}

impl ThreadPool {
    /// A pool of `threads` workers in total: the thread calling [`Self::run`] is one of them and
    /// `threads - 1` threads are spawned. `0` is treated as 1, and more than 1024 as 1024.
    pub fn new(threads: usize) -> Self {
        let threads = threads.clamp(1, MAX_THREADS);
        let shared = Arc::new(Shared {
            threads,
            word: AtomicU64::new(threads as u64 * NEXT_ONE),
            job: AtomicPtr::new(std::ptr::null_mut()),
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
                    .spawn(move || worker_loop(&shared))
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

    /// Runs `f(worker, workers)` exactly once for every worker index in `0..workers`, in
    /// parallel, and returns when all have finished. The calling thread runs index 0 and any
    /// index no pool thread has picked up by then. A panic in any call is re-raised here after
    /// all calls are done. Calling `run` from inside `f` deadlocks.
    pub fn run<F: Fn(usize, usize) + Sync>(&self, f: F) {
        let threads = self.shared.threads;
        if threads == 1 {
            f(0, 1);
            return;
        }
        let _serial = self.run_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let job: Job<'_> = &f;
        let shared = &*self.shared;
        let gen = generation(shared.word.load(Ordering::Relaxed)).wrapping_add(1);
        shared
            .job
            .store(&job as *const Job<'_> as *mut (), Ordering::Relaxed);
        // Index 0 is ours. SeqCst pairs with the sleeper registration in `wait_for_job`: either
        // we see the sleeper and notify it, or it sees the new generation before waiting.
        shared
            .word
            .store((u64::from(gen) << 32) | NEXT_ONE, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = shared.lock.lock().unwrap_or_else(PoisonError::into_inner);
            shared.wake.notify_all();
        }
        let own = catch_unwind(AssertUnwindSafe(|| f(0, threads)));
        while let Some(index) = shared.claim(gen) {
            shared.run_claimed(index);
        }
        // Every index is claimed now; wait for the ones still running on pool threads, which
        // hold a pointer to `job`, even when our own part panicked.
        let started = Instant::now();
        while running(shared.word.load(Ordering::Acquire)) != 0 {
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

/// Chunks handed out per worker by [`for_each_chunk`]: enough to even out uneven progress
/// (a core shared with another process), few enough that claiming stays negligible.
const CHUNKS_PER_WORKER: usize = 8;

/// Calls `f` on disjoint ranges covering `0..items`, claimed dynamically by the pool's workers
/// (or on the calling thread alone without a pool). Every item is in exactly one range.
pub(crate) fn for_each_chunk(
    pool: Option<&ThreadPool>,
    items: usize,
    f: impl Fn(std::ops::Range<usize>) + Sync,
) {
    match pool {
        Some(pool) if pool.threads() > 1 && items > 1 => {
            let chunk = items.div_ceil(pool.threads() * CHUNKS_PER_WORKER).max(1);
            let next = AtomicUsize::new(0);
            pool.run(|_, _| loop {
                let start = next.fetch_add(chunk, Ordering::Relaxed);
                if start >= items {
                    break;
                }
                f(start..(start + chunk).min(items));
            });
        }
        _ => f(0..items),
    }
}

impl ThreadPool {
    /// Calls `f(i, chunk)` for the `i`-th `chunk_len`-sized chunk of `data` (the last may be
    /// shorter), the chunks shared out among the pool's workers: per-token work (a norm, say) on
    /// rows of a batch, without each caller needing its own synchronisation. With one chunk, or
    /// one worker, it runs on the calling thread.
    ///
    /// # Panics
    /// If `chunk_len` is 0 and `data` is not empty.
    pub fn for_each_chunk_mut<T: Send>(
        &self,
        data: &mut [T],
        chunk_len: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        if data.is_empty() {
            return;
        }
        assert!(
            chunk_len > 0,
            "for_each_chunk_mut needs a chunk length above 0"
        );
        let (len, chunks) = (data.len(), data.len().div_ceil(chunk_len));
        let shared = SharedOut::new(data);
        for_each_chunk(Some(self), chunks, |range| {
            for i in range {
                let start = i * chunk_len;
                // SAFETY: `for_each_chunk` hands every chunk index to exactly one call, and
                // chunks are disjoint ranges of `data`.
                let chunk = unsafe { shared.slice(start, chunk_len.min(len - start)) };
                f(i, chunk);
            }
        });
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        let shared = &*self.shared;
        shared.shutdown.store(true, Ordering::SeqCst);
        let gen = generation(shared.word.load(Ordering::SeqCst)).wrapping_add(1);
        shared.word.store(
            (u64::from(gen) << 32) | (shared.threads as u64 * NEXT_ONE),
            Ordering::SeqCst,
        );
        {
            let _guard = shared.lock.lock().unwrap_or_else(PoisonError::into_inner);
            shared.wake.notify_all();
        }
        for handle in self.handles.drain(..) {
            // Jobs run under catch_unwind, so a worker thread has nothing left to report here.
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

fn worker_loop(shared: &Shared) {
    let mut seen = 0;
    loop {
        seen = wait_for_job(shared, seen);
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        while let Some(index) = shared.claim(seen) {
            shared.run_claimed(index);
        }
    }
}

/// Returns the first generation different from `seen`: spins for a while, then parks.
fn wait_for_job(shared: &Shared, seen: u32) -> u32 {
    let started = Instant::now();
    loop {
        for _ in 0..64 {
            let gen = generation(shared.word.load(Ordering::Acquire));
            if gen != seen {
                return gen;
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
        let gen = generation(shared.word.load(Ordering::SeqCst));
        if gen != seen {
            shared.sleepers.fetch_sub(1, Ordering::SeqCst);
            return gen;
        }
        guard = shared
            .wake
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner);
    }
}
