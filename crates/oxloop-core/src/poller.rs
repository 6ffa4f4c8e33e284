//! Level-triggered readiness on epoll.
//!
//! asyncio's `add_reader`/`add_writer` are level-triggered: a reader that does not
//! drain its fd is called again on the next iteration. This wrapper keeps exactly
//! that contract (mio is edge-triggered only, which is why it is not used here).
//! Events are reported as `selectors.EpollSelector` reports them: `EPOLLERR` and
//! `EPOLLHUP` make an fd both readable and writable, so the owner wakes up and sees
//! the error from its own syscall.
//!
//! All methods take `&self`: epoll itself is thread-safe, and the loop waits without
//! holding any lock while other threads may (un)register fds.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use crate::cvt;

/// Which readiness an fd is registered for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interest {
    /// Wake when the fd is readable.
    pub read: bool,
    /// Wake when the fd is writable.
    pub write: bool,
}

impl Interest {
    /// Read interest only.
    pub const READ: Self = Self {
        read: true,
        write: false,
    };
    /// Write interest only.
    pub const WRITE: Self = Self {
        read: false,
        write: true,
    };
    /// Both directions.
    pub const BOTH: Self = Self {
        read: true,
        write: true,
    };

    /// True when neither direction is wanted.
    #[must_use]
    pub fn is_empty(self) -> bool {
        !self.read && !self.write
    }

    fn epoll_bits(self) -> u32 {
        let mut bits = 0;
        if self.read {
            bits |= libc::EPOLLIN as u32;
        }
        if self.write {
            bits |= libc::EPOLLOUT as u32;
        }
        bits
    }
}

/// One readiness report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The token given at registration.
    pub token: u64,
    /// Readable (or in error / hung up).
    pub readable: bool,
    /// Writable (or in error / hung up).
    pub writable: bool,
}

/// A reusable buffer of events filled by [`Poller::wait`].
pub struct Events {
    buf: Vec<libc::epoll_event>,
    len: usize,
}

impl Default for Events {
    /// An empty buffer (a placeholder while the real one is lent out).
    fn default() -> Self {
        Self {
            buf: Vec::new(),
            len: 0,
        }
    }
}

impl Events {
    /// A buffer that receives at most `capacity` events per wait.
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
            len: 0,
        }
    }

    /// Forgets the events of the last wait.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Number of events from the last wait.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the last wait reported nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The event at `index` (< `len()`).
    #[must_use]
    pub fn get(&self, index: usize) -> Option<Event> {
        if index >= self.len {
            return None;
        }
        let raw = self.buf[index];
        let bits = raw.events;
        // CPython: selectors.EpollSelector.select maps anything but EPOLLIN to
        // writable and anything but EPOLLOUT to readable.
        Some(Event {
            token: raw.u64,
            readable: bits & !(libc::EPOLLOUT as u32) != 0,
            writable: bits & !(libc::EPOLLIN as u32) != 0,
        })
    }

    /// Iterates over the events of the last wait.
    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        (0..self.len).filter_map(|i| self.get(i))
    }
}

/// An epoll instance in level-triggered mode.
///
/// [`Poller::close`] releases the fd early (`loop.close()`); afterwards every
/// operation fails with `EBADF`.
pub struct Poller {
    epfd: AtomicI32,
}

impl Poller {
    /// Creates a new epoll instance (close-on-exec).
    ///
    /// # Errors
    /// The `epoll_create1` error.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the returned fd is owned by us alone.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Self {
            epfd: AtomicI32::new(fd),
        })
    }

    /// Closes the epoll fd now. Idempotent.
    pub fn close(&self) {
        let fd = self.epfd.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: we owned `fd` and nobody can use it after the swap above.
            unsafe { libc::close(fd) };
        }
    }

    /// Replaces the epoll instance with a fresh, empty one (after `fork()`: the
    /// child must not share the parent's interest list). The caller registers its
    /// fds again. Does nothing on a closed poller.
    ///
    /// # Errors
    /// The `epoll_create1` error; the old instance is kept then.
    pub fn reopen(&self) -> io::Result<()> {
        if self.is_closed() {
            return Ok(());
        }
        // SAFETY: plain syscall; the returned fd is owned by us alone.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        let old = self.epfd.swap(fd, Ordering::AcqRel);
        if old >= 0 {
            // SAFETY: we owned `old`; nothing can use it after the swap.
            unsafe { libc::close(old) };
        }
        Ok(())
    }

    /// True once [`Poller::close`] ran.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.epfd.load(Ordering::Acquire) < 0
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: interest.epoll_bits(),
            u64: token,
        };
        // SAFETY: `ev` lives across the call; epoll_ctl validates `fd` itself.
        cvt(unsafe { libc::epoll_ctl(self.epfd.load(Ordering::Acquire), op, fd, &raw mut ev) })?;
        Ok(())
    }

    /// Registers `fd`.
    ///
    /// # Errors
    /// `EBADF` for a closed fd, `EEXIST` when already registered, `EPERM` for
    /// files epoll cannot watch (regular files).
    pub fn add(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, interest)
    }

    /// Changes the interest or token of a registered `fd`.
    ///
    /// # Errors
    /// `ENOENT` when `fd` is not registered (for example because it was closed,
    /// which removes it from epoll silently).
    pub fn modify(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, interest)
    }

    /// Unregisters `fd`.
    ///
    /// # Errors
    /// `ENOENT` / `EBADF` when it was not registered or already closed.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, Interest::default())
    }

    /// Waits for readiness. `None` blocks until an event; a timeout is rounded up to
    /// whole milliseconds (as `selectors` does) so the loop never wakes early.
    ///
    /// # Errors
    /// `ErrorKind::Interrupted` when a signal arrived: the caller then runs the
    /// signal handlers and polls again on its next iteration.
    pub fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<usize> {
        let timeout_ms = match timeout {
            None => -1,
            Some(t) => {
                let ms = t.as_nanos().div_ceil(1_000_000);
                libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
            }
        };
        events.len = 0;
        let cap = libc::c_int::try_from(events.buf.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: the buffer holds `cap` writable epoll_event slots.
        let n = cvt(unsafe {
            libc::epoll_wait(
                self.epfd.load(Ordering::Acquire),
                events.buf.as_mut_ptr(),
                cap,
                timeout_ms,
            )
        })?;
        events.len = usize::try_from(n).unwrap_or(0);
        Ok(events.len)
    }
}

/// One registration of an epoll instance, as the kernel lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The watched fd number.
    pub fd: RawFd,
    /// The token it was registered with.
    pub token: u64,
    /// The inode of the file it was registered for (which file, not which number).
    pub inode: u64,
}

impl Poller {
    /// What the kernel has registered in this instance, from
    /// `/proc/self/fdinfo/<epfd>` (after `fork()` this tells which registrations
    /// still refer to the file that was registered, and not to a reuse of its number).
    ///
    /// # Errors
    /// Reading `/proc` failed (not mounted), or the poller is closed.
    pub fn registrations(&self) -> io::Result<Vec<Registration>> {
        let epfd = self.epfd.load(Ordering::Acquire);
        if epfd < 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{epfd}"))?;
        Ok(text.lines().filter_map(parse_fdinfo_line).collect())
    }
}

/// `tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x` (fs/eventpoll.c).
fn parse_fdinfo_line(line: &str) -> Option<Registration> {
    let mut fd = None;
    let mut token = None;
    let mut inode = None;
    let mut words = line.split_whitespace();
    while let Some(word) = words.next() {
        let (key, value) = match word.split_once(':') {
            Some((key, "")) => (key, words.next()?),
            Some((key, value)) => (key, value),
            None => continue,
        };
        match key {
            "tfd" => fd = value.parse().ok(),
            "data" => token = u64::from_str_radix(value, 16).ok(),
            "ino" => inode = u64::from_str_radix(value, 16).ok(),
            _ => {}
        }
    }
    Some(Registration {
        fd: fd?,
        token: token?,
        inode: inode?,
    })
}

/// The inode of the file `fd` refers to now.
///
/// # Errors
/// The `fstat` error (`EBADF` for a closed fd).
pub fn inode_of(fd: RawFd) -> io::Result<u64> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable for the call; fstat validates `fd` itself.
    cvt(unsafe { libc::fstat(fd, &raw mut st) })?;
    Ok(st.st_ino)
}

impl AsRawFd for Poller {
    fn as_raw_fd(&self) -> RawFd {
        self.epfd.load(Ordering::Acquire)
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.close();
    }
}
