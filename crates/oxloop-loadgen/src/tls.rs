//! TLS over memory buffers, for the load generator's `--tls` mode and the TLS floor.
//!
//! OpenSSL (the system's libssl, through the `openssl` crate) runs on an [`SslStream`]
//! whose "socket" is a [`MemIo`]: two in-memory buffers, as asyncio's `sslproto` (an
//! `SSLObject` between two `MemoryBIO`s) and uvloop do it. The socket itself is read and
//! written by the caller: one `read` of everything the kernel has into the incoming
//! buffer, every record in it decrypted, the reply encrypted into the outgoing buffer,
//! and one `write` of that. OpenSSL on the socket itself would make two `read` calls
//! per record (header, then body) and one `write` per 16 KiB record.

use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::io::RawFd;

use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslStream,
    SslVerifyMode, SslVersion,
};
use oxloop_core::buffers::PageBuf;

/// The incoming buffer's size: what one `read` takes at most (asyncio's `max_size`).
pub const READ_SIZE: usize = 256 * 1024;

/// The two memory buffers under an [`SslStream`]: what came from the socket and waits
/// to be decrypted, and the records OpenSSL produced that wait to be sent.
pub struct MemIo {
    incoming: PageBuf,
    start: usize,
    end: usize,
    eof: bool,
    outgoing: Vec<u8>,
    sent: usize,
}

impl MemIo {
    fn new() -> Self {
        Self {
            incoming: PageBuf::new(READ_SIZE),
            start: 0,
            end: 0,
            eof: false,
            outgoing: Vec::with_capacity(READ_SIZE),
            sent: 0,
        }
    }
}

impl Read for MemIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.start == self.end {
            if self.eof {
                return Ok(0);
            }
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.end - self.start);
        buf[..n].copy_from_slice(&self.incoming[self.start..self.start + n]);
        self.start += n;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        Ok(n)
    }
}

impl Write for MemIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a socket read brought.
#[derive(Debug, PartialEq, Eq)]
pub enum Filled {
    /// This many bytes; `full` when they filled the free space (there may be more).
    Bytes { n: usize, full: bool },
    /// Nothing to read now.
    WouldBlock,
    /// The peer closed its side.
    Eof,
}

fn sys_read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a valid, writable region of `buf.len()` bytes for the call.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if let Ok(n) = usize::try_from(n) {
            return Ok(n);
        }
        let err = io::Error::last_os_error();
        if err.kind() != ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn sys_write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a valid, readable region of `buf.len()` bytes for the call.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if let Ok(n) = usize::try_from(n) {
            return Ok(n);
        }
        let err = io::Error::last_os_error();
        if err.kind() != ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// What a decryption pass found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decrypted {
    /// This many plaintext bytes (possibly 0); more need more records from the socket.
    More(usize),
    /// This many, and then the peer's close_notify (or the end of its stream).
    Closed(usize),
    /// This many, and the plaintext buffer is full.
    Full(usize),
}

/// One TLS connection over [`MemIo`]; the socket is the caller's (`fd`).
pub struct Tls {
    stream: SslStream<MemIo>,
    handshaken: bool,
}

impl Tls {
    /// A client session that verifies the server's certificate against the context's
    /// CA and its name against `server_name` (also sent as SNI).
    pub fn client(ctx: &SslContext, server_name: &str) -> Result<Self, String> {
        let mut ssl = Ssl::new(ctx).map_err(|e| format!("SSL_new: {e}"))?;
        ssl.set_connect_state();
        ssl.set_hostname(server_name)
            .map_err(|e| format!("SNI {server_name:?}: {e}"))?;
        ssl.param_mut()
            .set_host(server_name)
            .map_err(|e| format!("verify host {server_name:?}: {e}"))?;
        Self::new(ssl)
    }

    /// A server session.
    pub fn server(ctx: &SslContext) -> Result<Self, String> {
        let mut ssl = Ssl::new(ctx).map_err(|e| format!("SSL_new: {e}"))?;
        ssl.set_accept_state();
        Self::new(ssl)
    }

    fn new(ssl: Ssl) -> Result<Self, String> {
        let stream = SslStream::new(ssl, MemIo::new()).map_err(|e| format!("SSL BIO: {e}"))?;
        Ok(Self {
            stream,
            handshaken: false,
        })
    }

    pub fn is_handshaken(&self) -> bool {
        self.handshaken
    }

    /// Advances the handshake with what has arrived; `Ok(true)` once it is complete.
    pub fn handshake(&mut self) -> Result<bool, String> {
        if self.handshaken {
            return Ok(true);
        }
        match self.stream.do_handshake() {
            Ok(()) => {
                self.handshaken = true;
                Ok(true)
            }
            Err(e) if e.code() == ErrorCode::WANT_READ => {
                if self.stream.get_ref().eof {
                    return Err("the peer closed the connection during the handshake".into());
                }
                Ok(false)
            }
            Err(e) => Err(format!("TLS handshake: {e}")),
        }
    }

    /// One `read` from the socket into the incoming buffer.
    pub fn fill(&mut self, fd: RawFd) -> io::Result<Filled> {
        let io = self.stream.get_mut();
        if io.start > 0 {
            // A partial record left over: move it to the front.
            io.incoming.copy_within(io.start..io.end, 0);
            (io.start, io.end) = (0, io.end - io.start);
        }
        let free = READ_SIZE - io.end;
        if free == 0 {
            // OpenSSL has not taken what is there: a record cannot be this large.
            return Err(io::Error::other("incoming TLS buffer full"));
        }
        match sys_read(fd, &mut io.incoming[io.end..]) {
            Ok(0) => {
                io.eof = true;
                Ok(Filled::Eof)
            }
            Ok(n) => {
                io.end += n;
                Ok(Filled::Bytes { n, full: n == free })
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(Filled::WouldBlock),
            Err(e) => Err(e),
        }
    }

    /// Decrypts every complete record that has arrived into `buf`.
    pub fn decrypt(&mut self, buf: &mut [u8]) -> Result<Decrypted, String> {
        let mut got = 0;
        while got < buf.len() {
            match self.stream.ssl_read(&mut buf[got..]) {
                Ok(n) => got += n,
                Err(e) if e.code() == ErrorCode::WANT_READ => {
                    if self.stream.get_ref().eof {
                        return Ok(Decrypted::Closed(got));
                    }
                    return Ok(Decrypted::More(got));
                }
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => return Ok(Decrypted::Closed(got)),
                Err(e) => return Err(format!("TLS read: {e}")),
            }
        }
        Ok(Decrypted::Full(got))
    }

    /// Encrypts `data` into the outgoing buffer (the memory buffer takes it all).
    pub fn encrypt(&mut self, data: &[u8]) -> Result<(), String> {
        let mut done = 0;
        while done < data.len() {
            match self.stream.ssl_write(&data[done..]) {
                Ok(n) => done += n,
                Err(e) => return Err(format!("TLS write: {e}")),
            }
        }
        Ok(())
    }

    /// Queues a close_notify.
    pub fn close_notify(&mut self) {
        let _ = self.stream.shutdown();
    }

    /// Whether records wait to be sent.
    pub fn wants_write(&self) -> bool {
        let io = self.stream.get_ref();
        io.sent < io.outgoing.len()
    }

    /// One `write` of the outgoing records to the socket; `Ok(true)` when all are sent.
    pub fn flush(&mut self, fd: RawFd) -> io::Result<bool> {
        let io = self.stream.get_mut();
        if io.sent < io.outgoing.len() {
            match sys_write(fd, &io.outgoing[io.sent..]) {
                Ok(n) => io.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if io.sent == io.outgoing.len() {
            io.outgoing.clear();
            io.sent = 0;
            return Ok(true);
        }
        Ok(false)
    }

    /// "TLSv1.3 TLS_AES_256_GCM_SHA384"
    pub fn describe(&self) -> String {
        let ssl = self.stream.ssl();
        let cipher = ssl.current_cipher().map_or("?", |c| c.name());
        format!("{} {cipher}", ssl.version_str())
    }
}

fn base_context(method: SslMethod) -> Result<SslContextBuilder, String> {
    let mut b = SslContextBuilder::new(method).map_err(|e| format!("SSL_CTX_new: {e}"))?;
    // TLS 1.3 only, and OpenSSL's defaults otherwise (its TLS 1.3 cipher suites, as
    // Python's ssl module has them). No SSL_MODE_RELEASE_BUFFERS: buffers are kept.
    b.set_min_proto_version(Some(SslVersion::TLS1_3))
        .map_err(|e| format!("TLS 1.3: {e}"))?;
    Ok(b)
}

/// A client context that verifies servers against the CA certificates of `ca_file`.
pub fn client_context(ca_file: &str) -> Result<SslContext, String> {
    let mut b = base_context(SslMethod::tls_client())?;
    b.set_ca_file(ca_file)
        .map_err(|e| format!("CA file {ca_file}: {e}"))?;
    b.set_verify(SslVerifyMode::PEER);
    Ok(b.build())
}

/// A server context with the certificate chain and key of these PEM files.
pub fn server_context(certfile: &str, keyfile: &str) -> Result<SslContext, String> {
    let mut b = base_context(SslMethod::tls_server())?;
    b.set_certificate_chain_file(certfile)
        .map_err(|e| format!("certificate {certfile}: {e}"))?;
    b.set_private_key_file(keyfile, SslFiletype::PEM)
        .map_err(|e| format!("key {keyfile}: {e}"))?;
    b.check_private_key()
        .map_err(|e| format!("key {keyfile} does not match {certfile}: {e}"))?;
    Ok(b.build())
}
