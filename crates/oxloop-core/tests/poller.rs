//! Integration tests of the poller, waker and registry on real fds.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use oxloop_core::poller::{Event, Events, Interest, Poller};
use oxloop_core::waker::Waker;

fn wait(p: &Poller, timeout_ms: u64) -> Vec<Event> {
    let mut events = Events::with_capacity(16);
    p.wait(&mut events, Some(Duration::from_millis(timeout_ms)))
        .unwrap();
    events.iter().collect()
}

#[test]
fn readiness_is_level_triggered() {
    let p = Poller::new().unwrap();
    let (mut a, b) = UnixStream::pair().unwrap();
    p.add(b.as_raw_fd(), 42, Interest::READ).unwrap();
    assert!(wait(&p, 0).is_empty());
    a.write_all(b"x").unwrap();
    // Not drained: reported again and again.
    for _ in 0..3 {
        assert_eq!(
            wait(&p, 100),
            vec![Event {
                token: 42,
                readable: true,
                writable: false
            }]
        );
    }
    let mut buf = [0u8; 1];
    (&b).read_exact(&mut buf).unwrap();
    assert!(wait(&p, 0).is_empty());
}

#[test]
fn write_interest_and_modify() {
    let p = Poller::new().unwrap();
    let (_a, b) = UnixStream::pair().unwrap();
    p.add(b.as_raw_fd(), 1, Interest::WRITE).unwrap();
    assert_eq!(
        wait(&p, 100),
        vec![Event {
            token: 1,
            readable: false,
            writable: true
        }]
    );
    p.modify(b.as_raw_fd(), 2, Interest::READ).unwrap();
    assert!(wait(&p, 0).is_empty());
    p.delete(b.as_raw_fd()).unwrap();
    assert!(p.delete(b.as_raw_fd()).is_err());
}

#[test]
fn hangup_is_readable_and_writable() {
    let p = Poller::new().unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    p.add(b.as_raw_fd(), 7, Interest::READ).unwrap();
    drop(a);
    let evs = wait(&p, 100);
    assert_eq!(evs.len(), 1);
    assert!(evs[0].readable);
}

#[test]
fn closed_fd_cannot_be_registered() {
    let p = Poller::new().unwrap();
    let err = p.add(1_000_000, 1, Interest::READ).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EBADF));
}

#[test]
fn timeout_never_returns_early() {
    let p = Poller::new().unwrap();
    for micros in [1u64, 500, 1500, 2500] {
        let start = Instant::now();
        let mut events = Events::with_capacity(4);
        p.wait(&mut events, Some(Duration::from_micros(micros)))
            .unwrap();
        assert!(start.elapsed() >= Duration::from_micros(micros), "{micros}");
    }
}

#[test]
fn waker_wakes_a_blocked_wait_from_another_thread() {
    let p = Poller::new().unwrap();
    let w = std::sync::Arc::new(Waker::new().unwrap());
    p.add(w.as_raw_fd(), 9, Interest::READ).unwrap();
    w.set_sleeping(true);
    let w2 = w.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        w2.wake_if_sleeping();
    });
    let start = Instant::now();
    let mut events = Events::with_capacity(4);
    p.wait(&mut events, Some(Duration::from_secs(10))).unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(events.get(0).map(|e| e.token), Some(9));
    w.set_sleeping(false);
    w.drain();
    t.join().unwrap();
    assert!(wait(&p, 0).is_empty());
    // Not sleeping: no syscall, no wake-up.
    w.wake_if_sleeping();
    assert!(wait(&p, 0).is_empty());
    // Many wakers while asleep: one pending wake-up, and it is enough.
    w.set_sleeping(true);
    for _ in 0..100 {
        w.wake_if_sleeping();
    }
    assert_eq!(wait(&p, 100).len(), 1);
    w.drain();
    assert!(wait(&p, 0).is_empty());
}

#[test]
fn reopen_gives_an_empty_interest_list() {
    let p = Poller::new().unwrap();
    let (mut a, b) = UnixStream::pair().unwrap();
    p.add(b.as_raw_fd(), 3, Interest::READ).unwrap();
    a.write_all(b"x").unwrap();
    let before = p.as_raw_fd();
    p.reopen().unwrap();
    assert!(wait(&p, 0).is_empty());
    p.add(b.as_raw_fd(), 4, Interest::READ).unwrap();
    assert_eq!(wait(&p, 100).len(), 1);
    assert!(before >= 0 && p.as_raw_fd() >= 0);
}

/// Puts `file`'s open file at fd number `fd` (closing what was there), the way a
/// number is reused after a close, without racing the other tests for numbers.
fn reuse_number(fd: i32, file: &impl AsRawFd) {
    // SAFETY: both fds are open and owned by the test; `fd` stays owned by its
    // original owner, which now holds the other file.
    assert_eq!(unsafe { libc::dup2(file.as_raw_fd(), fd) }, fd);
}

#[test]
fn registrations_tell_a_reused_fd_number_from_the_registered_file() {
    use oxloop_core::poller::inode_of;
    let p = Poller::new().unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    p.add(fd, 0xabcd_0000_0000 | 7, Interest::BOTH).unwrap();
    let regs = p.registrations().unwrap();
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0].fd, fd);
    assert_eq!(regs[0].token, 0xabcd_0000_0000 | 7);
    assert_eq!(regs[0].inode, inode_of(fd).unwrap());
    // Closing the file removes it from epoll; the number, reused, is another file.
    let (c, _d) = UnixStream::pair().unwrap();
    reuse_number(fd, &c);
    assert!(p.registrations().unwrap().is_empty());
    // A registration that outlives its number (the file has another fd) keeps
    // the old inode.
    let registered = inode_of(fd).unwrap();
    p.add(fd, 1, Interest::READ).unwrap();
    let (e, _f) = UnixStream::pair().unwrap();
    reuse_number(fd, &e);
    let regs = p.registrations().unwrap();
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0].inode, registered);
    assert_ne!(inode_of(fd).unwrap(), registered);
    drop((a, c, e));
}
