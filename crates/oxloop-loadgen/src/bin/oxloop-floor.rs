//! `oxloop-floor`: the benchmark's reference server, with no Python at all.
//!
//! A plain level-triggered epoll server in Rust that answers like the Python servers
//! of `benches/servers/` (echo over TCP, Unix and UDP; the fixed HTTP/1.1 keep-alive
//! response of `http_server.py`) and makes the same system calls per message: one
//! read, one write, a share of one `epoll_wait`. What it costs per request is the
//! kernel's part plus almost nothing, so its requests per server-CPU-second are the
//! ceiling any event loop can reach on this machine; `benches/net.py` reports it
//! beside the loops as `floor`.
//!
//! With `--certfile PEM --keyfile PEM` (tcp, unix) it is the TLS floor: the same echo
//! over TLS 1.3 with the system's libssl (the `openssl` crate), on memory buffers
//! (`oxloop_loadgen::tls`) as asyncio's `sslproto` and uvloop drive it: one `read` of
//! everything the socket has, every record decrypted, the echo encrypted as one batch,
//! one `write`.
//!
//! Same command line and start-up line as the Python servers:
//! `oxloop-floor --mode tcp|unix|udp|http [--host H] [--port P] [--unix PATH]
//! [--certfile PEM --keyfile PEM] [--max-seconds S]`, then `ready <address>` on stdout.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use openssl::ssl::SslContext;
use oxloop_core::buffers::PageBuf;
use oxloop_loadgen::tls::{self, Decrypted, Filled, Tls};

/// What one read takes at most: asyncio's `max_size`.
const READ_SIZE: usize = 256 * 1024;
const LISTENER: u64 = u64::MAX;
const HTTP_BODY: &[u8] = b"Hello, World!\n";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Tcp,
    Unix,
    Udp,
    Http,
}

struct Config {
    mode: Mode,
    host: String,
    port: u16,
    unix: Option<String>,
    certfile: Option<String>,
    keyfile: Option<String>,
    max_seconds: f64,
}

fn parse_args() -> Result<Config, String> {
    let mut cfg = Config {
        mode: Mode::Tcp,
        host: "127.0.0.1".into(),
        port: 0,
        unix: None,
        certfile: None,
        keyfile: None,
        max_seconds: 900.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--mode" => {
                cfg.mode = match value()?.as_str() {
                    "tcp" => Mode::Tcp,
                    "unix" => Mode::Unix,
                    "udp" => Mode::Udp,
                    "http" => Mode::Http,
                    other => return Err(format!("unknown mode {other:?}")),
                }
            }
            "--host" => cfg.host = value()?,
            "--port" => cfg.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--unix" => cfg.unix = Some(value()?),
            "--certfile" => cfg.certfile = Some(value()?),
            "--keyfile" => cfg.keyfile = Some(value()?),
            "--max-seconds" => {
                cfg.max_seconds = value()?
                    .parse()
                    .map_err(|e| format!("--max-seconds: {e}"))?;
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if cfg.mode == Mode::Unix && cfg.unix.is_none() {
        return Err("--mode unix needs --unix PATH".into());
    }
    if cfg.certfile.is_some() != cfg.keyfile.is_some() {
        return Err("TLS needs both --certfile and --keyfile".into());
    }
    if cfg.certfile.is_some() && !matches!(cfg.mode, Mode::Tcp | Mode::Unix) {
        return Err("TLS (--certfile) is for --mode tcp and unix".into());
    }
    Ok(cfg)
}

struct Epoll(RawFd);

impl Epoll {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned by the returned value.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        if unsafe { libc::epoll_ctl(self.0, op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        let max = libc::c_int::try_from(events.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `events` is a writable buffer of `max` epoll_events.
        let n = unsafe { libc::epoll_wait(self.0, events.as_mut_ptr(), max, timeout_ms) };
        match usize::try_from(n) {
            Ok(n) => Ok(n),
            Err(_) => {
                let err = io::Error::last_os_error();
                if err.kind() == ErrorKind::Interrupted {
                    Ok(0)
                } else {
                    Err(err)
                }
            }
        }
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.0) };
    }
}

/// A stream connection: the socket, unsent output, (HTTP) the tail of the last
/// read, so a request head split across reads is still counted once, and (TLS) the
/// session, which holds its own unsent records.
struct Conn {
    stream: Box<dyn Stream>,
    pending: Vec<u8>,
    tail: Vec<u8>,
    tls: Option<Tls>,
}

impl Conn {
    fn has_pending(&self) -> bool {
        !self.pending.is_empty() || self.tls.as_ref().is_some_and(Tls::wants_write)
    }
}

trait Stream: Read + Write + AsRawFd {}
impl Stream for std::net::TcpStream {}
impl Stream for std::os::unix::net::UnixStream {}

/// Number of complete request heads (`\r\n\r\n`) in `tail + data`; keeps the last
/// three bytes as the next tail.
fn count_requests(tail: &mut Vec<u8>, data: &[u8]) -> usize {
    tail.extend_from_slice(data);
    let count = tail.windows(4).filter(|w| w == b"\r\n\r\n").count();
    let keep = tail.len().saturating_sub(3);
    tail.drain(..keep);
    count
}

fn http_response() -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n",
        HTTP_BODY.len()
    )
    .into_bytes();
    r.extend_from_slice(HTTP_BODY);
    r
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    fn accept(&self) -> io::Result<Box<dyn Stream>> {
        Ok(match self {
            Self::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                Box::new(s)
            }
            Self::Unix(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(true)?;
                Box::new(s)
            }
        })
    }

    fn fd(&self) -> RawFd {
        match self {
            Self::Tcp(l) => l.as_raw_fd(),
            Self::Unix(l) => l.as_raw_fd(),
        }
    }
}

/// TLS: one read, the handshake or every record decrypted and echoed as one batch of
/// records, one write; `false` when the connection is done.
fn on_readable_tls(fd: RawFd, tls: &mut Tls, buf: &mut [u8]) -> bool {
    match tls.fill(fd) {
        Ok(Filled::Bytes { .. }) => {}
        Ok(Filled::WouldBlock) => return true,
        Ok(Filled::Eof) | Err(_) => return false,
    }
    match tls.handshake() {
        Ok(true) => {}
        Ok(false) => return tls.flush(fd).is_ok(),
        Err(_) => return false,
    }
    let mut got = 0;
    let open = loop {
        match tls.decrypt(&mut buf[got..]) {
            Ok(Decrypted::More(n)) => break (got + n, true),
            Ok(Decrypted::Closed(n)) => break (got + n, false),
            Ok(Decrypted::Full(n)) => {
                // Not seen with 256 KiB reads: echo this much, then go on.
                if tls.encrypt(&buf[..got + n]).is_err() {
                    return false;
                }
                got = 0;
            }
            Err(_) => return false,
        }
    };
    let (got, open) = open;
    if got > 0 && tls.encrypt(&buf[..got]).is_err() {
        return false;
    }
    open && tls.flush(fd).is_ok()
}

/// Echoes (or answers) what `conn` has to read; `false` when the connection is done.
fn on_readable(conn: &mut Conn, buf: &mut [u8], mode: Mode, response: &[u8]) -> bool {
    if let Some(tls) = &mut conn.tls {
        return on_readable_tls(conn.stream.as_raw_fd(), tls, buf);
    }
    let n = match conn.stream.read(buf) {
        Ok(0) => return false,
        Ok(n) => n,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
            return true
        }
        Err(_) => return false,
    };
    let out: Vec<u8>;
    let reply: &[u8] = if mode == Mode::Http {
        out = response.repeat(count_requests(&mut conn.tail, &buf[..n]));
        &out
    } else {
        &buf[..n]
    };
    if reply.is_empty() {
        return true;
    }
    if !conn.pending.is_empty() {
        conn.pending.extend_from_slice(reply);
        return true;
    }
    match conn.stream.write(reply) {
        Ok(sent) => conn.pending.extend_from_slice(&reply[sent..]),
        Err(e) if e.kind() == ErrorKind::WouldBlock => conn.pending.extend_from_slice(reply),
        Err(_) => return false,
    }
    true
}

/// Sends what is pending; `false` when the connection is done.
fn on_writable(conn: &mut Conn) -> bool {
    if let Some(tls) = &mut conn.tls {
        return tls.flush(conn.stream.as_raw_fd()).is_ok();
    }
    match conn.stream.write(&conn.pending) {
        Ok(sent) => {
            conn.pending.drain(..sent);
            true
        }
        Err(e) => e.kind() == ErrorKind::WouldBlock,
    }
}

fn serve_streams(
    listener: &Listener,
    mode: Mode,
    tls_ctx: Option<&SslContext>,
    deadline: Instant,
) -> io::Result<()> {
    let epoll = Epoll::new()?;
    let lfd = listener.fd();
    epoll.ctl(libc::EPOLL_CTL_ADD, lfd, libc::EPOLLIN as u32, LISTENER)?;
    let mut conns: HashMap<u64, Conn> = HashMap::new();
    // Page-aligned: the kernel copies into a buffer near a page boundary up to 4x
    // more slowly (oxloop_core::buffers).
    let mut buf = PageBuf::new(READ_SIZE);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let response = http_response();
    while Instant::now() < deadline {
        let n = epoll.wait(&mut events, 1000)?;
        for ev in &events[..n] {
            let token = ev.u64;
            if token == LISTENER {
                while let Ok(stream) = listener.accept() {
                    let tls = match tls_ctx.map(Tls::server).transpose() {
                        Ok(tls) => tls,
                        Err(e) => {
                            eprintln!("oxloop-floor: {e}");
                            continue;
                        }
                    };
                    let fd = stream.as_raw_fd();
                    let token = u64::try_from(fd).unwrap_or_default();
                    epoll.ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, token)?;
                    conns.insert(
                        token,
                        Conn {
                            stream,
                            pending: Vec::new(),
                            tail: Vec::new(),
                            tls,
                        },
                    );
                }
                continue;
            }
            let Some(conn) = conns.get_mut(&token) else {
                continue;
            };
            let had_pending = conn.has_pending();
            let mut alive = true;
            if ev.events & libc::EPOLLOUT as u32 != 0 {
                alive = on_writable(conn);
            }
            if alive && ev.events & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                alive = on_readable(conn, &mut buf, mode, &response);
            }
            if !alive {
                if let Some(conn) = conns.remove(&token) {
                    // Closing the fd removes it from the epoll set.
                    drop(conn);
                }
                continue;
            }
            let fd = conn.stream.as_raw_fd();
            // Stop reading while output is pending (a simple flow control).
            match (had_pending, !conn.has_pending()) {
                (false, false) => {
                    epoll.ctl(libc::EPOLL_CTL_MOD, fd, libc::EPOLLOUT as u32, token)?
                }
                (true, true) => epoll.ctl(libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN as u32, token)?,
                _ => {}
            }
        }
    }
    Ok(())
}

fn serve_udp(sock: &UdpSocket, deadline: Instant) -> io::Result<()> {
    let epoll = Epoll::new()?;
    epoll.ctl(
        libc::EPOLL_CTL_ADD,
        sock.as_raw_fd(),
        libc::EPOLLIN as u32,
        0,
    )?;
    // Page-aligned: the kernel copies into a buffer near a page boundary up to 4x
    // more slowly (oxloop_core::buffers).
    let mut buf = PageBuf::new(READ_SIZE);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 8];
    while Instant::now() < deadline {
        if epoll.wait(&mut events, 1000)? == 0 {
            continue;
        }
        // Up to 32 datagrams per readiness event, as oxloop's transport may take.
        for _ in 0..32 {
            match sock.recv_from(&mut buf) {
                Ok((n, peer)) => {
                    // A lost echo is the client's to count; the server goes on.
                    let _ = sock.send_to(&buf[..n], peer);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

fn run(cfg: &Config) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(cfg.max_seconds);
    let tls_ctx = match (&cfg.certfile, &cfg.keyfile) {
        (Some(cert), Some(key)) => Some(tls::server_context(cert, key).map_err(io::Error::other)?),
        _ => None,
    };
    let stdout = &mut io::stdout();
    match cfg.mode {
        Mode::Udp => {
            let sock = UdpSocket::bind((cfg.host.as_str(), cfg.port))?;
            sock.set_nonblocking(true)?;
            writeln!(stdout, "ready {}", sock.local_addr()?)?;
            stdout.flush()?;
            serve_udp(&sock, deadline)
        }
        Mode::Unix => {
            let path = cfg.unix.as_deref().unwrap_or_default();
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path)?;
            listener.set_nonblocking(true)?;
            writeln!(stdout, "ready {path}")?;
            stdout.flush()?;
            let result = serve_streams(
                &Listener::Unix(listener),
                cfg.mode,
                tls_ctx.as_ref(),
                deadline,
            );
            let _ = std::fs::remove_file(path);
            result
        }
        Mode::Tcp | Mode::Http => {
            let listener = TcpListener::bind((cfg.host.as_str(), cfg.port))?;
            listener.set_nonblocking(true)?;
            writeln!(stdout, "ready {}", listener.local_addr()?)?;
            stdout.flush()?;
            serve_streams(
                &Listener::Tcp(listener),
                cfg.mode,
                tls_ctx.as_ref(),
                deadline,
            )
        }
    }
}

fn main() -> ExitCode {
    let cfg = match parse_args() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("oxloop-floor: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oxloop-floor: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::count_requests;

    #[test]
    fn request_heads_split_across_reads_count_once() {
        let mut tail = Vec::new();
        assert_eq!(
            count_requests(&mut tail, b"GET / HTTP/1.1\r\nHost: x\r\n\r"),
            0
        );
        assert_eq!(count_requests(&mut tail, b"\nGET / HTTP/1.1\r\n\r\n"), 2);
        assert_eq!(count_requests(&mut tail, b"GET /"), 0);
    }
}
