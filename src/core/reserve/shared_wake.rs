//! Wake-ups across processes for a shared ledger: each waiting process
//! binds a Unix datagram socket named after its [`Token`] beside the ledger
//! file; a releaser sends one byte to the socket of each waiter it must wake,
//! after unlocking, without blocking. The waiter sleeps in `recv` with a
//! timeout (so a caller can check Ctrl-C between slices), or registers the
//! socket's fd with an event loop. No `unsafe`, no extra dependency.

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::shared::Token;

/// The socket path of `token` for the ledger at `ledger`.
pub fn wake_path(ledger: &Path, token: &Token) -> PathBuf {
    let name = ledger
        .file_name()
        .map_or_else(|| "ledger".into(), |n| n.to_string_lossy().into_owned());
    ledger.with_file_name(format!(".{name}.wake-{}-{}", token.owner.pid, token.id))
}

/// A waiter's end: bound while it waits, removed when dropped.
#[derive(Debug)]
pub struct WakeChannel {
    socket: UnixDatagram,
    path: PathBuf,
}

impl WakeChannel {
    /// Binds the channel of `token` (a stale socket of a dead process with
    /// the same pid and id is replaced).
    pub fn bind(ledger: &Path, token: &Token) -> std::io::Result<Self> {
        let path = wake_path(ledger, token);
        let socket = match UnixDatagram::bind(&path) {
            Err(e) if e.kind() == ErrorKind::AddrInUse => {
                std::fs::remove_file(&path)?;
                UnixDatagram::bind(&path)?
            }
            other => other?,
        };
        Ok(Self { socket, path })
    }

    /// Waits up to `timeout` for a wake-up; `true` if one came. Every wake
    /// already queued is consumed.
    pub fn wait(&self, timeout: Duration) -> std::io::Result<bool> {
        let mut buf = [0u8; 16];
        self.socket.set_nonblocking(false)?;
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_micros(1))))?;
        let woke = match self.socket.recv(&mut buf) {
            Ok(_) => true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(e) => return Err(e),
        };
        // Drain the rest without blocking.
        self.socket.set_nonblocking(true)?;
        while self.socket.recv(&mut buf).is_ok() {}
        Ok(woke)
    }

    /// The socket's file descriptor, for an event loop's reader.
    pub fn fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.socket.as_raw_fd()
    }
}

impl Drop for WakeChannel {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Wakes the waiter of `token` (never blocks; a waiter that is gone or
/// whose queue is full is skipped: it polls anyway). Returns whether the
/// byte was sent.
pub fn wake(ledger: &Path, token: &Token) -> bool {
    let Ok(sender) = UnixDatagram::unbound() else {
        return false;
    };
    if sender.set_nonblocking(true).is_err() {
        return false;
    }
    sender.send_to(&[1], wake_path(ledger, token)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::super::shared::Owner;
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_wake_reaches_the_waiter_and_a_missing_one_is_skipped() {
        let dir = std::env::temp_dir().join(format!("ps-wake-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let ledger = dir.join("gpu");
        let owner = Owner::current().unwrap_or_else(|| panic!("proc"));
        let token = Token { owner, id: 9 };
        assert!(!wake(&ledger, &token), "nobody bound yet");
        let chan = WakeChannel::bind(&ledger, &token).unwrap_or_else(|e| panic!("{e}"));
        assert!(!chan.wait(Duration::from_millis(5)).unwrap_or(true));
        let mut lat = Vec::new();
        for _ in 0..200 {
            let l = ledger.clone();
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_micros(300));
                let at = Instant::now();
                assert!(wake(&l, &token));
                at
            });
            assert!(chan.wait(Duration::from_secs(5)).unwrap_or(false));
            let woke = Instant::now();
            let sent = t.join().unwrap_or_else(|_| Instant::now());
            lat.push(woke.saturating_duration_since(sent));
        }
        lat.sort();
        println!("wake latency median {:?}, p99 {:?}", lat[100], lat[198]);
        assert!(lat[100] < Duration::from_secs(1));
        // Rebinding over a stale socket works; dropping removes it.
        drop(chan);
        assert!(!wake_path(&ledger, &token).exists());
        let _stale = std::os::unix::net::UnixDatagram::bind(wake_path(&ledger, &token));
        assert!(WakeChannel::bind(&ledger, &token).is_ok());
    }
}
