//! Loop metrics (`oxloop.metrics(loop)`): what the loop has done and how late its
//! work runs.
//!
//! Everything here is kept without a clock read of its own on the hot path: plain
//! counters, and the loop time each iteration reads anyway (asyncio's
//! `end_time`). The clock is read only around a poll that blocks (which costs a
//! context switch anyway), at the start and end of a run, and, only once callback
//! timing is asked for, around each callback.
//!
//! Lag is sampled once per iteration that runs work. For work that was waiting
//! when the iteration began (callbacks queued before it, I/O found ready without
//! blocking), the sample is the time since the previous iteration started its
//! callbacks: the work became ready after that, so it waited at most that long.
//! Work the loop was blocked waiting for is not late (0). A timer adds its own
//! lateness: the most overdue one's, past its deadline. The window is the last
//! [`LAG_WINDOW`] samples.

use std::time::Instant;

/// Lag samples kept (the sliding window).
pub(crate) const LAG_WINDOW: usize = 4096;

/// Slow-callback buckets: a callback that took at least this many seconds counts
/// in the bucket (and in every lower one).
pub(crate) const SLOW_BUCKETS: [f64; 4] = [0.001, 0.01, 0.1, 1.0];

#[derive(Default)]
pub(crate) struct Metrics {
    pub iterations: u64,
    pub callbacks: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub transports_open: u64,
    /// Seconds spent blocked in the poll (the GIL released).
    pub poll_seconds: f64,
    /// Seconds spent in finished runs (`run_forever`, `run_until_complete`).
    run_seconds: f64,
    /// The start of the run going on, if any.
    run_started: Option<Instant>,
    /// Loop time at which the previous iteration started its callbacks.
    last_phase: Option<f64>,
    lag: Vec<f64>,
    /// Where the next sample goes once the window is full.
    lag_next: usize,
    /// Callbacks that took at least `SLOW_BUCKETS[i]` seconds.
    pub slow: [u64; 4],
}

impl Metrics {
    pub(crate) fn run_started(&mut self) {
        self.run_started = Some(Instant::now());
    }

    pub(crate) fn run_ended(&mut self) {
        if let Some(started) = self.run_started.take() {
            self.run_seconds += started.elapsed().as_secs_f64();
        }
    }

    /// Seconds spent running, the run going on included.
    pub(crate) fn run_seconds(&self) -> f64 {
        self.run_seconds
            + self
                .run_started
                .map_or(0.0, |started| started.elapsed().as_secs_f64())
    }

    /// One iteration starting its `ntodo` callbacks at loop time `now`: `waited`
    /// when its work was waiting before it began (callbacks queued earlier, I/O
    /// found ready without blocking), `first_due` the deadline of the earliest
    /// timer it runs.
    pub(crate) fn iteration(
        &mut self,
        now: f64,
        waited: bool,
        first_due: Option<f64>,
        ntodo: usize,
    ) {
        self.iterations += 1;
        self.callbacks += ntodo as u64;
        let previous = self.last_phase.replace(now);
        if ntodo == 0 {
            return;
        }
        // Work the loop blocked waiting for is not late.
        let mut lag = match (waited, previous) {
            (true, Some(phase)) => now - phase,
            _ => 0.0,
        };
        if let Some(when) = first_due {
            lag = lag.max(now - when);
        }
        // A NaN or infinite deadline (due at once) says nothing about lateness.
        if lag.is_finite() {
            self.sample(lag.max(0.0));
        }
    }

    fn sample(&mut self, lag: f64) {
        if self.lag.len() < LAG_WINDOW {
            self.lag.push(lag);
        } else {
            self.lag[self.lag_next] = lag;
            self.lag_next = (self.lag_next + 1) % LAG_WINDOW;
        }
    }

    /// A callback took `seconds`.
    pub(crate) fn timed(&mut self, seconds: f64) {
        for (count, limit) in self.slow.iter_mut().zip(SLOW_BUCKETS) {
            if seconds >= limit {
                *count += 1;
            }
        }
    }

    /// `(samples, max, p50, p90, p99)` of the lag window, in seconds (zeros when
    /// empty).
    pub(crate) fn lag_summary(&self) -> (usize, f64, f64, f64, f64) {
        let mut sorted = self.lag.clone();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            // Nearest rank.
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            sorted[rank - 1]
        };
        (
            sorted.len(),
            sorted.last().copied().unwrap_or(0.0),
            at(0.5),
            at(0.9),
            at(0.99),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_from_waiting_work_and_late_timers() {
        let mut m = Metrics::default();
        m.iteration(10.0, true, None, 1); // no previous phase: not late
        m.iteration(10.5, true, None, 1); // waited since 10.0
        m.iteration(11.0, false, Some(10.75), 1); // a timer 0.25 late
        m.iteration(11.1, false, None, 1); // the loop blocked for it: 0
        m.iteration(11.2, false, Some(f64::NAN), 1); // due at once: not late
        m.iteration(11.3, true, None, 0); // no work, no sample
        assert_eq!(m.iterations, 6);
        assert_eq!(m.callbacks, 5);
        let (n, max, p50, _, _) = m.lag_summary();
        assert_eq!(n, 5);
        assert!((max - 0.5).abs() < 1e-9);
        assert!(p50.abs() < 1e-9);
    }

    #[test]
    fn window_keeps_the_latest_samples() {
        let mut m = Metrics::default();
        for i in 0..=LAG_WINDOW {
            #[allow(clippy::cast_precision_loss)]
            m.iteration(
                i as f64,
                false,
                Some(i as f64 - 1.0 - i as f64 / 10_000.0),
                1,
            );
        }
        let (n, max, ..) = m.lag_summary();
        assert_eq!(n, LAG_WINDOW);
        assert!(max > 1.4);
    }

    #[test]
    fn slow_buckets_count_every_threshold_reached() {
        let mut m = Metrics::default();
        m.timed(0.0005);
        m.timed(0.05);
        m.timed(2.0);
        assert_eq!(m.slow, [2, 2, 1, 1]);
    }
}
