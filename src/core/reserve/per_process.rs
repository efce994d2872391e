//! State that belongs to one process: after `fork()` the child builds its
//! own on first use and never touches its parent's, which a thread of the
//! parent may have held locked (or half-updated) at the moment of the fork;
//! that thread does not exist in the child, so such a lock would never be
//! released. (The same rule as the stats monitor's state.)

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::Once;

/// Forks since this process lineage installed the hook (bumped in every
/// child by the `pthread_atfork` child handler).
static FORKS: AtomicU64 = AtomicU64::new(0);
/// Whether the hook is installed: then [`process_generation`] is an atomic
/// load; else it falls back to the pid (a system call).
static HOOKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static INSTALL: Once = Once::new();

#[cfg(unix)]
extern "C" fn forked_child() {
    // Only a lock-free atomic add: allowed in a child of a threaded
    // process (async-signal-safe).
    FORKS.fetch_add(1, Ordering::AcqRel);
}

#[cfg(unix)]
extern "C" {
    fn pthread_atfork(
        prepare: Option<extern "C" fn()>,
        parent: Option<extern "C" fn()>,
        child: Option<extern "C" fn()>,
    ) -> std::ffi::c_int;
}

fn install() {
    INSTALL.call_once(|| {
        #[cfg(unix)]
        {
            // SAFETY: `pthread_atfork` only records the handler, a plain
            // `extern "C" fn()` that lives for the program and does nothing
            // but an atomic add. A child inherits the registration.
            let rc = unsafe { pthread_atfork(None, None, Some(forked_child)) };
            HOOKED.store(rc == 0, Ordering::Release);
        }
    });
}

/// Which process this is, cheaply: the same value in one process, another
/// one in each forked child. (Installed once, by the first
/// [`PerProcess::new`]; its `Once` cannot be caught half-way by a fork as
/// long as it completes before other threads fork, e.g. under Python's GIL.)
pub fn process_generation() -> u64 {
    install();
    if HOOKED.load(Ordering::Acquire) {
        FORKS.load(Ordering::Acquire)
    } else {
        u64::from(std::process::id()) | 1 << 40
    }
}

struct Slot<T> {
    /// [`process_generation`] where the value was built.
    pid: u64,
    value: T,
}

/// A `T` per process: [`PerProcess::get`] returns this process's value,
/// building it from the parent's (read without locking) in a forked child.
pub struct PerProcess<T> {
    /// Always a pointer from `Box::into_raw`; replaced (never freed while
    /// borrowed) in a forked child.
    current: AtomicPtr<Slot<T>>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for PerProcess<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerProcess").finish_non_exhaustive()
    }
}

// SAFETY: a `PerProcess<T>` hands out `&T` to any thread (so `T: Sync`) and
// moves `T`s between threads when created, replaced or dropped (so
// `T: Send`); it holds nothing else.
unsafe impl<T: Send + Sync> Send for PerProcess<T> {}
// SAFETY: as above; the pointer itself is only read and swapped atomically.
unsafe impl<T: Send + Sync> Sync for PerProcess<T> {}

impl<T> PerProcess<T> {
    pub fn new(value: T) -> Self {
        let slot = Box::new(Slot {
            pid: process_generation(),
            value,
        });
        Self {
            current: AtomicPtr::new(Box::into_raw(slot)),
        }
    }

    /// This process's value. In a forked child the first call builds it
    /// with `fresh`, given the parent's value: `fresh` must not block on
    /// it (use `try_lock`, or read only what never changes). The parent's
    /// value is leaked on purpose (once per fork): it may be locked or
    /// inconsistent, and other threads of the child may still borrow it.
    pub fn get<E>(&self, fresh: impl FnOnce(&T) -> Result<T, E>) -> Result<&T, E> {
        let pid = process_generation();
        let seen = self.current.load(Ordering::Acquire);
        // SAFETY: `current` only ever holds pointers from `Box::into_raw`
        // (in `new` and below). A slot is freed only in `drop`, which has
        // `&mut self`, so no `&T` borrowed from `&self` is alive then; a
        // slot swapped out below is never freed. So `seen` is valid for the
        // lifetime of `&self`.
        let slot = unsafe { &*seen };
        if slot.pid == pid {
            return Ok(&slot.value);
        }
        let made = Box::into_raw(Box::new(Slot {
            pid,
            value: fresh(&slot.value)?,
        }));
        match self
            .current
            .compare_exchange(seen, made, Ordering::AcqRel, Ordering::Acquire)
        {
            // SAFETY: `made` came from `Box::into_raw` just above and is now
            // owned by `current` (freed only in `drop`).
            Ok(_) => Ok(unsafe { &(*made).value }),
            Err(actual) => {
                // Another thread of this child installed its own first.
                // SAFETY: `made` was never published: this is its only owner.
                drop(unsafe { Box::from_raw(made) });
                // SAFETY: as for `seen` above.
                Ok(unsafe { &(*actual).value })
            }
        }
    }

    /// This process's value, if it was built here (never after a fork
    /// until [`PerProcess::get`] built the child's own).
    pub fn here(&self) -> Option<&T> {
        // SAFETY: as in `get`.
        let slot = unsafe { &*self.current.load(Ordering::Acquire) };
        (slot.pid == process_generation()).then_some(&slot.value)
    }
}

impl<T> Drop for PerProcess<T> {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Box::into_raw` and `&mut self`
        // means nothing borrows it; the slots replaced after forks were
        // leaked, not freed, so this one is freed once.
        drop(unsafe { Box::from_raw(*self.current.get_mut()) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn the_generation_is_stable_in_one_process() {
        let g = process_generation();
        assert_eq!(g, process_generation());
        assert!(HOOKED.load(Ordering::Acquire));
    }

    #[test]
    fn the_value_is_this_processs_own() {
        let p = PerProcess::new(Mutex::new(1));
        let v = p.get(|_| Err::<Mutex<i32>, ()>(()));
        assert_eq!(
            v.map(|m| *m.lock().unwrap_or_else(|e| e.into_inner())),
            Ok(1)
        );
        assert!(p.here().is_some());
    }

    #[test]
    fn a_child_builds_its_own_without_locking_the_parents() {
        let p = PerProcess::new(Mutex::new(1));
        // What a forked child sees: a slot of another pid, its lock held.
        let held = p.get(|_| Err::<Mutex<i32>, ()>(())).map(|m| m.lock());
        // SAFETY: test only; no other thread uses `p`.
        unsafe { (*p.current.load(Ordering::Acquire)).pid ^= 1 };
        assert!(p.here().is_none());
        let fresh = p.get(|parent| {
            assert!(parent.try_lock().is_err());
            Ok::<_, ()>(Mutex::new(2))
        });
        assert_eq!(
            fresh.map(|m| *m.lock().unwrap_or_else(|e| e.into_inner())),
            Ok(2)
        );
        drop(held);
    }
}
