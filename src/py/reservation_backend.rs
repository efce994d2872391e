//! Where a `ReservationScheduler`'s queue lives: in this process, or in a
//! shared ledger file every process of the user on the host uses
//! (`plugin_scheduling_core::reserve::shared`). Either way the queue is the
//! core's `ReservationQueue`, its waiters are reached by [`Token`]s, and
//! this module maps tokens to the waiters' signals: a waiter of this
//! process is notified directly, one of another process through its wake
//! socket (`shared_wake`), which a thread of that process turns into the
//! same notify.
//!
//! The wake thread is started by the first shared scheduler of a ledger in
//! a process (never at import), again in a forked child, and only calls
//! Python through the async wakers (which attach only while the
//! interpreter runs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError, Weak};
use std::time::Duration;

use plugin_scheduling_core::error::Error;
use plugin_scheduling_core::reserve::peaks::Peaks;
use plugin_scheduling_core::reserve::per_process::PerProcess;
use plugin_scheduling_core::reserve::queue::{ReservationQueue, WaiterId};
use plugin_scheduling_core::reserve::shared::{
    Done, Owner, Owners, SharedError, SharedQueue, Token,
};
use plugin_scheduling_core::reserve::shared_wake::{remove_own, remove_stale, wake, WakeChannel};
use plugin_scheduling_core::wake::WakeSignal;

use pyo3::prelude::*;

use super::errors::core_error;
use super::waiting::AsyncWaker;

pub type Signal = Arc<WakeSignal<AsyncWaker>>;
pub type Queue = ReservationQueue<Token>;

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent (whole inserts,
    // removals and assignments), so recovering from poisoning is sound.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The signals of a scheduler's waiters in this process, by token id, and
/// the event loop of each async waiter (to tell when one is gone).
#[derive(Default)]
pub struct Registry(
    Mutex<HashMap<u64, Signal>>,
    Mutex<HashMap<WaiterId, Py<PyAny>>>,
);

impl Registry {
    /// Remembers the event loop an async waiter runs on.
    pub fn watch_loop(&self, waiter: WaiterId, event_loop: Py<PyAny>) {
        lock(&self.1).insert(waiter, event_loop);
    }

    pub fn forget_loop(&self, waiter: WaiterId) {
        let gone = lock(&self.1).remove(&waiter);
        drop(gone);
    }

    /// The event loop of an async waiter of this process, if it is one.
    pub fn loop_of(&self, py: Python<'_>, waiter: WaiterId) -> Option<Py<PyAny>> {
        lock(&self.1).get(&waiter).map(|l| l.clone_ref(py))
    }

    /// Every remembered loop, or none while another thread holds the map
    /// (for the garbage collector, which must not block).
    pub fn try_visit_loops(
        &self,
        visit: &pyo3::gc::PyVisit<'_>,
    ) -> Result<(), pyo3::PyTraverseError> {
        match self.1.try_lock() {
            Ok(m) => m.values().try_for_each(|l| visit.call(l)),
            Err(_) => Ok(()),
        }
    }

    pub fn clear_loops(&self) {
        let all = std::mem::take(&mut *lock(&self.1));
        drop(all);
    }

    pub fn insert(&self, id: u64, signal: Signal) {
        lock(&self.0).insert(id, signal);
    }

    pub fn remove(&self, id: u64) {
        lock(&self.0).remove(&id);
    }

    pub fn notify(&self, id: u64) -> bool {
        let signal = lock(&self.0).get(&id).cloned();
        signal.map(|s| s.notify()).is_some()
    }

    /// Every signal (a snapshot), or none while another thread holds the
    /// map (for the garbage collector, which must not block).
    pub fn try_signals(&self) -> Vec<Signal> {
        self.0
            .try_lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn signals(&self) -> Vec<Signal> {
        lock(&self.0).values().cloned().collect()
    }
}

/// Token ids, unique in this process (across schedulers: one wake socket
/// per process and ledger serves them all).
pub fn next_token_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Builds a process's own queue (a forked child's, when its parent's was
/// locked at the fork).
pub type Rebuild = Box<dyn Fn() -> Queue + Send + Sync>;

/// Opens this process's own handle on a shared ledger (a forked child's).
pub type Reopen = Box<dyn Fn() -> Result<SharedQueue, SharedError> + Send + Sync>;

/// Where the queue lives. Either way the state is this process's own: a
/// forked child never locks what its parent's threads may have held locked
/// at the fork (`PerProcess`).
pub enum Backend {
    Local {
        queue: PerProcess<Mutex<Queue>>,
        rebuild: Rebuild,
    },
    Shared {
        path: PathBuf,
        queue: PerProcess<SharedQueue>,
        reopen: Reopen,
    },
}

/// What an operation on a shared ledger found besides its result: grants
/// and waiters of processes that are gone (to log, and to let the line move).
#[derive(Default)]
pub struct Reclaims {
    pub grants: Vec<(String, u32)>,
    pub waiters: Vec<(String, u32)>,
}

impl Reclaims {
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty() && self.waiters.is_empty()
    }
}

impl Backend {
    pub fn local(queue: Queue, rebuild: Rebuild) -> Self {
        Backend::Local {
            queue: PerProcess::new(Mutex::new(queue)),
            rebuild,
        }
    }

    pub fn shared_at(queue: SharedQueue, reopen: Reopen) -> Self {
        Backend::Shared {
            path: queue.path().to_owned(),
            queue: PerProcess::new(queue),
            reopen,
        }
    }

    /// This process's queue. In a forked child: the parent's queue when
    /// no thread held it at the fork (its waiters dropped: none of them
    /// waits in the child), else a fresh one.
    fn local_queue<'a>(queue: &'a PerProcess<Mutex<Queue>>, rebuild: &Rebuild) -> &'a Mutex<Queue> {
        let fresh = |parent: &Mutex<Queue>| {
            let mut q = match parent.try_lock() {
                Ok(mut q) => std::mem::replace(&mut *q, rebuild()),
                Err(TryLockError::Poisoned(p)) => {
                    std::mem::replace(&mut *p.into_inner(), rebuild())
                }
                Err(TryLockError::WouldBlock) => rebuild(),
            };
            q.check_fork();
            Ok::<_, std::convert::Infallible>(Mutex::new(q))
        };
        match queue.get(fresh) {
            Ok(q) => q,
            Err(never) => match never {},
        }
    }

    /// This process's handle on the shared ledger (a forked child opens
    /// its own).
    fn shared_queue<'a>(
        queue: &'a PerProcess<SharedQueue>,
        reopen: &Reopen,
    ) -> PyResult<&'a SharedQueue> {
        queue
            .get(|_| reopen())
            .map_err(|e| core_error(Error::Shared(e)))
    }

    /// This process as the ledger knows it.
    pub fn me(&self) -> Owner {
        let pid = std::process::id();
        match self {
            Backend::Local { .. } => Owner { pid, start: 0 },
            Backend::Shared { queue, reopen, .. } => match Self::shared_queue(queue, reopen) {
                Ok(s) => s.me(),
                Err(_) => Owner::current().unwrap_or(Owner { pid, start: 0 }),
            },
        }
    }

    /// The shared ledger's file, if the queue is one.
    pub fn shared(&self) -> Option<&Path> {
        match self {
            Backend::Local { .. } => None,
            Backend::Shared { path, .. } => Some(path),
        }
    }

    /// Runs `op` on the queue (atomically; for a shared ledger, as every
    /// process sees it), with the process holding each grant (empty in
    /// one process).
    ///
    /// On a shared ledger the GIL is released meanwhile (another process
    /// may hold the file's lock), and a signal while waiting for the lock
    /// is checked: its exception (Ctrl-C's `KeyboardInterrupt`) is raised.
    pub fn with<R: Send>(
        &self,
        py: Python<'_>,
        op: impl FnOnce(&mut Queue, &Owners) -> R + Send,
    ) -> PyResult<(R, Reclaims)> {
        match self {
            Backend::Local { queue, rebuild } => {
                let owners = Owners::new();
                let q = Self::local_queue(queue, rebuild);
                Ok((op(&mut lock(q), &owners), Reclaims::default()))
            }
            Backend::Shared { queue, reopen, .. } => {
                let s = Self::shared_queue(queue, reopen)?;
                let Done {
                    value,
                    reclaimed,
                    dropped,
                } = interruptible(py, |interrupted| s.with_owned_or(op, interrupted))?;
                let reclaims = Reclaims {
                    grants: reclaimed
                        .into_iter()
                        .map(|h| (h.grant.plugin, h.owner.pid))
                        .collect(),
                    waiters: dropped
                        .into_iter()
                        .map(|w| (w.plugin, w.waker.owner.pid))
                        .collect(),
                };
                Ok((value, reclaims))
            }
        }
    }

    /// Runs `op` on the queue as it is now, changing nothing: on a shared
    /// ledger, a consistent state read without the file's lock (a stopped
    /// process holding it does not stop a view).
    pub fn read<R: Send>(
        &self,
        py: Python<'_>,
        op: impl FnOnce(&mut Queue, &Owners) -> R + Send,
    ) -> PyResult<R> {
        match self {
            Backend::Local { queue, rebuild } => {
                let q = Self::local_queue(queue, rebuild);
                Ok(op(&mut lock(q), &Owners::new()))
            }
            Backend::Shared { queue, reopen, .. } => {
                let s = Self::shared_queue(queue, reopen)?;
                py.detach(|| s.read(op))
                    .map_err(|e| core_error(Error::Shared(e)))
            }
        }
    }

    /// Runs `f` on this process's peaks: the queue's in one process; on a
    /// shared ledger they are the process's own, so the file is not touched
    /// (the GIL is released while another thread's operation holds them).
    pub fn peaks<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Peaks) -> R + Send,
    ) -> PyResult<R> {
        match self {
            Backend::Local { queue, rebuild } => {
                Ok(f(lock(Self::local_queue(queue, rebuild)).peaks_mut()))
            }
            Backend::Shared { queue, reopen, .. } => {
                let s = Self::shared_queue(queue, reopen)?;
                py.detach(|| s.with_peaks(f))
                    .map_err(|e| core_error(Error::Shared(e)))
            }
        }
    }

    /// Wakes the waiters of `tokens`: this process's through `registry`,
    /// others' through their wake sockets. Call after unlocking.
    pub fn wake(&self, registry: &Registry, tokens: Vec<Token>) {
        let pid = std::process::id();
        for t in tokens {
            if t.owner.pid != pid {
                if let Some(path) = self.shared() {
                    wake(path, &t);
                }
            } else if !registry.notify(t.id) {
                // Another scheduler of this process on the same ledger.
                if let Some(path) = self.shared() {
                    notify_listeners(path, t.id);
                }
            }
        }
    }
}

/// Runs `f` with the GIL released; `f` hands its lock wait the callback
/// that, on a signal, runs Python's signal handlers: when one raises
/// (Ctrl-C's `KeyboardInterrupt`), the wait gives up and that is raised.
pub fn interruptible<T: Send>(
    py: Python<'_>,
    f: impl FnOnce(&mut dyn FnMut() -> bool) -> Result<T, SharedError> + Send,
) -> PyResult<T> {
    let mut raised: Option<PyErr> = None;
    let out = py.detach(|| {
        f(&mut || {
            Python::attach(|py| match py.check_signals() {
                Ok(()) => false,
                Err(e) => {
                    raised = Some(e);
                    true
                }
            })
        })
    });
    match (out, raised) {
        (Ok(v), _) => Ok(v),
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => Err(core_error(Error::Shared(e))),
    }
}

/// One wake thread per process and ledger: the registries it serves.
struct Listener {
    path: PathBuf,
    pid: u32,
    registries: Arc<Mutex<Vec<Weak<Registry>>>>,
}

fn listeners() -> &'static Mutex<Vec<Listener>> {
    static LISTENERS: Mutex<Vec<Listener>> = Mutex::new(Vec::new());
    &LISTENERS
}

/// Makes sure this process listens for wake-ups on the ledger at `path`
/// and hands those for `registry`'s waiters to it (after `fork()` the
/// child starts its own thread). An error: no socket (waiters then poll).
pub fn listen(path: &Path, me: Owner, registry: &Arc<Registry>) -> std::io::Result<()> {
    let mut all = lock(listeners());
    all.retain(|l| l.pid == me.pid);
    if let Some(l) = all.iter().find(|l| l.path == path) {
        let mut regs = lock(&l.registries);
        regs.retain(|r| r.strong_count() > 0);
        if !regs.iter().any(|r| r.as_ptr() == Arc::as_ptr(registry)) {
            regs.push(Arc::downgrade(registry));
        }
        return Ok(());
    }
    let channel = WakeChannel::bind(path, &me)?;
    if all.is_empty() {
        // This process's sockets go at exit (sockets of processes that
        // ended without it are swept by the next process binding one).
        let _ = Python::attach(|py| -> PyResult<()> {
            let f = pyo3::wrap_pyfunction!(remove_wake_sockets, py)?;
            py.import("atexit")?.call_method1("register", (f,))?;
            Ok(())
        });
    }
    let registries = Arc::new(Mutex::new(vec![Arc::downgrade(registry)]));
    let served = Arc::clone(&registries);
    std::thread::Builder::new()
        .name("plugin-scheduling-wake".into())
        .spawn(move || serve(&channel, &served))?;
    all.push(Listener {
        path: path.to_owned(),
        pid: me.pid,
        registries,
    });
    Ok(())
}

/// Removes this process's wake sockets (at interpreter exit) and those of
/// processes that are gone.
#[pyfunction]
fn remove_wake_sockets() {
    let pid = std::process::id();
    let Some(me) = Owner::current() else { return };
    for l in lock(listeners()).iter().filter(|l| l.pid == pid) {
        remove_own(&l.path, &me);
        remove_stale(&l.path);
    }
}

/// Notifies waiter `id` of whichever scheduler of this process on the
/// ledger at `path` has it.
fn notify_listeners(path: &Path, id: u64) {
    let pid = std::process::id();
    let regs: Vec<Arc<Registry>> = lock(listeners())
        .iter()
        .filter(|l| l.pid == pid && l.path == path)
        .flat_map(|l| {
            lock(&l.registries)
                .iter()
                .filter_map(Weak::upgrade)
                .collect::<Vec<_>>()
        })
        .collect();
    for r in regs {
        if r.notify(id) {
            return;
        }
    }
}

/// The wake thread: each token id received notifies its waiter.
fn serve(channel: &WakeChannel, registries: &Mutex<Vec<Weak<Registry>>>) {
    loop {
        match channel.recv(None) {
            Ok(ids) => {
                let regs: Vec<Arc<Registry>> =
                    lock(registries).iter().filter_map(Weak::upgrade).collect();
                for id in ids {
                    for r in &regs {
                        if r.notify(id) {
                            break;
                        }
                    }
                }
            }
            // A failing socket: waiters poll; try again shortly.
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
