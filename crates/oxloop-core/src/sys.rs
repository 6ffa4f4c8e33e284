//! Every raw syscall oxloop makes on a transport's or a listener's file descriptor,
//! in one place (as mio's `sys/`); the poller and the waker keep theirs
//! ([`crate::poller`], [`crate::waker`]).
//!
//! The functions take a [`BorrowedFd`]: making one is where a caller states how it
//! knows the number is still the descriptor it owns (an fd is owned: never read,
//! written or re-armed after its owner closed it, whatever number the kernel
//! reuses). Results are `io::Result`s with the errno; nothing here retries.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use libc::{c_int, socklen_t};

/// `fd` borrowed for the calls below, or `EBADF` for a negative number (what a
/// closed socket object's `fileno()` gives), the answer the syscall itself makes.
///
/// # Safety
/// A non-negative `fd` must be open, and owned by the caller, for `'a`.
pub unsafe fn borrow<'a>(fd: RawFd) -> io::Result<BorrowedFd<'a>> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: the caller's contract; `fd` is not -1.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

fn cvt_size(n: isize) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `recv(fd, buf, flags)`; `Ok(0)` is the end of the stream.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8], flags: c_int) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length.
    cvt_size(unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) })
}

/// `recv` into memory that may be uninitialised (a fresh `bytes`).
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
pub unsafe fn recv_raw(
    fd: BorrowedFd<'_>,
    buf: *mut u8,
    len: usize,
    flags: c_int,
) -> io::Result<usize> {
    // SAFETY: the caller's contract.
    cvt_size(unsafe { libc::recv(fd.as_raw_fd(), buf.cast(), len, flags) })
}

/// `read` into memory that may be uninitialised (pipes, ttys).
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
pub unsafe fn read_raw(fd: BorrowedFd<'_>, buf: *mut u8, len: usize) -> io::Result<usize> {
    // SAFETY: the caller's contract.
    cvt_size(unsafe { libc::read(fd.as_raw_fd(), buf.cast(), len) })
}

/// `send(fd, data, flags)`.
pub fn send(fd: BorrowedFd<'_>, data: &[u8], flags: c_int) -> io::Result<usize> {
    // SAFETY: `data` is readable for its length.
    cvt_size(unsafe { libc::send(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), flags) })
}

/// `write(fd, data)` (pipes).
pub fn write(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is readable for its length.
    cvt_size(unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) })
}

/// `writev(fd, bufs)`: at most `c_int::MAX` slices are passed.
pub fn writev(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let count = c_int::try_from(bufs.len()).unwrap_or(c_int::MAX);
    // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix, and every slice is
    // readable for its length.
    cvt_size(unsafe { libc::writev(fd.as_raw_fd(), bufs.as_ptr().cast(), count) })
}

/// `sendto(fd, data, flags, addr, len)`.
///
/// # Safety
/// `addr` must point to a socket address of `len` bytes.
pub unsafe fn sendto(
    fd: BorrowedFd<'_>,
    data: &[u8],
    flags: c_int,
    addr: *const libc::sockaddr,
    len: socklen_t,
) -> io::Result<usize> {
    // SAFETY: `data` is readable for its length; the address is the caller's contract.
    cvt_size(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            flags,
            addr,
            len,
        )
    })
}

/// `recvfrom(fd, buf, flags, addr, len)`.
///
/// # Safety
/// `addr` must be writable for `*len` bytes and `len` a valid in/out length.
pub unsafe fn recvfrom(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: c_int,
    addr: *mut libc::sockaddr,
    len: *mut socklen_t,
) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length; the address is the caller's contract.
    cvt_size(unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags,
            addr,
            len,
        )
    })
}

/// `accept4(fd, addr, len, SOCK_NONBLOCK | SOCK_CLOEXEC)`: the new connection, owned.
///
/// # Safety
/// `addr` must be writable for `*len` bytes and `len` a valid in/out length.
pub unsafe fn accept_nonblocking(
    fd: BorrowedFd<'_>,
    addr: *mut libc::sockaddr,
    len: *mut socklen_t,
) -> io::Result<OwnedFd> {
    // SAFETY: the address is the caller's contract.
    let conn = unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            addr,
            len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if conn < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just made for us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(conn) })
}

/// `getsockname(fd, addr, len)`.
///
/// # Safety
/// `addr` must be writable for `*len` bytes and `len` a valid in/out length.
pub unsafe fn getsockname(
    fd: BorrowedFd<'_>,
    addr: *mut libc::sockaddr,
    len: *mut socklen_t,
) -> io::Result<()> {
    // SAFETY: the address is the caller's contract.
    crate::cvt(unsafe { libc::getsockname(fd.as_raw_fd(), addr, len) }).map(drop)
}

/// `getpeername(fd, addr, len)`.
///
/// # Safety
/// `addr` must be writable for `*len` bytes and `len` a valid in/out length.
pub unsafe fn getpeername(
    fd: BorrowedFd<'_>,
    addr: *mut libc::sockaddr,
    len: *mut socklen_t,
) -> io::Result<()> {
    // SAFETY: the address is the caller's contract.
    crate::cvt(unsafe { libc::getpeername(fd.as_raw_fd(), addr, len) }).map(drop)
}

/// `shutdown(fd, SHUT_WR)`.
pub fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a plain syscall on a descriptor.
    crate::cvt(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) }).map(drop)
}

/// The file type of `fd` (`st_mode & S_IFMT` of `fstat`).
pub fn file_type(fd: BorrowedFd<'_>) -> io::Result<libc::mode_t> {
    // SAFETY: `stat` is plain data, fully written by a successful fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer for the call.
    crate::cvt(unsafe { libc::fstat(fd.as_raw_fd(), &raw mut st) })?;
    Ok(st.st_mode & libc::S_IFMT)
}

/// `O_NONBLOCK` on (`os.set_blocking(fd, False)`).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain fcntl calls on a descriptor.
    let flags = crate::cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    crate::cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::{UnixDatagram, UnixStream};

    #[test]
    fn stream_calls_move_bytes_and_report_errno() {
        let (a, b) = UnixStream::pair().unwrap();
        set_nonblocking(b.as_fd()).unwrap();
        let mut buf = [0u8; 16];
        let err = recv(b.as_fd(), &mut buf, 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EAGAIN));
        assert_eq!(send(a.as_fd(), b"abc", libc::MSG_NOSIGNAL).unwrap(), 3);
        assert_eq!(
            writev(a.as_fd(), &[IoSlice::new(b"de"), IoSlice::new(b"f")]).unwrap(),
            3
        );
        assert_eq!(recv(b.as_fd(), &mut buf, 0).unwrap(), 6);
        assert_eq!(&buf[..6], b"abcdef");
        shutdown_write(a.as_fd()).unwrap();
        assert_eq!(recv(b.as_fd(), &mut buf, 0).unwrap(), 0);
        assert_eq!(file_type(a.as_fd()).unwrap(), libc::S_IFSOCK);
        // SAFETY: -1 is refused before any use.
        let closed = unsafe { borrow(-1) }.unwrap_err();
        assert_eq!(closed.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn datagram_calls_carry_addresses() {
        let (a, b) = UnixDatagram::pair().unwrap();
        assert_eq!(send(a.as_fd(), b"dgram", 0).unwrap(), 5);
        let mut buf = [0u8; 16];
        // SAFETY: an all-zero sockaddr_storage is valid; `len` is its size.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
        // SAFETY: `storage` is writable for `len` bytes.
        let n = unsafe {
            recvfrom(
                b.as_fd(),
                &mut buf,
                0,
                (&raw mut storage).cast(),
                &raw mut len,
            )
        }
        .unwrap();
        assert_eq!(&buf[..n], b"dgram");
    }
}
