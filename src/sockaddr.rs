//! Socket addresses between the kernel's `sockaddr` and the Python objects the
//! `socket` module uses (CPython `socketmodule.c`: `makesockaddr`,
//! `getsockaddrarg`), for the families oxloop handles natively.

use std::net::Ipv4Addr;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyString, PyTuple};

/// A `sockaddr_storage` and its used length.
#[derive(Clone, Copy)]
pub struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

const STORAGE_LEN: libc::socklen_t = size_of::<libc::sockaddr_storage>() as libc::socklen_t;

impl SockAddr {
    /// A zeroed address with room for any family (for `recvfrom`).
    pub fn empty() -> Self {
        Self {
            // SAFETY: all-zero is a valid sockaddr_storage.
            storage: unsafe { std::mem::zeroed() },
            len: STORAGE_LEN,
        }
    }

    pub fn as_mut_parts(&mut self) -> (*mut libc::sockaddr, *mut libc::socklen_t) {
        ((&raw mut self.storage).cast(), &raw mut self.len)
    }

    pub fn as_parts(&self) -> (*const libc::sockaddr, libc::socklen_t) {
        ((&raw const self.storage).cast(), self.len)
    }

    /// The used bytes (for comparing two addresses, or keeping one compact).
    pub fn bytes(&self) -> &[u8] {
        let len = (self.len as usize).min(size_of::<libc::sockaddr_storage>());
        // SAFETY: `storage` is plain data of at least `len` bytes.
        unsafe { std::slice::from_raw_parts((&raw const self.storage).cast::<u8>(), len) }
    }

    pub fn same_as(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }

    /// An IPv4 `(host, port)` tuple with a numeric host, exactly as
    /// `socket.sendto` would parse it; `None` for anything else (names, other
    /// types), which the caller leaves to the `socket` module.
    pub fn from_ipv4_tuple(addr: &Bound<'_, PyAny>) -> Option<Self> {
        let tuple = addr.cast_exact::<PyTuple>().ok()?;
        if tuple.len() != 2 {
            return None;
        }
        let host = tuple.get_item(0).ok()?;
        let port = tuple.get_item(1).ok()?;
        let host: Ipv4Addr = host
            .cast_exact::<PyString>()
            .ok()?
            .to_str()
            .ok()?
            .parse()
            .ok()?;
        let port: u16 = port.cast_exact::<PyInt>().ok()?.extract().ok()?;
        let mut out = Self::empty();
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(host).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
        unsafe { std::ptr::write((&raw mut out.storage).cast::<libc::sockaddr_in>(), sin) };
        out.len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        Some(out)
    }

    /// `getsockname()` (`peer`: `getpeername()`) of a socket's fd.
    pub fn of_socket(fd: std::os::fd::BorrowedFd<'_>, peer: bool) -> std::io::Result<Self> {
        let mut out = Self::empty();
        let (addr, len) = out.as_mut_parts();
        // SAFETY: `addr` is writable for the `len` it is given (the whole storage).
        unsafe {
            if peer {
                oxloop_core::sys::getpeername(fd, addr, len)?;
            } else {
                oxloop_core::sys::getsockname(fd, addr, len)?;
            }
        }
        Ok(out)
    }

    /// The address family (`AF_INET`, ...).
    pub fn family(&self) -> i32 {
        i32::from(self.storage.ss_family)
    }

    /// The used bytes only (16 for IPv4 instead of the storage's 128).
    pub fn compact(&self) -> CompactAddr {
        CompactAddr(self.bytes().into())
    }

    /// CPython `makesockaddr` for AF_INET, AF_INET6 and AF_UNIX.
    pub fn python_object<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if self.len == 0 {
            return Ok(py.None().into_bound(py));
        }
        match i32::from(self.storage.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says this is a sockaddr_in.
                let sin = unsafe { &*(&raw const self.storage).cast::<libc::sockaddr_in>() };
                let octets = u32::from_be(sin.sin_addr.s_addr).to_be_bytes();
                let mut text = [0u8; 15];
                let host = PyString::new(py, dotted_quad(octets, &mut text));
                Ok((host, u16::from_be(sin.sin_port))
                    .into_pyobject(py)?
                    .into_any())
            }
            libc::AF_INET6 => {
                // SAFETY: the family says this is a sockaddr_in6.
                let sin6 = unsafe { &*(&raw const self.storage).cast::<libc::sockaddr_in6>() };
                Ok((
                    self.numeric_host()?,
                    u16::from_be(sin6.sin6_port),
                    u32::from_be(sin6.sin6_flowinfo),
                    sin6.sin6_scope_id,
                )
                    .into_pyobject(py)?
                    .into_any())
            }
            libc::AF_UNIX => {
                let path = self.bytes();
                let path = &path[size_of::<libc::sa_family_t>().min(path.len())..];
                if path.first() == Some(&0) {
                    // Linux abstract namespace.
                    return Ok(PyBytes::new(py, path).into_any());
                }
                let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
                crate::py::fsdecode(py)?.call1((PyBytes::new(py, &path[..end]),))
            }
            family => Err(PyOSError::new_err(format!(
                "oxloop: unsupported address family {family}"
            ))),
        }
    }

    /// `getnameinfo(NI_NUMERICHOST)`, as CPython's `makeipaddr` (it appends the
    /// scope of a link-local IPv6 address).
    fn numeric_host(&self) -> PyResult<String> {
        let mut host = [0 as libc::c_char; libc::NI_MAXHOST as usize];
        let (addr, len) = self.as_parts();
        // SAFETY: valid address of `len` bytes; `host` is a writable buffer of its size.
        let rc = unsafe {
            libc::getnameinfo(
                addr,
                len,
                host.as_mut_ptr(),
                libc::NI_MAXHOST,
                std::ptr::null_mut(),
                0,
                libc::NI_NUMERICHOST,
            )
        };
        if rc != 0 {
            return Err(PyOSError::new_err(format!("getnameinfo failed ({rc})")));
        }
        // SAFETY: getnameinfo wrote a NUL-terminated string into `host`.
        let host = unsafe { std::ffi::CStr::from_ptr(host.as_ptr()) };
        Ok(host.to_string_lossy().into_owned())
    }
}

/// A socket address in the bytes it uses, kept until a Python object of it is
/// asked for (see [`SockAddr::compact`]).
pub struct CompactAddr(Box<[u8]>);

impl CompactAddr {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(bytes.into())
    }

    pub fn expand(&self) -> SockAddr {
        let mut out = SockAddr::empty();
        let len = self.0.len().min(size_of::<libc::sockaddr_storage>());
        // SAFETY: `len` bytes fit in the storage; plain data.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.0.as_ptr(),
                (&raw mut out.storage).cast::<u8>(),
                len,
            );
        }
        out.len = len as libc::socklen_t;
        out
    }
}

/// `a.b.c.d` written into `out` (what `inet_ntop` writes; Rust's `Display` for
/// `Ipv4Addr` goes through the formatting machinery, a cost per accepted connection).
fn dotted_quad(octets: [u8; 4], out: &mut [u8; 15]) -> &str {
    let mut len = 0;
    for (i, octet) in octets.into_iter().enumerate() {
        if i > 0 {
            out[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            out[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            out[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        out[len] = b'0' + octet % 10;
        len += 1;
    }
    // Only ASCII digits and dots were written.
    std::str::from_utf8(&out[..len]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::dotted_quad;
    use std::net::Ipv4Addr;

    #[test]
    fn dotted_quad_is_ipv4_display() {
        for octets in [
            [0, 0, 0, 0],
            [127, 0, 0, 1],
            [255, 255, 255, 255],
            [10, 99, 100, 9],
            [1, 20, 199, 250],
        ] {
            let mut out = [0u8; 15];
            assert_eq!(
                dotted_quad(octets, &mut out),
                Ipv4Addr::from(octets).to_string()
            );
        }
    }
}
