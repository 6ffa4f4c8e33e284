//! The loop clock: `CLOCK_MONOTONIC` in full resolution, the clock behind
//! `time.monotonic()`, so `loop.time()` and `time.monotonic()` agree.

use std::time::Duration;

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

/// The poll timeout for a deadline `secs` away, as `_run_once` computes it:
/// `min(max(0, secs), max)`. Any `f64` is accepted: NaN (a NaN or `inf - inf`
/// deadline) and negative values give zero (Python's `max(0, nan)` is 0), `+inf`
/// and huge values give `max`. Never panics, unlike `Duration::from_secs_f64`.
#[must_use]
pub fn poll_timeout(secs: f64, max: Duration) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    if secs >= max.as_secs_f64() {
        return max;
    }
    Duration::try_from_secs_f64(secs).unwrap_or(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_timeout_takes_any_float() {
        let max = Duration::from_secs(86_400);
        assert_eq!(poll_timeout(f64::NAN, max), Duration::ZERO);
        assert_eq!(poll_timeout(-f64::NAN, max), Duration::ZERO);
        assert_eq!(poll_timeout(f64::NEG_INFINITY, max), Duration::ZERO);
        assert_eq!(poll_timeout(-1.0, max), Duration::ZERO);
        assert_eq!(poll_timeout(-0.0, max), Duration::ZERO);
        assert_eq!(poll_timeout(f64::INFINITY, max), max);
        assert_eq!(poll_timeout(1e300, max), max);
        assert_eq!(poll_timeout(f64::MAX, max), max);
        assert_eq!(poll_timeout(1.5, max), Duration::from_millis(1500));
        assert_eq!(poll_timeout(f64::MIN_POSITIVE, max), Duration::ZERO);
    }

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
