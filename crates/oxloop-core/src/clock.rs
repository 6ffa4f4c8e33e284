//! The loop clock: `CLOCK_MONOTONIC` in full resolution, the clock behind
//! `time.monotonic()`, so `loop.time()` and `time.monotonic()` agree.

fn read(call: unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> libc::c_int) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { call(libc::CLOCK_MONOTONIC, &raw mut ts) };
    #[allow(clippy::cast_precision_loss)]
    let secs = ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9;
    secs
}

/// Seconds since an arbitrary point, as `time.monotonic()` returns them.
#[must_use]
pub fn monotonic() -> f64 {
    read(libc::clock_gettime)
}

/// The clock's resolution in seconds (`time.get_clock_info('monotonic').resolution`).
#[must_use]
pub fn resolution() -> f64 {
    read(libc::clock_getres)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_never_goes_back() {
        let mut last = monotonic();
        for _ in 0..10_000 {
            let now = monotonic();
            assert!(now >= last);
            last = now;
        }
    }

    #[test]
    fn resolution_is_fine_grained() {
        let res = resolution();
        assert!(res > 0.0 && res <= 1e-6, "{res}");
    }
}
