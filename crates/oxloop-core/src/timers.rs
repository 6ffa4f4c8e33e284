//! The timer heap: `call_at`/`call_later` handles ordered by `(when, insertion)`.
//!
//! Mirrors the timer half of `BaseEventLoop._run_once` in
//! `Lib/asyncio/base_events.py`: cancellation is lazy (a cancelled entry stays in
//! the heap until it reaches the head), and when more than
//! [`MIN_SCHEDULED_TIMER_HANDLES`] entries are scheduled and more than
//! [`MIN_CANCELLED_TIMER_HANDLES_FRACTION`] of them are cancelled, the heap is
//! compacted in one pass. So `call_later` + `cancel` is O(log n) and a million
//! cancelled timers do not stay in memory.
//!
//! Unlike `heapq`, equal deadlines fire in insertion order (a sequence number
//! breaks ties).
//!
//! Deadlines are any `f64`. A NaN deadline is due at once, as asyncio fires a NaN
//! timer found at the head of its heap (`nan >= end_time` is false); it sorts as
//! `-inf` so that it cannot hide other timers or be hidden by them (in `heapq` a
//! NaN compares false both ways and leaves the heap's order undefined). `-0.0`
//! sorts as `0.0`, as Python compares them.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// CPython: `base_events._MIN_SCHEDULED_TIMER_HANDLES`.
pub const MIN_SCHEDULED_TIMER_HANDLES: usize = 100;
/// CPython: `base_events._MIN_CANCELLED_TIMER_HANDLES_FRACTION`.
pub const MIN_CANCELLED_TIMER_HANDLES_FRACTION: f64 = 0.5;

/// What the heap needs to know about its entries.
pub trait TimerEntry {
    /// True once the user cancelled the timer.
    fn is_cancelled(&self) -> bool;
    /// Called when the entry leaves the heap (fired, purged or cleared).
    fn unscheduled(&self);
}

struct Slot<T> {
    when: f64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Slot<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Slot<T> {}
impl<T> PartialOrd for Slot<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Slot<T> {
    // Reversed: BinaryHeap is a max-heap and the earliest deadline must be on top.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .when
            .total_cmp(&self.when)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// The heap key of a deadline: NaN first (due at once), `-0.0` equal to `0.0`,
/// so that `total_cmp` orders keys as Python's `<` orders the deadlines.
#[must_use]
pub fn sort_key(when: f64) -> f64 {
    if when.is_nan() {
        f64::NEG_INFINITY
    } else {
        // Adding +0.0 turns -0.0 into +0.0 and leaves every other value alone.
        when + 0.0
    }
}

/// A min-heap of timers with lazy cancellation.
pub struct TimerHeap<T> {
    heap: BinaryHeap<Slot<T>>,
    next_seq: u64,
}

impl<T> Default for TimerHeap<T> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_seq: 0,
        }
    }
}

impl<T: TimerEntry> TimerHeap<T> {
    /// An empty heap.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries, cancelled ones included (asyncio's `len(_scheduled)`).
    #[must_use]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when no timer is scheduled.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Schedules `item` at `when` (any `f64`: see [`sort_key`]).
    pub fn push(&mut self, when: f64, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Slot {
            when: sort_key(when),
            seq,
            item,
        });
    }

    /// The earliest deadline as a heap key ([`sort_key`]: never NaN), cancelled
    /// entries included.
    #[must_use]
    pub fn peek_when(&self) -> Option<f64> {
        self.heap.peek().map(|s| s.when)
    }

    /// Drops cancelled entries as `_run_once` does: all of them when they are
    /// numerous (`cancelled_count` is the loop's `_timer_cancelled_count`, updated
    /// in place), otherwise only those at the head. Removed items are pushed to
    /// `removed` so that the caller can drop them at a safe moment (dropping a
    /// Python object can run arbitrary code).
    pub fn purge_cancelled(&mut self, cancelled_count: &mut usize, removed: &mut Vec<T>) {
        let scheduled = self.heap.len();
        #[allow(clippy::cast_precision_loss)]
        let many = scheduled > MIN_SCHEDULED_TIMER_HANDLES
            && (*cancelled_count as f64) / (scheduled as f64)
                > MIN_CANCELLED_TIMER_HANDLES_FRACTION;
        if many {
            let old = std::mem::take(&mut self.heap).into_vec();
            let mut kept = Vec::with_capacity(old.len() - (*cancelled_count).min(old.len()));
            for slot in old {
                if slot.item.is_cancelled() {
                    slot.item.unscheduled();
                    removed.push(slot.item);
                } else {
                    kept.push(slot);
                }
            }
            self.heap = BinaryHeap::from(kept);
            *cancelled_count = 0;
        } else {
            while self.heap.peek().is_some_and(|s| s.item.is_cancelled()) {
                if let Some(slot) = self.heap.pop() {
                    *cancelled_count = cancelled_count.saturating_sub(1);
                    slot.item.unscheduled();
                    removed.push(slot.item);
                }
            }
        }
    }

    /// Pops the earliest entry if its deadline is before `end_time`, as asyncio
    /// tests `handle._when >= end_time`: a NaN `end_time` makes every entry due.
    pub fn pop_due(&mut self, end_time: f64) -> Option<T> {
        if self.heap.peek()?.when >= end_time {
            return None;
        }
        let slot = self.heap.pop()?;
        slot.item.unscheduled();
        Some(slot.item)
    }

    /// Removes every entry (loop close), handing them to `removed`.
    pub fn clear_into(&mut self, removed: &mut Vec<T>) {
        for slot in std::mem::take(&mut self.heap).into_vec() {
            slot.item.unscheduled();
            removed.push(slot.item);
        }
    }

    /// Visits every entry (for the garbage collector's traversal).
    pub fn for_each(&self, mut f: impl FnMut(&T)) {
        for slot in &self.heap {
            f(&slot.item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[derive(Clone)]
    struct T {
        id: u32,
        cancelled: Rc<Cell<bool>>,
        scheduled: Rc<Cell<bool>>,
    }

    impl T {
        fn new(id: u32) -> Self {
            Self {
                id,
                cancelled: Rc::new(Cell::new(false)),
                scheduled: Rc::new(Cell::new(true)),
            }
        }
    }

    impl TimerEntry for T {
        fn is_cancelled(&self) -> bool {
            self.cancelled.get()
        }
        fn unscheduled(&self) {
            self.scheduled.set(false);
        }
    }

    fn drain(h: &mut TimerHeap<T>, end: f64) -> Vec<u32> {
        std::iter::from_fn(|| h.pop_due(end))
            .map(|t| t.id)
            .collect()
    }

    #[test]
    fn orders_by_deadline_then_insertion() {
        let mut h = TimerHeap::new();
        h.push(2.0, T::new(1));
        h.push(1.0, T::new(2));
        h.push(2.0, T::new(3));
        h.push(1.0, T::new(4));
        h.push(0.5, T::new(5));
        assert_eq!(drain(&mut h, 10.0), vec![5, 2, 4, 1, 3]);
    }

    #[test]
    fn equal_deadlines_keep_fifo_order_at_scale() {
        let mut h = TimerHeap::new();
        for i in 0..1000 {
            h.push(1.0, T::new(i));
        }
        assert_eq!(drain(&mut h, 2.0), (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn pop_due_respects_end_time_strictly() {
        let mut h = TimerHeap::new();
        h.push(1.0, T::new(1));
        h.push(2.0, T::new(2));
        assert_eq!(drain(&mut h, 1.0), Vec::<u32>::new());
        assert_eq!(drain(&mut h, 1.5), vec![1]);
        assert_eq!(h.peek_when(), Some(2.0));
    }

    #[test]
    fn purge_removes_only_cancelled_head_when_few() {
        let mut h = TimerHeap::new();
        let a = T::new(1);
        let b = T::new(2);
        let c = T::new(3);
        h.push(1.0, a.clone());
        h.push(2.0, b.clone());
        h.push(3.0, c.clone());
        a.cancelled.set(true);
        c.cancelled.set(true);
        let mut count = 2;
        let mut removed = Vec::new();
        h.purge_cancelled(&mut count, &mut removed);
        assert_eq!(removed.iter().map(|t| t.id).collect::<Vec<_>>(), vec![1]);
        assert!(!a.scheduled.get());
        assert!(c.scheduled.get());
        assert_eq!(count, 1);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn purge_compacts_when_most_are_cancelled() {
        let mut h = TimerHeap::new();
        let mut all = Vec::new();
        for i in 0..1000 {
            let t = T::new(i);
            h.push(f64::from(i), t.clone());
            all.push(t);
        }
        // Cancel all but the first (so the head-only purge would remove nothing).
        for t in &all[1..] {
            t.cancelled.set(true);
        }
        let mut count = 999;
        let mut removed = Vec::new();
        h.purge_cancelled(&mut count, &mut removed);
        assert_eq!(h.len(), 1);
        assert_eq!(count, 0);
        assert_eq!(removed.len(), 999);
        assert!(all[1..].iter().all(|t| !t.scheduled.get()));
    }

    #[test]
    fn a_million_cancelled_timers_are_released() {
        let mut h = TimerHeap::new();
        let mut count = 0;
        let mut removed = Vec::new();
        for i in 0..1_000_000u32 {
            let t = T::new(i);
            h.push(1e9 + f64::from(i), t.clone());
            t.cancelled.set(true);
            count += 1;
            if i % 1000 == 0 {
                h.purge_cancelled(&mut count, &mut removed);
                removed.clear();
            }
        }
        h.purge_cancelled(&mut count, &mut removed);
        assert!(
            h.len() <= 2 * MIN_SCHEDULED_TIMER_HANDLES + 1000,
            "{}",
            h.len()
        );
    }
}
