//! Where a ledger lives, opening it (refusing what is not ours), and its
//! lock.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use super::error::{io, Holder};
use super::owner::{my_groups, my_uid, stat_of, Owner};
use super::SharedError;

/// Owner, group and mode of a file or directory.
#[derive(Debug, Clone, Copy)]
pub(super) struct Perm {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl Perm {
    fn of(meta: &std::fs::Metadata) -> Self {
        Perm {
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode(),
        }
    }
}

/// Who this process is, for the checks.
#[derive(Debug, Clone)]
pub(super) struct Me {
    pub uid: u32,
    pub groups: Vec<u32>,
}

impl Me {
    pub(super) fn current() -> Result<Self, SharedError> {
        Ok(Me {
            uid: my_uid()?,
            groups: my_groups(),
        })
    }
}

/// A mode for a ledger: the owner reads and writes it, other users get
/// nothing (read access alone lets anyone take its lock).
pub fn check_mode(mode: u32) -> Result<u32, SharedError> {
    if mode & !0o777 != 0 || mode & 0o600 != 0o600 || mode & 0o007 != 0 {
        return Err(SharedError::Mode { mode });
    }
    Ok(mode)
}

fn group_asked(mode: u32) -> bool {
    mode & 0o060 == 0o060
}

/// A file of another user is refused, unless the request and the file are
/// open to the group (read and write), the file to nobody else, and its
/// group is one of ours. A file of ours open to other users is refused.
pub(super) fn check_owner(path: &Path, file: Perm, me: &Me, mode: u32) -> Result<(), SharedError> {
    if file.mode & 0o007 != 0 {
        return Err(SharedError::Exposed {
            path: path.to_owned(),
            mode: file.mode & 0o7777,
        });
    }
    let group_shared =
        group_asked(mode) && file.mode & 0o060 == 0o060 && me.groups.contains(&file.gid);
    if file.uid != me.uid && !group_shared {
        return Err(SharedError::Foreign {
            path: path.to_owned(),
            owner_uid: file.uid,
            my_uid: me.uid,
        });
    }
    Ok(())
}

/// The directory holding a ledger: nobody else may create, remove or
/// rename entries in it. A sticky directory of root or of ours (`/tmp`)
/// protects our entries; else it must be ours (or, for a group ledger, of
/// one of our groups) and writable by nobody else (by its group only for
/// a group ledger of that group).
pub(super) fn check_dir(path: &Path, dir: Perm, me: &Me, mode: u32) -> Result<(), SharedError> {
    let unsafe_dir = |why: String| SharedError::UnsafeDir {
        path: path.to_owned(),
        why,
    };
    if dir.mode & 0o1000 != 0 && (dir.uid == 0 || dir.uid == me.uid) {
        return Ok(());
    }
    let our_group = group_asked(mode) && me.groups.contains(&dir.gid);
    if dir.mode & 0o002 != 0 {
        return Err(unsafe_dir(format!(
            "is writable by every user (mode {:#o}, not sticky)",
            dir.mode & 0o7777
        )));
    }
    if dir.mode & 0o020 != 0 && !our_group {
        return Err(unsafe_dir(format!(
            "is writable by its group {} (mode {:#o}) and this ledger is not a group ledger of that group \
             (mode=0o660 by a member of the group)",
            dir.gid,
            dir.mode & 0o7777
        )));
    }
    if dir.uid != me.uid && !our_group {
        return Err(SharedError::Foreign {
            path: path.to_owned(),
            owner_uid: dir.uid,
            my_uid: me.uid,
        });
    }
    Ok(())
}

/// Where a shared ledger of `name` lives: `name` itself when it is a path
/// (holds a `/`), else `$XDG_RUNTIME_DIR/plugin-scheduling/<name>`, else
/// `<temp dir>/plugin-scheduling-<uid>/<name>`.
pub fn ledger_path(name: &str) -> Result<PathBuf, SharedError> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("plugin-scheduling"),
        None => std::env::temp_dir().join(format!("plugin-scheduling-{}", my_uid()?)),
    };
    Ok(dir.join(name))
}

/// An exclusively locked file, unlocked when dropped (also on a panic).
pub(super) struct Locked<'a>(pub(super) &'a File);

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // Unlocking cannot fail on a file we locked; if it did, closing the
        // handle releases the lock.
        let _ = self.0.unlock();
    }
}

const NOFOLLOW: i32 = libc::O_NOFOLLOW | libc::O_NONBLOCK;

fn symlink_or(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> SharedError {
    let path = path.to_owned();
    move |e| {
        let link = e.raw_os_error() == Some(libc::ELOOP)
            || (e.raw_os_error() == Some(libc::ENOTDIR)
                && std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()));
        if link {
            SharedError::Symlink { path }
        } else {
            io(&path, what)(e)
        }
    }
}

/// The directory of `path` (created private if missing, never followed if
/// a symlink), checked, opened; with the file's name in it.
fn open_dir(
    path: &Path,
    me: &Me,
    mode: u32,
    create: bool,
) -> Result<Option<(File, std::ffi::OsString)>, SharedError> {
    let name = path
        .file_name()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| SharedError::NotALedger {
            path: path.to_owned(),
            why: "the path names no file".into(),
        })?
        .to_owned();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut created = false;
    if create && std::fs::symlink_metadata(dir).is_err() {
        if let Some(up) = dir.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(up).map_err(io(up, "create its directory"))?;
        }
        match std::fs::create_dir(dir) {
            Ok(()) => created = true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(dir, "create its directory")(e)),
        }
    }
    let handle = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | NOFOLLOW)
        .open(dir)
    {
        Ok(h) => h,
        Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(symlink_or(dir, "open its directory")(e)),
    };
    if created {
        // Private, or open to the group when the file is (set through the
        // handle: the directory checked is the one changed).
        let dir_mode = if mode & 0o070 != 0 { 0o770 } else { 0o700 };
        handle
            .set_permissions(std::fs::Permissions::from_mode(dir_mode))
            .map_err(io(dir, "set its directory's mode"))?;
    }
    let meta = handle.metadata().map_err(io(dir, "stat its directory"))?;
    check_dir(dir, Perm::of(&meta), me, mode)?;
    Ok(Some((handle, name)))
}

/// `name` in the open directory `dir`, as a path the kernel resolves
/// through the open handle (`openat` without `unsafe`): a directory swapped
/// after its check is not the one used.
fn in_dir(dir: &File, name: &std::ffi::OsStr) -> PathBuf {
    use std::os::fd::AsRawFd;
    Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
}

/// Opens (creating with `mode`) the ledger file, refusing what is not ours:
/// a symlink, a device or FIFO (opened without blocking, then refused), a
/// file or directory of another user or open to others.
pub(super) fn open_file(path: &Path, mode: u32) -> Result<File, SharedError> {
    check_mode(mode)?;
    let me = Me::current()?;
    let Some((dir, name)) = open_dir(path, &me, mode, true)? else {
        return Err(io(path, "open its directory")(
            std::io::ErrorKind::NotFound.into(),
        ));
    };
    let at = in_dir(&dir, &name);
    let created = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(NOFOLLOW)
        .open(&at);
    let file = match created {
        // Exactly `mode`, whatever the umask (a group ledger needs g+rw).
        Ok(file) => {
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(io(path, "set its mode"))?;
            file
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(NOFOLLOW)
            .open(&at)
            .map_err(symlink_or(path, "open it"))?,
        Err(e) => return Err(symlink_or(path, "create it")(e)),
    };
    super::format::check_kind(path, &file)?;
    super::format::check_header(path, &file)?;
    let meta = file.metadata().map_err(io(path, "stat it"))?;
    check_owner(path, Perm::of(&meta), &me, mode)?;
    Ok(file)
}

/// Opens an existing ledger to read it (`None`: there is none), with the
/// checks of [`open_file`]; a group file is read as a group member would.
pub(super) fn open_existing(path: &Path) -> Result<Option<File>, SharedError> {
    let me = Me::current()?;
    // Its directory as a group ledger's would be (the file decides below).
    let Some((dir, name)) = open_dir(path, &me, 0o660, false)? else {
        return Ok(None);
    };
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(NOFOLLOW)
        .open(in_dir(&dir, &name))
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(symlink_or(path, "open it")(e)),
    };
    super::format::check_kind(path, &file)?;
    super::format::check_header(path, &file)?;
    let meta = file.metadata().map_err(io(path, "stat it"))?;
    // Reading only: a file open to others is shown (its use is refused).
    let mut perm = Perm::of(&meta);
    perm.mode &= !0o007;
    check_owner(path, perm, &me, meta.mode())?;
    Ok(Some(file))
}

/// Takes the exclusive lock of `file`, waiting at most `wait` (then
/// [`SharedError::Busy`] naming the holder); every 20 ms of waiting asks
/// `interrupted` whether to give up ([`SharedError::Interrupted`]).
/// A held lock is polled (first yielding, then sleeping up to 1 ms): a
/// blocking `flock` could wait forever on a stopped holder.
pub(super) fn lock<'a>(
    path: &Path,
    file: &'a File,
    wait: Duration,
    interrupted: &mut dyn FnMut() -> bool,
) -> Result<Locked<'a>, SharedError> {
    let start = Instant::now();
    let mut tries = 0u32;
    let mut asked = start;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Locked(file)),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(io(path, "lock it")(e));
                }
            }
        }
        let waited = start.elapsed();
        if waited >= wait {
            return Err(SharedError::Busy {
                path: path.to_owned(),
                waited,
                holder: holder_of(file),
            });
        }
        if asked.elapsed() >= Duration::from_millis(20) {
            asked = Instant::now();
            if interrupted() {
                return Err(SharedError::Interrupted {
                    path: path.to_owned(),
                });
            }
        }
        tries += 1;
        if tries < 50 {
            std::thread::yield_now();
        } else {
            let pause = Duration::from_micros(20u64 << (tries - 50).min(6));
            std::thread::sleep(pause.min(wait.saturating_sub(waited)));
        }
    }
}

/// The process holding the lock of `file`, from `/proc/locks` (matched by
/// device and inode).
pub(super) fn holder_of(file: &File) -> Option<Holder> {
    let meta = file.metadata().ok()?;
    let dev = meta.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; waiters' lines
        // carry "->" and are skipped.
        let mut f = line.split_whitespace().skip(1);
        let kind = f.next()?;
        if kind == "->" || kind != "FLOCK" {
            return None;
        }
        let pid: u32 = f.nth(2)?.parse().ok()?;
        let mut id = f.next()?.split(':');
        let (ma, mi, ino) = (id.next()?, id.next()?, id.next()?);
        let same_dev = u64::from_str_radix(ma, 16).ok() == Some(major)
            && u64::from_str_radix(mi, 16).ok() == Some(minor);
        (same_dev && ino.parse::<u64>().ok() == Some(meta.ino())).then(|| Holder {
            pid,
            name: Owner { pid, start: 0 }.name(),
            state: stat_of(pid).map(|(s, _)| s),
        })
    })
}
