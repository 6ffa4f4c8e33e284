//! Property tests of the timer heap and the poll timeout against simple models: a
//! sorted `Vec` for the heap (asyncio's `_scheduled` with its lazy cancellation and
//! its purge when most entries are cancelled), `min(max(0, secs), max)` for the
//! timeout. Deadlines include NaN, ±inf, -0.0, huge values and many ties.

use std::cell::Cell;
use std::cmp::Ordering;
use std::rc::Rc;
use std::time::Duration;

use oxloop_core::clock::poll_timeout;
use oxloop_core::timers::{
    sort_key, TimerEntry, TimerHeap, MIN_CANCELLED_TIMER_HANDLES_FRACTION,
    MIN_SCHEDULED_TIMER_HANDLES,
};
use proptest::prelude::*;

#[derive(Clone)]
struct Entry {
    id: usize,
    cancelled: Rc<Cell<bool>>,
    scheduled: Rc<Cell<bool>>,
}

impl TimerEntry for Entry {
    fn is_cancelled(&self) -> bool {
        self.cancelled.get()
    }
    fn unscheduled(&self) {
        self.scheduled.set(false);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Push(f64),
    /// Cancels the n-th timer pushed so far (modulo their number).
    Cancel(usize),
    Purge,
    PopDue(f64),
}

fn deadline() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(-f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        Just(0.0),
        Just(1e300),
        Just(-1e300),
        // A small grid: many equal deadlines.
        (0..16i32).prop_map(|i| f64::from(i) * 0.5),
        any::<f64>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => deadline().prop_map(Op::Push),
        4 => any::<usize>().prop_map(Op::Cancel),
        1 => Just(Op::Purge),
        1 => deadline().prop_map(Op::PopDue),
    ]
}

/// The model: `(key, seq, id)` of each scheduled entry, kept sorted.
struct Model {
    entries: Vec<(f64, usize, usize)>,
}

impl Model {
    fn sort(&mut self) {
        self.entries
            .sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut heap = TimerHeap::new();
    let mut model = Model {
        entries: Vec::new(),
    };
    let mut all: Vec<Entry> = Vec::new();
    let mut cancelled_count = 0usize;
    for op in ops {
        match *op {
            Op::Push(when) => {
                let e = Entry {
                    id: all.len(),
                    cancelled: Rc::new(Cell::new(false)),
                    scheduled: Rc::new(Cell::new(true)),
                };
                heap.push(when, e.clone());
                // NaN is due at once; -0.0 is 0.0.
                let key = if when.is_nan() {
                    f64::NEG_INFINITY
                } else {
                    when + 0.0
                };
                prop_assert_eq!(sort_key(when).to_bits(), key.to_bits());
                model.entries.push((key, e.id, e.id));
                model.sort();
                all.push(e);
            }
            Op::Cancel(n) => {
                if all.is_empty() {
                    continue;
                }
                let e = &all[n % all.len()];
                // asyncio's TimerHandle.cancel: counted only while scheduled.
                if !e.cancelled.replace(true) && e.scheduled.get() {
                    cancelled_count += 1;
                }
            }
            Op::Purge => {
                let scheduled = model.entries.len();
                #[allow(clippy::cast_precision_loss)]
                let many = scheduled > MIN_SCHEDULED_TIMER_HANDLES
                    && cancelled_count as f64 / scheduled as f64
                        > MIN_CANCELLED_TIMER_HANDLES_FRACTION;
                let mut expected_removed: Vec<usize> = Vec::new();
                let mut expected_count = cancelled_count;
                if many {
                    model.entries.retain(|&(_, _, id)| {
                        let gone = all[id].cancelled.get();
                        if gone {
                            expected_removed.push(id);
                        }
                        !gone
                    });
                    expected_count = 0;
                } else {
                    while model
                        .entries
                        .first()
                        .is_some_and(|&(_, _, id)| all[id].cancelled.get())
                    {
                        expected_removed.push(model.entries.remove(0).2);
                        expected_count = expected_count.saturating_sub(1);
                    }
                }
                let mut removed = Vec::new();
                heap.purge_cancelled(&mut cancelled_count, &mut removed);
                let mut got: Vec<usize> = removed.iter().map(|e| e.id).collect();
                if many {
                    got.sort_unstable();
                    expected_removed.sort_unstable();
                }
                prop_assert_eq!(got, expected_removed);
                prop_assert_eq!(cancelled_count, expected_count);
                prop_assert!(removed.iter().all(|e| !e.scheduled.get()));
            }
            Op::PopDue(end_time) => {
                let mut expected = Vec::new();
                // asyncio: `if handle._when >= end_time: break` (false for NaN), so
                // an entry is due unless `k >= end_time`.
                let due = |k: f64| k.partial_cmp(&end_time).is_none_or(Ordering::is_lt);
                while model.entries.first().is_some_and(|&(k, _, _)| due(k)) {
                    expected.push(model.entries.remove(0).2);
                }
                let got: Vec<usize> = std::iter::from_fn(|| heap.pop_due(end_time))
                    .map(|e| e.id)
                    .collect();
                prop_assert_eq!(&got, &expected);
                prop_assert!(got.iter().all(|&id| !all[id].scheduled.get()));
            }
        }
        prop_assert_eq!(heap.len(), model.entries.len());
        prop_assert_eq!(
            heap.peek_when().map(f64::to_bits),
            model.entries.first().map(|e| e.0.to_bits())
        );
        prop_assert!(heap.peek_when().is_none_or(|w| !w.is_nan()));
    }
    // Everything left drains in model order.
    let got: Vec<usize> = std::iter::from_fn(|| heap.pop_due(f64::NAN))
        .map(|e| e.id)
        .collect();
    let expected: Vec<usize> = model.entries.iter().map(|e| e.2).collect();
    prop_assert_eq!(got, expected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn heap_matches_sorted_vec_model(ops in prop::collection::vec(op(), 0..400)) {
        run(&ops)?;
    }

    #[test]
    fn heap_purges_when_most_are_cancelled(
        whens in prop::collection::vec(deadline(), 101..300),
        cancel in prop::collection::vec(any::<bool>(), 300),
        end_time in deadline(),
    ) {
        let mut ops: Vec<Op> = whens.iter().copied().map(Op::Push).collect();
        ops.extend((0..whens.len()).filter(|&i| cancel[i]).map(Op::Cancel));
        ops.push(Op::Purge);
        ops.push(Op::PopDue(end_time));
        ops.push(Op::Purge);
        run(&ops)?;
    }

    #[test]
    fn poll_timeout_matches_model(secs in any::<f64>(), max_secs in 0u64..200_000) {
        let max = Duration::from_secs(max_secs);
        let got = poll_timeout(secs, max);
        prop_assert!(got <= max);
        // Python: min(max(0, secs), max); max(0, nan) is 0.
        let clamped = if secs.is_nan() || secs <= 0.0 { 0.0 } else { secs.min(max.as_secs_f64()) };
        let diff = (got.as_secs_f64() - clamped).abs();
        prop_assert!(diff <= 1e-9 * clamped.max(1.0), "{secs} -> {got:?}");
    }

    #[test]
    fn poll_timeout_special_values(secs in deadline()) {
        let max = Duration::from_secs(86_400);
        let got = poll_timeout(secs, max);
        prop_assert!(got <= max);
        if secs.is_nan() || secs <= 0.0 {
            prop_assert_eq!(got, Duration::ZERO);
        }
    }
}
