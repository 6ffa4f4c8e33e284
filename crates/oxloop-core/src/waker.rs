//! Wakes a loop blocked in [`crate::poller::Poller::wait`] from another thread.
//!
//! An eventfd registered in the poller. The loop publishes a "sleeping" flag before
//! it blocks; `call_soon_threadsafe` writes the eventfd only when it is the one that
//! clears the flag, so a busy loop pays no syscall per cross-thread call and a
//! sleeping loop pays one per wake-up, not one per call (the stdlib writes its
//! self-pipe every time; libuv's `uv_async_send` coalesces the same way).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use crate::cvt;

/// An eventfd plus the loop's "about to block" flag.
pub struct Waker {
    fd: AtomicI32,
    sleeping: AtomicBool,
}

impl Waker {
    /// Creates a non-blocking, close-on-exec eventfd.
    ///
    /// # Errors
    /// The `eventfd` error.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned by us alone.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        Ok(Self {
            fd: AtomicI32::new(fd),
            sleeping: AtomicBool::new(false),
        })
    }

    /// The loop calls this right before it blocks (`true`) and right after (`false`).
    pub fn set_sleeping(&self, sleeping: bool) {
        self.sleeping.store(sleeping, Ordering::SeqCst);
    }

    /// Wakes the loop if it is (about to be) blocked; a no-op otherwise. Only the
    /// first caller after the loop went to sleep pays the syscall: it clears the
    /// flag, and the wake-up it sends is pending until the loop drains it.
    pub fn wake_if_sleeping(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            self.wake();
        }
    }

    /// Makes the eventfd readable unconditionally.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. EAGAIN (counter saturated) still
        // leaves the fd readable, which is all a wake-up needs, so the result is ignored.
        let _ = unsafe { libc::write(self.fd.load(Ordering::Acquire), (&raw const one).cast(), 8) };
    }

    /// Clears a pending wake-up.
    pub fn drain(&self) {
        let mut buf: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64. EAGAIN means nothing was
        // pending, which is fine, so the result is ignored.
        let _ = unsafe { libc::read(self.fd.load(Ordering::Acquire), (&raw mut buf).cast(), 8) };
    }
}

impl Waker {
    /// Replaces the eventfd with a fresh one (after `fork()`), clearing the flag.
    ///
    /// # Errors
    /// The `eventfd` error; the old fd is kept then.
    pub fn reopen(&self) -> io::Result<()> {
        if self.fd.load(Ordering::Acquire) < 0 {
            return Ok(());
        }
        // SAFETY: plain syscall; the fd is owned by us alone.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        let old = self.fd.swap(fd, Ordering::AcqRel);
        if old >= 0 {
            // SAFETY: we owned `old`; nothing can use it after the swap.
            unsafe { libc::close(old) };
        }
        self.sleeping.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Closes the eventfd now. Idempotent; later wake-ups are no-ops.
    pub fn close(&self) {
        let fd = self.fd.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: we owned `fd` and nobody can use it after the swap above.
            unsafe { libc::close(fd) };
        }
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        self.close();
    }
}

impl AsRawFd for Waker {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.load(Ordering::Acquire)
    }
}
