//! Wake-ups across processes for a shared ledger: each process with waiters
//! binds one Unix datagram socket beside the ledger file, named after its
//! [`Owner`] (pid and start time, so a reused pid never receives another
//! process's wake-ups); a releaser sends the waiter's token id (8 bytes) to
//! the socket of the waiter's process, after unlocking, without blocking.
//! The receiving process hands the id to the waiter (in the binding, a
//! thread that notifies the waiter's signal). No `unsafe`, no extra
//! dependency.

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Owner, Token};

/// The prefix of every wake socket of the ledger at `ledger`.
fn prefix(ledger: &Path) -> String {
    let name = ledger
        .file_name()
        .map_or_else(|| "ledger".into(), |n| n.to_string_lossy().into_owned());
    format!(".{name}.wake-")
}

/// The socket path of process `owner` for the ledger at `ledger`.
pub fn wake_path(ledger: &Path, owner: &Owner) -> PathBuf {
    ledger.with_file_name(format!("{}{}-{}", prefix(ledger), owner.pid, owner.start))
}

/// A process's end: bound while it listens, removed when dropped.
#[derive(Debug)]
pub struct WakeChannel {
    socket: UnixDatagram,
    path: PathBuf,
}

impl WakeChannel {
    /// Binds the channel of `owner` (a stale socket left by the same
    /// process, e.g. one that failed half-way, is replaced). Sockets of
    /// processes that are gone are removed on the way.
    pub fn bind(ledger: &Path, owner: &Owner) -> std::io::Result<Self> {
        remove_stale(ledger);
        let path = wake_path(ledger, owner);
        let socket = match UnixDatagram::bind(&path) {
            Err(e) if e.kind() == ErrorKind::AddrInUse => {
                std::fs::remove_file(&path)?;
                UnixDatagram::bind(&path)?
            }
            other => other?,
        };
        Ok(Self { socket, path })
    }

    /// Waits up to `timeout` (`None`: until one comes) for wake-ups; the
    /// token ids received (empty after the timeout). Every wake-up already
    /// queued is taken.
    pub fn recv(&self, timeout: Option<Duration>) -> std::io::Result<Vec<u64>> {
        let mut buf = [0u8; 16];
        let mut ids = Vec::new();
        let id = |n: usize, buf: &[u8; 16]| -> Option<u64> {
            let bytes: [u8; 8] = buf.get(..8).filter(|_| n == 8)?.try_into().ok()?;
            Some(u64::from_le_bytes(bytes))
        };
        self.socket.set_nonblocking(false)?;
        self.socket
            .set_read_timeout(timeout.map(|t| t.max(Duration::from_micros(1))))?;
        match self.socket.recv(&mut buf) {
            Ok(n) => ids.extend(id(n, &buf)),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(ids)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(ids),
            Err(e) => return Err(e),
        }
        // The rest without blocking.
        self.socket.set_nonblocking(true)?;
        while let Ok(n) = self.socket.recv(&mut buf) {
            ids.extend(id(n, &buf));
        }
        Ok(ids)
    }
}

impl Drop for WakeChannel {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes the socket of `owner` for the ledger at `ledger` (a process
/// leaving: its listening thread never drops its channel).
pub fn remove_own(ledger: &Path, owner: &Owner) {
    let _ = std::fs::remove_file(wake_path(ledger, owner));
}

/// Removes the wake sockets of processes that are gone (best effort).
pub fn remove_stale(ledger: &Path) {
    let Some(dir) = ledger.parent() else { return };
    let prefix = prefix(ledger);
    let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let owner = rest.split_once('-').and_then(|(pid, start)| {
            Some(Owner {
                pid: pid.parse().ok()?,
                start: start.parse().ok()?,
            })
        });
        if owner.is_some_and(|o| !o.alive()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Wakes the waiter of `token` (never blocks; a process that is gone or
/// whose queue is full is skipped: its waiters poll anyway). Returns
/// whether the wake-up was sent.
pub fn wake(ledger: &Path, token: &Token) -> bool {
    let Ok(sender) = UnixDatagram::unbound() else {
        return false;
    };
    if sender.set_nonblocking(true).is_err() {
        return false;
    }
    sender
        .send_to(&token.id.to_le_bytes(), wake_path(ledger, &token.owner))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_wake_reaches_the_process_and_a_missing_one_is_skipped() {
        let dir = std::env::temp_dir().join(format!("ps-wake-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let ledger = dir.join("gpu");
        let owner = Owner::current().unwrap_or_else(|| panic!("proc"));
        let token = Token { owner, id: 9 };
        assert!(!wake(&ledger, &token), "nobody bound yet");
        let chan = WakeChannel::bind(&ledger, &owner).unwrap_or_else(|e| panic!("{e}"));
        assert!(chan
            .recv(Some(Duration::from_millis(5)))
            .unwrap_or_default()
            .is_empty());
        let mut lat = Vec::new();
        for i in 0..200u64 {
            let l = ledger.clone();
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_micros(300));
                let at = Instant::now();
                assert!(wake(&l, &Token { owner, id: i }));
                at
            });
            let got = chan.recv(Some(Duration::from_secs(5))).unwrap_or_default();
            let woke = Instant::now();
            assert_eq!(got, vec![i]);
            let sent = t.join().unwrap_or_else(|_| Instant::now());
            lat.push(woke.saturating_duration_since(sent));
        }
        lat.sort();
        println!("wake latency median {:?}, p99 {:?}", lat[100], lat[198]);
        assert!(lat[100] < Duration::from_secs(1));
        // A stale socket of a dead process is removed; dropping removes ours.
        let dead = Owner {
            pid: owner.pid,
            start: owner.start + 1,
        };
        let stale = wake_path(&ledger, &dead);
        let _keep = UnixDatagram::bind(&stale);
        drop(chan);
        assert!(!wake_path(&ledger, &owner).exists());
        assert!(stale.exists());
        assert!(WakeChannel::bind(&ledger, &owner).is_ok());
        assert!(!stale.exists());
    }
}
