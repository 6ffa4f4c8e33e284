//! `oxloop-loadgen`: a small, single-threaded request/response load generator for
//! oxloop's network benchmarks (`benches/net.py`).
//!
//! It opens N connections (TCP, Unix stream sockets, or connected UDP sockets) to an
//! echo server. Each connection sends one message of S bytes and waits for the whole
//! echo before it sends the next one; a "request" is one echoed message. After a
//! warm-up, it counts the requests completed during a fixed window and prints one JSON
//! line: requests, bytes, seconds, errors, latency percentiles and, when given the
//! server's pid, the server's CPU time (utime + stime from `/proc/PID/stat`) sampled
//! at the start and the end of the window, plus its own CPU time over the same window,
//! and the time each of the two spent waiting for a CPU (`/proc/PID/schedstat`), which
//! shows when other processes on the machine got in the way.
//!
//! Every echoed message is checked: its length always, and its content (a 16-byte
//! header with the connection id and a per-request sequence number, then a pattern)
//! for every `--verify-every`-th request (default: every request).
//!
//! Everything runs on one thread with epoll (level-triggered), so the generator costs
//! one CPU at most; `benches/net.py` pins it to a CPU other than the server's.
//!
//! `--tls` runs the same echo over TLS 1.3 (the system's libssl through the `openssl`
//! crate), verifying the server's certificate against `--ca` and its name against
//! `--server-name`. Every handshake completes before the first request; the measured
//! window has only records. OpenSSL works on memory buffers (`oxloop_loadgen::tls`):
//! one `read` and one `write` per round trip, as in the plain mode.

use std::fmt::Write as _;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use openssl::ssl::SslContext;
use oxloop_core::buffers::PageBuf;
use oxloop_loadgen::tls::{self, Decrypted, Filled, Tls};

const USAGE: &str = "\
usage: oxloop-loadgen --mode tcp|unix|udp --addr HOST:PORT|PATH [options]

  --conns N          concurrent connections (default 10)
  --size S           message size in bytes (default 1024; at most 65507 for udp)
  --warmup SECS      warm-up before the measured window (default 0.5)
  --duration SECS    measured window (default 2)
  --server-pid PID   sample this process's CPU time (/proc/PID/stat) at the window's edges
  --timeout SECS     a request unanswered this long is an error; udp: resent, counted as lost (default 5; udp 0.2)
  --verify-every K   compare the full content of every K-th echo (default 1); lengths always
  --connect-timeout SECS  (default 5)
  --no-prime         do not prime the server (see below)
  --reconnect        tcp, unix: a new connection for every request (connect, send, read the
                     echo, close), i.e. connection churn; closed with SO_LINGER 0 (a reset),
                     so that thousands of closes per second leave no TIME_WAIT behind
  --tls              tcp, unix: TLS 1.3 over every connection (the handshakes complete before
                     the first request); the server's certificate is verified
  --ca FILE          with --tls: the CA certificate(s) (PEM) to verify the server against
  --server-name NAME with --tls: the name sent as SNI and checked in the certificate
                     (default localhost)
  --sync-stdin       for counting the server's work exactly (benches/instructions.py): once
                     every connection is open (and its handshake done), print `connected` on
                     stderr and wait for a line on stdin before the first request; at the
                     window's end, start no new request, let those in flight complete (they
                     count), print `finished` on stderr and wait for a line on stdin before
                     closing the connections

Before the measured connections open, one extra connection (tcp, unix) sends one message,
reads its echo and closes: a server process then has seen a connection close, as a
long-running one has. (With glibc, CPython's socket.recv(256 KiB) on a fresh process
pays mmap + mremap + munmap per call until some recv has returned nothing or failed,
which raises malloc's mmap threshold; a stdlib-transport server is ~3x slower until then.)

Prints one JSON line on stdout; exits 1 if any request failed, 2 on bad usage.";

const HEADER: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Tcp,
    Unix,
    Udp,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Tcp => "tcp",
            Mode::Unix => "unix",
            Mode::Udp => "udp",
        }
    }
}

#[derive(Clone, Debug)]
struct Config {
    mode: Mode,
    addr: String,
    conns: usize,
    size: usize,
    warmup: f64,
    duration: f64,
    server_pid: Option<u32>,
    timeout: f64,
    verify_every: u64,
    connect_timeout: f64,
    prime: bool,
    reconnect: bool,
    tls: bool,
    ca: Option<String>,
    server_name: String,
    sync_stdin: bool,
}

fn parse_args<I: Iterator<Item = String>>(mut args: I) -> Result<Config, String> {
    let mut mode = None;
    let mut addr = None;
    let mut conns = 10usize;
    let mut size = 1024usize;
    let mut warmup = 0.5f64;
    let mut duration = 2.0f64;
    let mut server_pid = None;
    let mut timeout = None;
    let mut verify_every = 1u64;
    let mut connect_timeout = 5.0f64;
    let mut prime = true;
    let mut reconnect = false;
    let mut tls = false;
    let mut ca = None;
    let mut server_name = "localhost".to_string();
    let mut sync_stdin = false;
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Err(String::new());
        }
        if arg == "--no-prime" {
            prime = false;
            continue;
        }
        if arg == "--reconnect" {
            reconnect = true;
            continue;
        }
        if arg == "--tls" {
            tls = true;
            continue;
        }
        if arg == "--sync-stdin" {
            sync_stdin = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        let bad = |what: &str| format!("{arg}: {what}, got {value:?}");
        match arg.as_str() {
            "--mode" => {
                mode = Some(match value.as_str() {
                    "tcp" => Mode::Tcp,
                    "unix" => Mode::Unix,
                    "udp" => Mode::Udp,
                    _ => return Err(bad("expected tcp, unix or udp")),
                });
            }
            "--addr" => addr = Some(value.clone()),
            "--ca" => ca = Some(value.clone()),
            "--server-name" => server_name = value.clone(),
            "--conns" => conns = value.parse().map_err(|_| bad("expected a count"))?,
            "--size" => size = value.parse().map_err(|_| bad("expected a byte count"))?,
            "--warmup" => warmup = value.parse().map_err(|_| bad("expected seconds"))?,
            "--duration" => duration = value.parse().map_err(|_| bad("expected seconds"))?,
            "--server-pid" => server_pid = Some(value.parse().map_err(|_| bad("expected a pid"))?),
            "--timeout" => timeout = Some(value.parse().map_err(|_| bad("expected seconds"))?),
            "--verify-every" => {
                verify_every = value.parse().map_err(|_| bad("expected a count"))?
            }
            "--connect-timeout" => {
                connect_timeout = value.parse().map_err(|_| bad("expected seconds"))?
            }
            _ => return Err(format!("unknown option {arg}")),
        }
    }
    let mode = mode.ok_or("--mode is required")?;
    let addr = addr.ok_or("--addr is required")?;
    let timeout = timeout.unwrap_or(if mode == Mode::Udp { 0.2 } else { 5.0 });
    if conns == 0 || size == 0 || verify_every == 0 {
        return Err("--conns, --size and --verify-every must be at least 1".into());
    }
    if mode == Mode::Udp && reconnect {
        return Err("--reconnect is for tcp and unix".into());
    }
    if tls && (mode == Mode::Udp || reconnect) {
        return Err("--tls is for tcp and unix, without --reconnect".into());
    }
    if tls && ca.is_none() {
        return Err("--tls needs --ca FILE (the CA that signed the server's certificate)".into());
    }
    if mode == Mode::Udp && size > 65507 {
        return Err("--size: a UDP datagram holds at most 65507 bytes".into());
    }
    let seconds_ok = |x: f64| (0.0..86_400.0).contains(&x);
    if !(seconds_ok(warmup)
        && seconds_ok(duration)
        && duration > 0.0
        && seconds_ok(timeout)
        && timeout > 0.0)
    {
        return Err(
            "--warmup, --duration and --timeout must be sensible numbers of seconds".into(),
        );
    }
    if !(seconds_ok(connect_timeout) && connect_timeout > 0.0) {
        return Err("--connect-timeout must be a positive number of seconds".into());
    }
    Ok(Config {
        mode,
        addr,
        conns,
        size,
        warmup,
        duration,
        server_pid,
        timeout,
        verify_every,
        connect_timeout,
        prime,
        reconnect,
        tls,
        ca,
        server_name,
        sync_stdin,
    })
}

// --------------------------------------------------------------------------------------
// epoll

struct Epoll {
    fd: RawFd,
}

impl Epoll {
    fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; the new descriptor is owned by the
        // returned Epoll, which closes it on drop.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: `event` is a valid epoll_event that lives across the call; self.fd is
        // our open epoll descriptor, and the kernel validates `fd`.
        let rc = unsafe { libc::epoll_ctl(self.fd, op, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: libc::c_int) -> io::Result<usize> {
        let max = libc::c_int::try_from(events.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `events` is a writable buffer of at least `max` epoll_events, which
        // the kernel fills; self.fd is our open epoll descriptor.
        let n = unsafe { libc::epoll_wait(self.fd, events.as_mut_ptr(), max, timeout_ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(err);
        }
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: self.fd was returned by epoll_create1 and is closed only here.
        unsafe {
            libc::close(self.fd);
        }
    }
}

// --------------------------------------------------------------------------------------
// CPU time from /proc

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// utime + stime in clock ticks, from the text of a `/proc/PID/stat` file.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts with field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn cpu_seconds(pid: Option<u32>, ticks_per_second: f64) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    parse_stat_cpu_ticks(&stat).map(|t| t as f64 / ticks_per_second)
}

/// Seconds the process's main thread has spent runnable but waiting for a CPU (the
/// second field of `/proc/PID/schedstat`): time other processes took from it.
fn runqueue_wait_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/schedstat"),
        None => "/proc/self/schedstat".to_string(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let ns: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(ns as f64 / 1e9)
}

// --------------------------------------------------------------------------------------
// Connections

enum Sock {
    Stream(Box<dyn StreamSock>),
    Udp(UdpSocket),
    Tls(Box<TlsSock>),
}

/// A stream socket and the TLS session over it.
struct TlsSock {
    stream: Box<dyn StreamSock>,
    tls: Tls,
}

trait StreamSock: Read + Write + AsRawFd {}
impl StreamSock for TcpStream {}
impl StreamSock for UnixStream {}

impl Sock {
    fn fd(&self) -> RawFd {
        match self {
            Sock::Stream(s) => s.as_raw_fd(),
            Sock::Udp(s) => s.as_raw_fd(),
            Sock::Tls(t) => t.stream.as_raw_fd(),
        }
    }
}

/// Waits (poll) until `fd` is ready for `events` or `deadline` passes.
fn wait_ready(fd: RawFd, events: libc::c_short, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(ErrorKind::TimedOut, "timed out"));
    }
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}

/// The TLS handshake on a fresh non-blocking stream, driven to completion with poll.
fn tls_handshake(stream: Box<dyn StreamSock>, ctx: &SslContext, cfg: &Config) -> io::Result<Sock> {
    let fd = stream.as_raw_fd();
    let mut tls = Tls::client(ctx, &cfg.server_name).map_err(io::Error::other)?;
    let deadline = Instant::now() + Duration::from_secs_f64(cfg.timeout);
    loop {
        let done = tls.handshake().map_err(io::Error::other)?;
        while !tls.flush(fd)? {
            wait_ready(fd, libc::POLLOUT, deadline)?;
        }
        if done {
            return Ok(Sock::Tls(Box::new(TlsSock { stream, tls })));
        }
        match tls.fill(fd)? {
            Filled::Bytes { .. } => {}
            Filled::WouldBlock => wait_ready(fd, libc::POLLIN, deadline)?,
            Filled::Eof => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "the server closed the connection during the TLS handshake",
                ))
            }
        }
    }
}

fn connect(
    cfg: &Config,
    udp_target: Option<SocketAddr>,
    tls: Option<&SslContext>,
) -> io::Result<Sock> {
    let sock = connect_plain(cfg, udp_target)?;
    match (sock, tls) {
        (Sock::Stream(stream), Some(ctx)) => tls_handshake(stream, ctx, cfg),
        (sock, _) => Ok(sock),
    }
}

fn connect_plain(cfg: &Config, udp_target: Option<SocketAddr>) -> io::Result<Sock> {
    let timeout = Duration::from_secs_f64(cfg.connect_timeout);
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = match cfg.mode {
            Mode::Tcp => resolve(&cfg.addr).and_then(|addr| {
                let stream = TcpStream::connect_timeout(&addr, timeout)?;
                stream.set_nodelay(true)?;
                stream.set_nonblocking(true)?;
                Ok(Sock::Stream(Box::new(stream)))
            }),
            Mode::Unix => UnixStream::connect(&cfg.addr).and_then(|stream| {
                stream.set_nonblocking(true)?;
                Ok(Sock::Stream(Box::new(stream)))
            }),
            Mode::Udp => {
                let target = match udp_target {
                    Some(t) => t,
                    None => resolve(&cfg.addr)?,
                };
                let local: SocketAddr = if target.is_ipv4() {
                    SocketAddr::from(([127, 0, 0, 1], 0))
                } else {
                    SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], 0))
                };
                UdpSocket::bind(local).and_then(|sock| {
                    sock.connect(target)?;
                    sock.set_nonblocking(true)?;
                    Ok(Sock::Udp(sock))
                })
            }
        };
        match attempt {
            Ok(sock) => return Ok(sock),
            // A listen backlog that is momentarily full, or a server still starting.
            Err(e) if Instant::now() < deadline && retryable(&e) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(e),
        }
    }
}

/// SO_LINGER {on, 0}: `close` sends a reset instead of a FIN, leaving no TIME_WAIT.
fn set_linger_zero(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a valid option value for the duration of the call. A failure
    // only means a normal close (and a TIME_WAIT).
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionRefused
            | ErrorKind::WouldBlock
            | ErrorKind::Interrupted
            | ErrorKind::TimedOut
    ) || e.raw_os_error() == Some(libc::EAGAIN)
}

fn resolve(addr: &str) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, format!("no address for {addr}")))
}

/// One blocking round trip on a throwaway connection, which is then closed.
fn prime(cfg: &Config, tls: Option<&SslContext>) -> Result<(), String> {
    let sock =
        connect(cfg, None, tls).map_err(|e| format!("connect to {} (prime): {e}", cfg.addr))?;
    let mut stream = match sock {
        Sock::Stream(stream) => stream,
        Sock::Tls(t) => return prime_tls(cfg, *t),
        Sock::Udp(_) => return Ok(()),
    };
    let timeout = Duration::from_secs_f64(cfg.timeout);
    let deadline = Instant::now() + timeout;
    let mut msg: Vec<u8> = (0..cfg.size).map(|j| pattern_byte(u32::MAX, j)).collect();
    write_header(&mut msg, u32::MAX, 0);
    let mut echo = vec![0u8; cfg.size];
    let (mut sent, mut got) = (0, 0);
    // Non-blocking both ways, so that a large message cannot deadlock the two sides.
    while got < cfg.size {
        if Instant::now() > deadline {
            return Err(format!("prime: no echo within {:.1} s", cfg.timeout));
        }
        let mut progress = false;
        if sent < cfg.size {
            match stream.write(&msg[sent..]) {
                Ok(n) => (sent, progress) = (sent + n, n > 0),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => return Err(format!("prime: send: {e}")),
            }
        }
        match stream.read(&mut echo[got..]) {
            Ok(0) => return Err("prime: the server closed the connection".into()),
            Ok(n) => (got, progress) = (got + n, true),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => return Err(format!("prime: recv: {e}")),
        }
        if !progress {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    if echo != msg {
        return Err("prime: the echo differs from the message".into());
    }
    drop(stream);
    // Let the server see the close before the measured connections arrive.
    std::thread::sleep(Duration::from_millis(20));
    Ok(())
}

/// `prime` over TLS: one echo, then a close_notify and the close.
fn prime_tls(cfg: &Config, mut t: TlsSock) -> Result<(), String> {
    let fd = t.stream.as_raw_fd();
    let deadline = Instant::now() + Duration::from_secs_f64(cfg.timeout);
    let mut msg: Vec<u8> = (0..cfg.size).map(|j| pattern_byte(u32::MAX, j)).collect();
    write_header(&mut msg, u32::MAX, 0);
    let mut echo = vec![0u8; cfg.size + 1];
    let mut got = 0;
    t.tls.encrypt(&msg).map_err(|e| format!("prime: {e}"))?;
    while got < cfg.size {
        let sent = t.tls.flush(fd).map_err(|e| format!("prime: send: {e}"))?;
        let filled = t.tls.fill(fd).map_err(|e| format!("prime: recv: {e}"))?;
        match t.tls.decrypt(&mut echo[got..]) {
            Ok(Decrypted::More(n) | Decrypted::Full(n)) => got += n,
            Ok(Decrypted::Closed(_)) => {
                return Err("prime: the server closed the connection".into())
            }
            Err(e) => return Err(format!("prime: {e}")),
        }
        if got >= cfg.size {
            break;
        }
        if filled == Filled::Eof {
            return Err("prime: the server closed the connection".into());
        }
        if filled == Filled::WouldBlock {
            let events = if sent {
                libc::POLLIN
            } else {
                libc::POLLIN | libc::POLLOUT
            };
            wait_ready(fd, events, deadline)
                .map_err(|_| format!("prime: no echo within {:.1} s", cfg.timeout))?;
        }
    }
    if echo[..got] != msg[..] {
        return Err("prime: the echo differs from the message".into());
    }
    t.tls.close_notify();
    let _ = t.tls.flush(fd);
    drop(t);
    // Let the server see the close before the measured connections arrive.
    std::thread::sleep(Duration::from_millis(20));
    Ok(())
}

struct Conn {
    sock: Sock,
    id: u32,
    msg: PageBuf,
    buf: PageBuf,
    sent: usize,
    recvd: usize,
    seq: u64,
    started: Instant,
    want_write: bool,
    alive: bool,
    /// A request is in flight.
    busy: bool,
}

/// The message's fixed part: byte i of connection `id` (the header is overwritten).
fn pattern_byte(id: u32, i: usize) -> u8 {
    ((i as u32)
        .wrapping_mul(31)
        .wrapping_add(id.wrapping_mul(97))
        >> 3) as u8
        ^ (i as u8)
}

fn write_header(msg: &mut [u8], id: u32, seq: u64) {
    let mut header = [0u8; HEADER];
    header[..8].copy_from_slice(&seq.to_le_bytes());
    header[8..12].copy_from_slice(&id.to_le_bytes());
    header[12..16].copy_from_slice(b"oxlg");
    let n = msg.len().min(HEADER);
    msg[..n].copy_from_slice(&header[..n]);
}

fn read_seq(msg: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = msg.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

#[derive(Default)]
struct Counters {
    requests: u64,
    bytes: u64,
    errors: u64,
    lost: u64,
    stale: u64,
}

struct Run {
    cfg: Config,
    ep: Epoll,
    conns: Vec<Conn>,
    counters: Counters,
    error_samples: Vec<String>,
    latencies_us: Vec<u32>,
    record_latency: bool,
    /// `--sync-stdin` after the window: complete the requests in flight, start none.
    draining: bool,
}

enum Step {
    Pending,
    Done,
}

impl Run {
    fn fail(&mut self, idx: usize, what: String) {
        self.counters.errors += 1;
        if self.error_samples.len() < 5 {
            self.error_samples.push(format!("connection {idx}: {what}"));
        }
        let conn = &mut self.conns[idx];
        if conn.alive && conn.sock_is_stream() {
            conn.alive = false;
            let _ = self.ep.ctl(libc::EPOLL_CTL_DEL, conn.sock.fd(), 0, 0);
        }
    }

    fn set_interest(&mut self, idx: usize, write: bool) -> io::Result<()> {
        let conn = &mut self.conns[idx];
        if conn.want_write != write {
            let mut events = libc::EPOLLIN as u32;
            if write {
                events |= libc::EPOLLOUT as u32;
            }
            self.ep
                .ctl(libc::EPOLL_CTL_MOD, conn.sock.fd(), events, idx as u64)?;
            conn.want_write = write;
        }
        Ok(())
    }

    /// Begin the connection's next request: new sequence number, send what fits.
    fn start_request(&mut self, idx: usize, now: Instant) {
        let conn = &mut self.conns[idx];
        conn.seq += 1;
        write_header(&mut conn.msg, conn.id, conn.seq);
        conn.sent = 0;
        conn.recvd = 0;
        conn.started = now;
        conn.busy = true;
        self.flush(idx);
    }

    fn flush(&mut self, idx: usize) {
        let conn = &mut self.conns[idx];
        let result = match &mut conn.sock {
            Sock::Stream(s) => loop {
                if conn.sent == conn.msg.len() {
                    break Ok(());
                }
                match s.write(&conn.msg[conn.sent..]) {
                    Ok(0) => break Err(io::Error::new(ErrorKind::WriteZero, "write returned 0")),
                    Ok(n) => conn.sent += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(()),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            },
            Sock::Udp(s) => loop {
                match s.send(&conn.msg) {
                    Ok(n) if n == conn.msg.len() => {
                        conn.sent = n;
                        break Ok(());
                    }
                    Ok(n) => {
                        break Err(io::Error::other(format!(
                            "sent {n} of {} bytes",
                            conn.msg.len()
                        )))
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(()),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    // An ICMP port-unreachable from an earlier datagram; try again later.
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => break Ok(()),
                    Err(e) => break Err(e),
                }
            },
            Sock::Tls(t) => {
                // The memory buffer takes the whole message at once: encrypt it, then
                // one write of the records (the rest on EPOLLOUT).
                let encrypted = if conn.sent < conn.msg.len() {
                    let r = t.tls.encrypt(&conn.msg[conn.sent..]);
                    conn.sent = conn.msg.len();
                    r.map_err(io::Error::other)
                } else {
                    Ok(())
                };
                encrypted.and_then(|()| t.tls.flush(t.stream.as_raw_fd()).map(|_| ()))
            }
        };
        let pending =
            conn.sent < conn.msg.len() || matches!(&conn.sock, Sock::Tls(t) if t.tls.wants_write());
        if let Err(e) = result {
            self.fail(idx, format!("send: {e}"));
            return;
        }
        if let Err(e) = self.set_interest(idx, pending) {
            self.fail(idx, format!("epoll_ctl: {e}"));
        }
    }

    fn complete(&mut self, idx: usize) -> Result<(), String> {
        let verify_every = self.cfg.verify_every;
        let conn = &mut self.conns[idx];
        let size = conn.msg.len();
        let got = &conn.buf[..size];
        if got[..size.min(HEADER)] != conn.msg[..size.min(HEADER)] {
            return Err(format!("echo header mismatch (request {})", conn.seq));
        }
        if conn.seq % verify_every == 0 && got != &conn.msg[..] {
            let at = got
                .iter()
                .zip(conn.msg.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!(
                "echo content differs at byte {at} of {size} (request {})",
                conn.seq
            ));
        }
        let now = Instant::now();
        if self.record_latency && self.latencies_us.len() < 20_000_000 {
            let us = now.duration_since(conn.started).as_micros();
            self.latencies_us
                .push(u32::try_from(us).unwrap_or(u32::MAX));
        }
        self.counters.requests += 1;
        self.counters.bytes += size as u64;
        self.conns[idx].busy = false;
        if self.draining {
            return Ok(());
        }
        if self.cfg.reconnect {
            self.reconnect(idx)?;
        }
        self.start_request(idx, now);
        Ok(())
    }

    /// `--reconnect`: replaces the connection with a new one; the old one is reset
    /// (SO_LINGER 0) as it is dropped, leaving no TIME_WAIT.
    fn reconnect(&mut self, idx: usize) -> Result<(), String> {
        let sock = connect(&self.cfg, None, None).map_err(|e| format!("reconnect: {e}"))?;
        self.ep
            .ctl(
                libc::EPOLL_CTL_ADD,
                sock.fd(),
                libc::EPOLLIN as u32,
                idx as u64,
            )
            .map_err(|e| format!("epoll_ctl: {e}"))?;
        let conn = &mut self.conns[idx];
        let old = std::mem::replace(&mut conn.sock, sock);
        conn.want_write = false;
        set_linger_zero(old.fd());
        // Closing the old socket removes it from the epoll set.
        drop(old);
        Ok(())
    }

    fn on_readable(&mut self, idx: usize) {
        let size = self.cfg.size;
        let conn = &mut self.conns[idx];
        let step = match &mut conn.sock {
            Sock::Stream(s) => loop {
                match s.read(&mut conn.buf[conn.recvd..]) {
                    Ok(0) => break Err("the server closed the connection".to_string()),
                    Ok(n) => {
                        conn.recvd += n;
                        if conn.recvd > size {
                            break Err(format!(
                                "echoed {} bytes for a {size}-byte message",
                                conn.recvd
                            ));
                        }
                        if conn.recvd == size {
                            if conn.sent < size {
                                break Err("echo complete before the message was sent".into());
                            }
                            break Ok(Step::Done);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(Step::Pending),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => break Err(format!("recv: {e}")),
                }
            },
            Sock::Udp(s) => loop {
                match s.recv(&mut conn.buf) {
                    Ok(n) if n != size => {
                        break Err(format!("echoed datagram of {n} bytes for {size}"))
                    }
                    Ok(_) => {
                        if size >= 8 && read_seq(&conn.buf) != Some(conn.seq) {
                            // The late echo of a datagram we already gave up on.
                            self.counters.stale += 1;
                            continue;
                        }
                        conn.recvd = size;
                        break Ok(Step::Done);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(Step::Pending),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                        break Err("the server is gone (connection refused)".into())
                    }
                    Err(e) => break Err(format!("recv: {e}")),
                }
            },
            Sock::Tls(t) => loop {
                // One read of what the kernel has, then every record in it decrypted.
                let fd = t.stream.as_raw_fd();
                let filled = match t.tls.fill(fd) {
                    Ok(f) => f,
                    Err(e) => break Err(format!("recv: {e}")),
                };
                let closed = match t.tls.decrypt(&mut conn.buf[conn.recvd..]) {
                    Ok(Decrypted::More(n) | Decrypted::Full(n)) => {
                        conn.recvd += n;
                        false
                    }
                    Ok(Decrypted::Closed(n)) => {
                        conn.recvd += n;
                        true
                    }
                    Err(e) => break Err(e),
                };
                if t.tls.wants_write() {
                    // OpenSSL answered something (a key update): send it along.
                    if let Err(e) = t.tls.flush(fd) {
                        break Err(format!("send: {e}"));
                    }
                }
                if conn.recvd > size {
                    break Err(format!(
                        "echoed {} bytes for a {size}-byte message",
                        conn.recvd
                    ));
                }
                if conn.recvd == size {
                    if conn.sent < size {
                        break Err("echo complete before the message was sent".into());
                    }
                    break Ok(Step::Done);
                }
                match filled {
                    _ if closed => break Err("the server closed the TLS session".into()),
                    Filled::Eof => break Err("the server closed the connection".into()),
                    Filled::Bytes { full: true, .. } => {}
                    Filled::Bytes { full: false, .. } | Filled::WouldBlock => {
                        break Ok(Step::Pending)
                    }
                }
            },
        };
        if matches!(&self.conns[idx].sock, Sock::Tls(t) if t.tls.wants_write()) {
            // Records OpenSSL produced while reading that the socket did not take yet.
            if let Err(e) = self.set_interest(idx, true) {
                self.fail(idx, format!("epoll_ctl: {e}"));
                return;
            }
        }
        match step {
            Ok(Step::Pending) => {}
            Ok(Step::Done) => {
                if let Err(e) = self.complete(idx) {
                    self.fail(idx, e);
                    if !self.conns[idx].sock_is_stream() {
                        // UDP sockets stay usable: go on with a fresh request.
                        self.start_request(idx, Instant::now());
                    }
                }
            }
            Err(e) => {
                self.fail(idx, e);
                if !self.conns[idx].sock_is_stream() {
                    self.conns[idx].alive = false;
                    let fd = self.conns[idx].sock.fd();
                    let _ = self.ep.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
                }
            }
        }
    }

    /// Requests unanswered for longer than the timeout: an error on a stream (the
    /// connection is dropped), a lost datagram on UDP (sent again with a new number).
    fn check_stalls(&mut self, now: Instant) {
        let timeout = Duration::from_secs_f64(self.cfg.timeout);
        for idx in 0..self.conns.len() {
            let conn = &self.conns[idx];
            if !conn.alive || !conn.busy || now.duration_since(conn.started) < timeout {
                continue;
            }
            if conn.sock_is_stream() {
                let what = format!(
                    "no complete echo within {:.1} s ({} of {} bytes back)",
                    self.cfg.timeout,
                    conn.recvd,
                    conn.msg.len()
                );
                self.fail(idx, what);
            } else {
                self.counters.lost += 1;
                self.start_request(idx, now);
            }
        }
    }
}

impl Conn {
    fn sock_is_stream(&self) -> bool {
        matches!(self.sock, Sock::Stream(_) | Sock::Tls(_))
    }
}

// --------------------------------------------------------------------------------------
// Report

struct Snapshot {
    at: Instant,
    requests: u64,
    bytes: u64,
    errors: u64,
    server_cpu: Option<f64>,
    client_cpu: Option<f64>,
    server_wait: Option<f64>,
    client_wait: Option<f64>,
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.6}"),
        _ => "null".to_string(),
    }
}

fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted.get(rank.min(sorted.len() - 1)).copied()
}

/// Runs the load; returns the JSON line and the number of failed requests.
fn run(cfg: Config) -> Result<(String, u64), String> {
    let ticks = clock_ticks_per_second();
    let ep = Epoll::new().map_err(|e| format!("epoll_create1: {e}"))?;
    let udp_target = if cfg.mode == Mode::Udp {
        Some(resolve(&cfg.addr).map_err(|e| format!("{}: {e}", cfg.addr))?)
    } else {
        None
    };
    let tls_ctx = match (&cfg.tls, &cfg.ca) {
        (true, Some(ca)) => Some(tls::client_context(ca)?),
        _ => None,
    };
    if cfg.prime && cfg.mode != Mode::Udp {
        prime(&cfg, tls_ctx.as_ref())?;
    }
    let now = Instant::now();
    let mut conns = Vec::with_capacity(cfg.conns);
    for i in 0..cfg.conns {
        let sock = connect(&cfg, udp_target, tls_ctx.as_ref())
            .map_err(|e| format!("connect to {} ({i}): {e}", cfg.addr))?;
        let id = u32::try_from(i).map_err(|_| "too many connections")?;
        ep.ctl(
            libc::EPOLL_CTL_ADD,
            sock.fd(),
            libc::EPOLLIN as u32,
            i as u64,
        )
        .map_err(|e| format!("epoll_ctl: {e}"))?;
        // Page-aligned, as every server's buffers should be (oxloop_core::buffers):
        // the kernel's copies out of and into them are then never in a slow spot.
        let mut msg = PageBuf::new(cfg.size);
        for (j, b) in msg.iter_mut().enumerate() {
            *b = pattern_byte(id, j);
        }
        conns.push(Conn {
            sock,
            id,
            msg,
            buf: PageBuf::new(cfg.size + 1),
            sent: 0,
            recvd: 0,
            seq: 0,
            started: now,
            want_write: false,
            alive: true,
            busy: false,
        });
    }
    let tls_version = match conns.first().map(|c: &Conn| &c.sock) {
        Some(Sock::Tls(t)) => Some(t.tls.describe()),
        _ => None,
    };
    if cfg.sync_stdin {
        eprintln!("connected");
        let mut line = String::new();
        io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("stdin: {e}"))?;
    }
    let mut run = Run {
        cfg: cfg.clone(),
        ep,
        conns,
        counters: Counters::default(),
        error_samples: Vec::new(),
        latencies_us: Vec::with_capacity(1 << 16),
        record_latency: false,
        draining: false,
    };

    let t0 = Instant::now();
    let measure_at = t0 + Duration::from_secs_f64(cfg.warmup);
    let end_at = measure_at + Duration::from_secs_f64(cfg.duration);
    for idx in 0..run.conns.len() {
        run.start_request(idx, t0);
    }
    let snapshot = |run: &Run, at: Instant| Snapshot {
        at,
        requests: run.counters.requests,
        bytes: run.counters.bytes,
        errors: run.counters.errors,
        server_cpu: cfg.server_pid.and_then(|pid| cpu_seconds(Some(pid), ticks)),
        client_cpu: cpu_seconds(None, ticks),
        server_wait: cfg
            .server_pid
            .and_then(|pid| runqueue_wait_seconds(Some(pid))),
        client_wait: runqueue_wait_seconds(None),
    };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut start: Option<Snapshot> = None;
    let mut last_stall_check = t0;
    let warmup_requests;
    let end = loop {
        let now = Instant::now();
        if start.is_none() && now >= measure_at {
            start = Some(snapshot(&run, now));
            run.record_latency = true;
        }
        if now >= end_at {
            if !cfg.sync_stdin {
                break snapshot(&run, now);
            }
            run.draining = true;
            if !run.conns.iter().any(|c| c.alive && c.busy) {
                break snapshot(&run, now);
            }
        }
        if !run.conns.iter().any(|c| c.alive) {
            break snapshot(&run, now);
        }
        if now.duration_since(last_stall_check) >= Duration::from_millis(100) {
            run.check_stalls(now);
            last_stall_check = now;
        }
        let next = if start.is_none() { measure_at } else { end_at };
        let wait_ms = next.saturating_duration_since(now).as_millis().clamp(1, 50);
        let n = run
            .ep
            .wait(&mut events, libc::c_int::try_from(wait_ms).unwrap_or(50))
            .map_err(|e| format!("epoll_wait: {e}"))?;
        for ev in &events[..n] {
            let flags = ev.events;
            let idx = usize::try_from(ev.u64).unwrap_or(usize::MAX);
            if idx >= run.conns.len() || !run.conns[idx].alive {
                continue;
            }
            if flags & (libc::EPOLLOUT as u32) != 0 {
                run.flush(idx);
            }
            if flags & ((libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP) as u32) != 0
                && run.conns[idx].alive
            {
                run.on_readable(idx);
            }
        }
    };
    if cfg.sync_stdin {
        eprintln!("finished");
        let mut line = String::new();
        io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("stdin: {e}"))?;
    }
    let start = match start {
        Some(s) => {
            warmup_requests = s.requests;
            s
        }
        None => {
            // Every connection failed during the warm-up.
            warmup_requests = end.requests;
            Snapshot {
                at: end.at,
                requests: end.requests,
                bytes: end.bytes,
                errors: 0,
                server_cpu: end.server_cpu,
                client_cpu: end.client_cpu,
                server_wait: end.server_wait,
                client_wait: end.client_wait,
            }
        }
    };
    let seconds = end.at.duration_since(start.at).as_secs_f64();
    let delta = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let mut lat = std::mem::take(&mut run.latencies_us);
    lat.sort_unstable();
    let lat_json = |p: f64| percentile(&lat, p).map_or("null".to_string(), |v| v.to_string());
    let samples: Vec<String> = run.error_samples.iter().map(|s| json_string(s)).collect();
    let alive = run.conns.iter().filter(|c| c.alive).count();
    let mut out = String::new();
    let _ = write!(
        out,
        "{{\"mode\":{},\"addr\":{},\"conns\":{},\"conns_alive\":{},\"size\":{},\"warmup\":{},\"seconds\":{:.6},\
         \"requests\":{},\"bytes\":{},\"warmup_requests\":{},\"errors\":{},\"errors_in_window\":{},\"lost\":{},\
         \"stale\":{},\"server_pid\":{},\"server_cpu_s\":{},\"client_cpu_s\":{},\"server_wait_s\":{},\"client_wait_s\":{},\"verify_every\":{},\"reconnect\":{},\"tls\":{},\
         \"latency_us\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"max\":{}}},\"error_samples\":[{}]}}",
        json_string(cfg.mode.name()),
        json_string(&cfg.addr),
        cfg.conns,
        alive,
        cfg.size,
        cfg.warmup,
        seconds,
        end.requests - start.requests,
        end.bytes - start.bytes,
        warmup_requests,
        run.counters.errors,
        end.errors - start.errors,
        run.counters.lost,
        run.counters.stale,
        cfg.server_pid.map_or("null".to_string(), |p| p.to_string()),
        json_opt(delta(start.server_cpu, end.server_cpu)),
        json_opt(delta(start.client_cpu, end.client_cpu)),
        json_opt(delta(start.server_wait, end.server_wait)),
        json_opt(delta(start.client_wait, end.client_wait)),
        cfg.verify_every,
        cfg.reconnect,
        tls_version.as_deref().map_or("null".to_string(), json_string),
        lat_json(50.0),
        lat_json(90.0),
        lat_json(99.0),
        lat_json(100.0),
        samples.join(","),
    );
    Ok((out, run.counters.errors))
}

fn main() -> ExitCode {
    let cfg = match parse_args(std::env::args().skip(1)) {
        Ok(cfg) => cfg,
        Err(msg) => {
            if msg.is_empty() {
                let _ = writeln!(io::stdout(), "{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("oxloop-loadgen: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(cfg) {
        Ok((line, errors)) => {
            let mut stdout = io::stdout().lock();
            if writeln!(stdout, "{line}")
                .and_then(|()| stdout.flush())
                .is_err()
                || errors > 0
            {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(msg) => {
            eprintln!("oxloop-loadgen: {msg}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, UdpSocket};
    use std::os::unix::net::UnixListener;
    use std::thread;

    fn cfg(mode: Mode, addr: String, conns: usize, size: usize) -> Config {
        Config {
            mode,
            addr,
            conns,
            size,
            warmup: 0.05,
            duration: 0.2,
            server_pid: Some(std::process::id()),
            timeout: 2.0,
            verify_every: 1,
            connect_timeout: 2.0,
            prime: true,
            reconnect: false,
            tls: false,
            ca: None,
            server_name: "localhost".into(),
            sync_stdin: false,
        }
    }

    fn field(json: &str, name: &str) -> f64 {
        let key = format!("\"{name}\":");
        let at = json.find(&key).unwrap() + key.len();
        let rest = &json[at..];
        let end = rest.find([',', '}']).unwrap();
        rest[..end].parse().unwrap()
    }

    fn echo_stream<S: Read + Write>(mut s: S) {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    }

    #[test]
    fn stat_parsing() {
        let stat = "1234 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(300));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        assert!(cpu_seconds(None, clock_ticks_per_second()).is_some());
    }

    #[test]
    fn args() {
        let argv = |s: &str| {
            s.split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>()
                .into_iter()
        };
        let c = parse_args(argv("--mode udp --addr 127.0.0.1:9 --conns 3 --size 100")).unwrap();
        assert_eq!(
            (c.mode, c.conns, c.size, c.timeout),
            (Mode::Udp, 3, 100, 0.2)
        );
        assert!(parse_args(argv("--mode udp --addr x --size 70000")).is_err());
        assert!(parse_args(argv("--mode tcp")).is_err());
        assert!(parse_args(argv("--mode tcp --addr x --duration 0")).is_err());
    }

    #[test]
    fn json_escaping() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn tcp_echo() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        thread::spawn(move || {
            for s in listener.incoming().flatten() {
                thread::spawn(move || echo_stream(s));
            }
        });
        let out = run(cfg(Mode::Tcp, addr, 3, 100_000)).unwrap().0;
        assert!(field(&out, "requests") > 0.0, "{out}");
        assert_eq!(field(&out, "errors"), 0.0, "{out}");
        assert_eq!(field(&out, "bytes"), field(&out, "requests") * 100_000.0);
        assert!(field(&out, "server_cpu_s") >= 0.0);
        assert!(field(&out, "server_wait_s") >= 0.0);
        assert!(field(&out, "client_wait_s") >= 0.0);
    }

    #[test]
    fn tcp_reconnect_opens_a_connection_per_request() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = accepted.clone();
        thread::spawn(move || {
            for s in listener.incoming().flatten() {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                thread::spawn(move || echo_stream(s));
            }
        });
        let mut config = cfg(Mode::Tcp, addr, 2, 512);
        config.reconnect = true;
        let out = run(config).unwrap().0;
        let requests = field(&out, "requests") + field(&out, "warmup_requests");
        assert!(requests > 0.0, "{out}");
        assert_eq!(field(&out, "errors"), 0.0, "{out}");
        // One connection per request, plus the first two and the priming one.
        let accepted = accepted.load(std::sync::atomic::Ordering::Relaxed) as f64;
        assert!(
            accepted >= requests,
            "{accepted} connections for {requests} requests"
        );
        assert!(parse_args(
            "--mode udp --addr x --reconnect"
                .split_whitespace()
                .map(String::from)
        )
        .is_err());
    }

    #[test]
    fn unix_echo() {
        let dir = std::env::temp_dir().join(format!("oxloop-loadgen-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("echo.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        thread::spawn(move || {
            for s in listener.incoming().flatten() {
                thread::spawn(move || echo_stream(s));
            }
        });
        let out = run(cfg(
            Mode::Unix,
            path.to_string_lossy().into_owned(),
            2,
            1024,
        ))
        .unwrap()
        .0;
        let _ = std::fs::remove_dir_all(&dir);
        assert!(field(&out, "requests") > 0.0, "{out}");
        assert_eq!(field(&out, "errors"), 0.0, "{out}");
    }

    #[test]
    fn udp_echo() {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap().to_string();
        thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], peer);
            }
        });
        let out = run(cfg(Mode::Udp, addr, 4, 1024)).unwrap().0;
        assert!(field(&out, "requests") > 0.0, "{out}");
        assert_eq!(field(&out, "errors"), 0.0, "{out}");
    }

    #[test]
    fn corrupted_echo_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        buf[n - 1] ^= 0xff; // flips the last byte of every chunk
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let primed = run(cfg(Mode::Tcp, addr.clone(), 1, 64));
        assert_eq!(
            primed.unwrap_err(),
            "prime: the echo differs from the message"
        );
        let mut config = cfg(Mode::Tcp, addr, 1, 64);
        config.prime = false;
        let out = run(config).unwrap().0;
        assert_eq!(field(&out, "errors"), 1.0, "{out}");
        assert!(out.contains("content differs at byte 63"), "{out}");
    }
}
