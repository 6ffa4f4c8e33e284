//! The Python-free core of oxloop.
//!
//! Everything here is plain Rust with its own `cargo test`s: the level-triggered
//! [`poller::Poller`] (epoll), the [`waker::Waker`] (eventfd) that wakes a blocked
//! poll, the [`timers::TimerHeap`] ordered by `(when, insertion)` with asyncio's lazy
//! cancellation, the fd [`registry::Registry`] whose generation tokens reject stale
//! events, the monotonic [`clock`], where a read buffer may start
//! ([`buffers`]), and every raw syscall on a transport's fd ([`sys`]). The PyO3 layer (`src/` at the workspace root) owns the Python
//! objects and drives these pieces.
#![warn(missing_docs)]

pub mod buffers;
pub mod clock;
pub mod poller;
pub mod registry;
pub mod sys;
pub mod timers;
pub mod waker;

pub(crate) fn cvt(ret: libc::c_int) -> std::io::Result<libc::c_int> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
