//! The fd registry: who watches which fd, keyed by fd with a generation token.
//!
//! The poller reports `token = generation << 32 | fd`. Every insertion takes a new
//! generation from one counter, so when an fd is unregistered and its number
//! reused, an event that was already queued for the old owner is rejected instead
//! of reaching the new one (the "wrong data to the wrong client" class of bugs seen
//! with fd-keyed loops).
//!
//! Memory follows the number of watched fds, not the largest fd number: fds below
//! [`DENSE_LIMIT`] live in a table indexed by fd (one array access per event, the
//! common case), larger ones in a hash map. The table grows only to the largest
//! small fd seen, so it never exceeds `DENSE_LIMIT` slots whatever the caller
//! passes; a huge fd costs one map entry.

use std::collections::HashMap;
use std::os::fd::RawFd;

/// fds below this are kept in the dense table (at most this many slots).
pub const DENSE_LIMIT: usize = 1 << 16;

struct Entry<T> {
    generation: u32,
    value: T,
}

/// fd → entry, dense for small fds and sparse above [`DENSE_LIMIT`].
pub struct Registry<T> {
    dense: Vec<Option<Entry<T>>>,
    sparse: HashMap<RawFd, Entry<T>>,
    live: usize,
    /// The generation of the last insertion (0 is never used, so no token is 0).
    generation: u32,
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Self {
            dense: Vec::new(),
            sparse: HashMap::new(),
            live: 0,
            generation: 0,
        }
    }
}

/// Splits a token into `(fd, generation)`.
#[must_use]
pub fn split_token(token: u64) -> (RawFd, u32) {
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    let fd = (token & 0xffff_ffff) as u32 as RawFd;
    #[allow(clippy::cast_possible_truncation)]
    let generation = (token >> 32) as u32;
    (fd, generation)
}

fn make_token(fd: RawFd, generation: u32) -> u64 {
    #[allow(clippy::cast_sign_loss)]
    let low = u64::from(fd as u32);
    (u64::from(generation) << 32) | low
}

impl<T> Registry<T> {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of registered fds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when nothing is registered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The dense index of `fd`, or `None` when it belongs in the sparse map.
    fn dense_index(fd: RawFd) -> Option<usize> {
        usize::try_from(fd).ok().filter(|&i| i < DENSE_LIMIT)
    }

    fn entry(&self, fd: RawFd) -> Option<&Entry<T>> {
        if fd < 0 {
            return None;
        }
        match Self::dense_index(fd) {
            Some(i) => self.dense.get(i)?.as_ref(),
            None => self.sparse.get(&fd),
        }
    }

    fn entry_mut(&mut self, fd: RawFd) -> Option<&mut Entry<T>> {
        // The per-event path: one bounds check for the dense table (never longer
        // than DENSE_LIMIT), the map only for large fds when it holds any.
        let i = usize::try_from(fd).ok()?;
        if let Some(slot) = self.dense.get_mut(i) {
            return slot.as_mut();
        }
        if i < DENSE_LIMIT || self.sparse.is_empty() {
            return None;
        }
        self.sparse.get_mut(&fd)
    }

    /// The entry for `fd`, if any.
    #[must_use]
    pub fn get(&self, fd: RawFd) -> Option<&T> {
        self.entry(fd).map(|e| &e.value)
    }

    /// The entry for `fd`, mutably.
    pub fn get_mut(&mut self, fd: RawFd) -> Option<&mut T> {
        self.entry_mut(fd).map(|e| &mut e.value)
    }

    /// The entry an event token refers to, unless the token is stale.
    pub fn by_token(&mut self, token: u64) -> Option<(RawFd, &mut T)> {
        let (fd, generation) = split_token(token);
        let entry = self.entry_mut(fd)?;
        if entry.generation != generation {
            return None;
        }
        Some((fd, &mut entry.value))
    }

    /// The token to register `fd` with for its current entry.
    #[must_use]
    pub fn token(&self, fd: RawFd) -> Option<u64> {
        self.entry(fd).map(|e| make_token(fd, e.generation))
    }

    fn next_generation(&self) -> u32 {
        match self.generation.wrapping_add(1) {
            0 => 1,
            g => g,
        }
    }

    /// The token [`Registry::insert`] would return for `fd` now, so the kernel can
    /// be asked to watch `fd` before anything is stored; `None` when `fd` is
    /// negative or taken.
    #[must_use]
    pub fn vacant_token(&self, fd: RawFd) -> Option<u64> {
        if fd < 0 || self.entry(fd).is_some() {
            return None;
        }
        Some(make_token(fd, self.next_generation()))
    }

    /// Inserts an entry for a free `fd` and returns its token (the one
    /// [`Registry::vacant_token`] announced).
    ///
    /// # Errors
    /// Returns `value` when `fd` is negative or occupied.
    pub fn insert(&mut self, fd: RawFd, value: T) -> Result<u64, T> {
        if fd < 0 || self.entry(fd).is_some() {
            return Err(value);
        }
        let generation = self.next_generation();
        let entry = Entry { generation, value };
        match Self::dense_index(fd) {
            Some(i) => {
                if i >= self.dense.len() {
                    // Grow geometrically, but never past the dense limit.
                    let want = (i + 1).max(self.dense.len() * 2).min(DENSE_LIMIT);
                    self.dense.reserve_exact(want - self.dense.len());
                    self.dense.resize_with(i + 1, || None);
                }
                self.dense[i] = Some(entry);
            }
            None => {
                self.sparse.insert(fd, entry);
            }
        }
        self.generation = generation;
        self.live += 1;
        Ok(make_token(fd, generation))
    }

    /// Removes and returns the entry for `fd`.
    pub fn remove(&mut self, fd: RawFd) -> Option<T> {
        if fd < 0 {
            return None;
        }
        let entry = match Self::dense_index(fd) {
            Some(i) => self.dense.get_mut(i)?.take()?,
            None => {
                let entry = self.sparse.remove(&fd)?;
                if self.sparse.is_empty() {
                    // Give the memory of a burst of huge fds back.
                    self.sparse = HashMap::new();
                }
                entry
            }
        };
        self.live -= 1;
        Some(entry.value)
    }

    /// Removes every entry.
    pub fn drain(&mut self) -> Vec<(RawFd, T)> {
        let mut out = Vec::with_capacity(self.live);
        for (i, slot) in std::mem::take(&mut self.dense).into_iter().enumerate() {
            if let Some(entry) = slot {
                out.push((RawFd::try_from(i).unwrap_or(RawFd::MAX), entry.value));
            }
        }
        let mut sparse: Vec<_> = std::mem::take(&mut self.sparse).into_iter().collect();
        sparse.sort_unstable_by_key(|(fd, _)| *fd);
        out.extend(sparse.into_iter().map(|(fd, e)| (fd, e.value)));
        self.live = 0;
        out
    }

    /// Visits every entry (small fds in order, then the large ones in any order).
    pub fn for_each(&self, mut f: impl FnMut(RawFd, &T)) {
        for (i, slot) in self.dense.iter().enumerate() {
            if let Some(entry) = slot {
                f(RawFd::try_from(i).unwrap_or(RawFd::MAX), &entry.value);
            }
        }
        for (fd, entry) in &self.sparse {
            f(*fd, &entry.value);
        }
    }

    /// The first fd whose entry satisfies `pred` (a linear search, for the rare
    /// lookups by something else than the fd).
    pub fn find(&self, mut pred: impl FnMut(&T) -> bool) -> Option<RawFd> {
        let mut found = None;
        self.for_each(|fd, v| {
            if found.is_none() && pred(v) {
                found = Some(fd);
            }
        });
        found
    }

    /// Slots the dense table holds (memory introspection for tests).
    #[must_use]
    pub fn dense_capacity(&self) -> usize {
        self.dense.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_tokens_are_rejected_after_reuse() {
        let mut r = Registry::new();
        let old = r.insert(5, "old").unwrap();
        assert_eq!(r.remove(5), Some("old"));
        let new = r.insert(5, "new").unwrap();
        assert_ne!(old, new);
        assert!(r.by_token(old).is_none());
        assert_eq!(r.by_token(new).map(|(fd, v)| (fd, *v)), Some((5, "new")));
    }

    #[test]
    fn insert_refuses_taken_and_negative_fds() {
        let mut r = Registry::new();
        assert_eq!(r.vacant_token(3), Some((1 << 32) | 3));
        r.insert(3, 1).unwrap();
        assert_eq!(r.vacant_token(3), None);
        assert_eq!(r.insert(3, 2), Err(2));
        assert_eq!(r.insert(-1, 3), Err(3));
        assert_eq!(r.vacant_token(-1), None);
        assert_eq!(r.len(), 1);
        assert_eq!(r.token(3), Some((1 << 32) | 3));
    }

    #[test]
    fn drain_empties_everything() {
        let mut r = Registry::new();
        r.insert(1, 'a').unwrap();
        r.insert(i32::MAX, 'c').unwrap();
        r.insert(7, 'b').unwrap();
        assert_eq!(r.drain(), vec![(1, 'a'), (7, 'b'), (i32::MAX, 'c')]);
        assert!(r.is_empty());
        assert!(r.get(1).is_none());
        assert!(r.get(i32::MAX).is_none());
    }

    #[test]
    fn huge_fds_cost_no_table() {
        let mut r = Registry::new();
        let t = r.insert(i32::MAX, ()).unwrap();
        r.insert(3_000_000, ()).unwrap();
        assert_eq!(r.dense_capacity(), 0);
        assert_eq!(r.by_token(t).map(|(fd, ())| fd), Some(i32::MAX));
        r.insert(10, ()).unwrap();
        assert!(r.dense_capacity() <= 32);
        r.insert(RawFd::try_from(DENSE_LIMIT - 1).unwrap(), ())
            .unwrap();
        assert_eq!(r.dense_capacity(), DENSE_LIMIT);
    }

    #[test]
    fn generations_skip_zero_on_wrap() {
        let mut r = Registry::new();
        r.generation = u32::MAX;
        let t = r.insert(4, ()).unwrap();
        assert_eq!(split_token(t), (4, 1));
    }

    #[test]
    fn find_searches_both_tables() {
        let mut r = Registry::new();
        r.insert(2, 'a').unwrap();
        r.insert(1 << 20, 'b').unwrap();
        assert_eq!(r.find(|v| *v == 'b'), Some(1 << 20));
        assert_eq!(r.find(|v| *v == 'z'), None);
    }
}
