//! The process's one thread pool: persistent workers that spin briefly, then park.
//!
//! Decode runs a few hundred small parallel ops per token (each GEMV is tens of microseconds),
//! so spawning threads per op or waking parked threads through the kernel every time would cost
//! more than the work. Workers therefore spin on an epoch counter for a while after each job
//! and only park on a condvar when the caller has gone quiet.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// How long a worker spins for the next job before parking (iterations of `spin_loop`).
const SPIN_ITERS: usize = 1 << 16;
/// Spinning threads yield the core this often, so an oversubscribed machine (more threads
/// than free cores) still makes progress instead of burning whole time slices.
const YIELD_EVERY: usize = 64;

#[inline]
fn backoff(spins: usize) {
    if spins % YIELD_EVERY == YIELD_EVERY - 1 {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

type Job = dyn Fn(usize, usize) + Sync;

struct Shared {
    epoch: AtomicUsize,
    /// The current job; valid while `pending > 0` (the caller waits for that).
    job: Mutex<Option<&'static Job>>,
    pending: AtomicUsize,
    sleeping: AtomicUsize,
    shutdown: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    threads: usize,
    affinity: Option<&'static str>,
}

/// CPU pinning asked for by `IE_TP_USE_AFFINITY=1` (mode `IE_TP_AFFINITY=compact|scatter`,
/// default compact; `IE_TP_USE_AFFINITY=compact|scatter` also works): thread `i` of `threads`
/// gets one CPU of the process's allowed set, `compact` in order (neighbouring threads share
/// caches), `scatter` spread evenly over the set (each thread gets more of the memory
/// bandwidth on multi-socket or multi-CCX parts). `None` when off or unavailable.
pub fn affinity_plan(threads: usize) -> Option<(&'static str, Vec<usize>)> {
    let on = std::env::var("IE_TP_USE_AFFINITY").ok()?;
    let mode = match (on.as_str(), std::env::var("IE_TP_AFFINITY").as_deref()) {
        ("scatter", _) | ("1", Ok("scatter")) => "scatter",
        ("compact", _) | ("1", _) => "compact",
        _ => return None,
    };
    let cpus = allowed_cpus();
    if cpus.is_empty() {
        return None;
    }
    Some((mode, place(mode, &cpus, threads)))
}

/// The CPU of each of `threads` threads: `compact` takes `cpus` in order, `scatter` spreads
/// the threads evenly over them.
fn place(mode: &str, cpus: &[usize], threads: usize) -> Vec<usize> {
    let n = cpus.len();
    (0..threads)
        .map(|i| match mode {
            "scatter" => cpus[(i * n / threads.max(1)) % n],
            _ => cpus[i % n],
        })
        .collect()
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bit set that sched_getaffinity fills in.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Restricts `thread` (of this process) to `cpus`; false if the OS refused.
fn set_cpus(thread: libc::pthread_t, cpus: &[usize]) -> bool {
    // SAFETY: `set` is a plain bit set; `thread` is a live thread of this process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::pthread_setaffinity_np(thread, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Pins the calling thread to `cpu`; false if the OS refused.
fn pin_current(cpu: usize) -> bool {
    // SAFETY: pthread_self names the calling thread.
    set_cpus(unsafe { libc::pthread_self() }, &[cpu])
}

impl Pool {
    /// A pool of `threads` threads in all: the caller's thread plus `threads - 1` workers.
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: Mutex::new(None),
            pending: AtomicUsize::new(0),
            sleeping: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let plan = affinity_plan(threads);
        let cpu_of = |idx: usize| plan.as_ref().map(|(_, p)| p[idx]);
        if let Some(cpu) = cpu_of(0) {
            pin_current(cpu);
        }
        // Unpinned workers start away from the caller's CPU (ADR 24). Left to the scheduler,
        // a new thread was queued behind the caller on its CPU in about half the runs, and the
        // two then shared it through the load. So each worker is spawned restricted to the
        // other CPUs (the kernel moves it there at once), and lifts the restriction itself
        // once it runs. `placed` keeps it from lifting it too early.
        let allowed = if plan.is_none() {
            allowed_cpus()
        } else {
            vec![]
        };
        // SAFETY: sched_getcpu has no preconditions (-1 on failure, matching no CPU).
        let here = unsafe { libc::sched_getcpu() };
        let away: Vec<usize> = allowed
            .iter()
            .copied()
            .filter(|&c| c as i64 != i64::from(here))
            .collect();
        let workers = (1..threads)
            .map(|idx| {
                let s = Arc::clone(&shared);
                let cpu = cpu_of(idx);
                let placed = Arc::new(AtomicBool::new(away.is_empty()));
                let (placed_w, allowed) = (Arc::clone(&placed), allowed.clone());
                let handle = std::thread::Builder::new()
                    .name(format!("clocher-worker-{idx}"))
                    .spawn(move || {
                        if let Some(cpu) = cpu {
                            pin_current(cpu);
                        } else if !allowed.is_empty() {
                            while !placed_w.load(Acquire) {
                                std::hint::spin_loop();
                            }
                            // SAFETY: pthread_self names the calling thread.
                            set_cpus(unsafe { libc::pthread_self() }, &allowed);
                        }
                        worker(s, idx, threads)
                    })
                    .expect("spawning a worker thread");
                if !away.is_empty() {
                    use std::os::unix::thread::JoinHandleExt;
                    set_cpus(handle.as_pthread_t(), &away);
                    placed.store(true, Release);
                }
                handle
            })
            .collect();
        Pool {
            shared,
            workers,
            threads,
            affinity: plan.map(|(mode, _)| mode),
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The pinning mode in force (`compact` / `scatter`), if any.
    pub fn affinity(&self) -> Option<&'static str> {
        self.affinity
    }

    /// Runs `f(thread_index, threads)` once on every thread of the pool and returns when all
    /// calls have returned.
    pub fn broadcast<'f>(&self, f: &'f (dyn Fn(usize, usize) + Sync + 'f)) {
        if self.threads == 1 {
            f(0, 1);
            return;
        }
        // SAFETY: the reference is only used by workers until `pending` reaches zero, and this
        // function does not return before that, so it never outlives `f`.
        let job: &'static Job = unsafe {
            std::mem::transmute::<&'f (dyn Fn(usize, usize) + Sync + 'f), &'static Job>(f)
        };
        *self.shared.job.lock().unwrap() = Some(job);
        self.shared.pending.store(self.threads - 1, SeqCst);
        self.shared.epoch.fetch_add(1, SeqCst);
        if self.shared.sleeping.load(SeqCst) > 0 {
            let _g = self.shared.lock.lock().unwrap();
            self.shared.wake.notify_all();
        }
        f(0, self.threads);
        let mut spins = 0;
        while self.shared.pending.load(Acquire) != 0 {
            backoff(spins);
            spins += 1;
        }
    }

    /// Splits `out` into contiguous row ranges, one per thread, each a multiple of `grain` rows
    /// (but the last), and calls `f(first_row, rows)` on each in parallel.
    pub fn par_rows(&self, out: &mut [f32], grain: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
        let n = out.len();
        let ptr = SendPtr(out.as_mut_ptr());
        self.broadcast(&|t, nt| {
            let (start, end) = shard(n, t, nt, grain);
            if start < end {
                // SAFETY: `shard` gives disjoint ranges inside `0..n` to distinct threads.
                let chunk =
                    unsafe { std::slice::from_raw_parts_mut(ptr.get().add(start), end - start) };
                f(start, chunk);
            }
        });
    }
}

/// Row range `[start, end)` of thread `t` of `nt`, rounded to `grain` rows.
pub fn shard(n: usize, t: usize, nt: usize, grain: usize) -> (usize, usize) {
    let grain = grain.max(1);
    let blocks = n.div_ceil(grain);
    let per = blocks / nt;
    let extra = blocks % nt;
    let first = t * per + t.min(extra);
    let count = per + usize::from(t < extra);
    ((first * grain).min(n), ((first + count) * grain).min(n))
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint sub-slices to the pool's threads.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

fn worker(s: Arc<Shared>, idx: usize, threads: usize) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0;
        while s.epoch.load(Acquire) == seen && !s.shutdown.load(Relaxed) {
            if spins < SPIN_ITERS {
                backoff(spins);
                spins += 1;
                continue;
            }
            s.sleeping.fetch_add(1, SeqCst);
            let g = s.lock.lock().unwrap();
            let _g = s
                .wake
                .wait_while(g, |_| {
                    s.epoch.load(SeqCst) == seen && !s.shutdown.load(SeqCst)
                })
                .unwrap();
            s.sleeping.fetch_sub(1, SeqCst);
        }
        if s.shutdown.load(Acquire) {
            return;
        }
        seen = s.epoch.load(Acquire);
        let job = s
            .job
            .lock()
            .unwrap()
            .expect("pool: epoch advanced without a job");
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(idx, threads))).is_err() {
            // The caller would wait forever for this thread; fail loudly instead.
            eprintln!("clocher: a worker thread panicked");
            std::process::abort();
        }
        s.pending.fetch_sub(1, Release);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap();
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A mutable slice that several pool threads write through at disjoint ranges.
pub struct SyncSlice<'a> {
    ptr: *mut f32,
    len: usize,
    _life: std::marker::PhantomData<&'a mut [f32]>,
}
// SAFETY: callers of `range` promise disjoint ranges across threads.
unsafe impl Send for SyncSlice<'_> {}
unsafe impl Sync for SyncSlice<'_> {}

impl<'a> SyncSlice<'a> {
    pub fn new(s: &'a mut [f32]) -> Self {
        SyncSlice {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            _life: std::marker::PhantomData,
        }
    }
    /// # Safety
    /// No two threads may hold overlapping ranges at the same time.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    pub unsafe fn range(&self, start: usize, len: usize) -> &mut [f32] {
        assert!(
            start + len <= self.len,
            "SyncSlice: range {start}+{len} past {}",
            self.len
        );
        std::slice::from_raw_parts_mut(self.ptr.add(start), len)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn placement_compact_and_scatter() {
        let cpus = [0, 1, 2, 3, 4, 5, 6, 7];
        assert_eq!(super::place("compact", &cpus, 3), [0, 1, 2]);
        assert_eq!(super::place("scatter", &cpus, 4), [0, 2, 4, 6]);
        assert_eq!(super::place("compact", &[4, 9], 3), [4, 9, 4]);
        assert!(!super::allowed_cpus().is_empty());
    }

    use super::*;

    #[test]
    fn shard_covers_every_row_once() {
        for n in [0, 1, 7, 64, 100, 577] {
            for nt in 1..5 {
                for grain in [1, 4, 16] {
                    let mut next = 0;
                    for t in 0..nt {
                        let (s, e) = shard(n, t, nt, grain);
                        assert!(s <= e, "n={n} nt={nt} grain={grain} t={t}: {s}>{e}");
                        if s < e {
                            assert_eq!(s, next, "n={n} nt={nt} grain={grain} t={t}");
                            next = e;
                        }
                    }
                    assert_eq!(next, n, "n={n} nt={nt} grain={grain}");
                }
            }
        }
    }

    #[test]
    fn par_rows_writes_every_row_across_many_jobs() {
        for threads in 1..4 {
            let pool = Pool::new(threads);
            for round in 0..200 {
                let mut out = vec![0.0f32; 1 + round * 3];
                pool.par_rows(&mut out, 4, &|start, chunk| {
                    for (i, v) in chunk.iter_mut().enumerate() {
                        *v += (start + i) as f32;
                    }
                });
                for (i, v) in out.iter().enumerate() {
                    assert_eq!(*v, i as f32, "threads={threads} round={round} row={i}");
                }
            }
        }
    }

    #[test]
    fn workers_wake_after_parking() {
        let pool = Pool::new(2);
        let hits = AtomicUsize::new(0);
        pool.broadcast(&|_, _| {
            hits.fetch_add(1, SeqCst);
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        pool.broadcast(&|_, _| {
            hits.fetch_add(1, SeqCst);
        });
        assert_eq!(hits.load(SeqCst), 4);
    }
}
