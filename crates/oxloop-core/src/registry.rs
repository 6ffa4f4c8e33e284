//! The fd registry: who watches which fd, keyed by fd with a generation token.
//!
//! The poller reports `token = generation << 32 | fd`. When an fd is unregistered
//! and its number reused, the generation changes, so an event that was already
//! queued for the old owner is rejected instead of reaching the new one (the
//! "wrong data to the wrong client" class of bugs seen with fd-keyed loops).

use std::os::fd::RawFd;

struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

/// A dense table indexed by fd.
pub struct Registry<T> {
    slots: Vec<Slot<T>>,
    live: usize,
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            live: 0,
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

    fn index(fd: RawFd) -> Option<usize> {
        usize::try_from(fd).ok()
    }

    /// The entry for `fd`, if any.
    #[must_use]
    pub fn get(&self, fd: RawFd) -> Option<&T> {
        self.slots.get(Self::index(fd)?)?.value.as_ref()
    }

    /// The entry for `fd`, mutably.
    pub fn get_mut(&mut self, fd: RawFd) -> Option<&mut T> {
        self.slots.get_mut(Self::index(fd)?)?.value.as_mut()
    }

    /// The entry an event token refers to, unless the token is stale.
    pub fn by_token(&mut self, token: u64) -> Option<(RawFd, &mut T)> {
        let (fd, generation) = split_token(token);
        let slot = self.slots.get_mut(Self::index(fd)?)?;
        if slot.generation != generation {
            return None;
        }
        slot.value.as_mut().map(|v| (fd, v))
    }

    /// The token to register `fd` with for its current entry.
    #[must_use]
    pub fn token(&self, fd: RawFd) -> Option<u64> {
        let slot = self.slots.get(Self::index(fd)?)?;
        slot.value.as_ref()?;
        #[allow(clippy::cast_sign_loss)]
        Some((u64::from(slot.generation) << 32) | u64::from(fd as u32))
    }

    /// Inserts an entry for a free `fd` and returns its token; hands back the value
    /// when the fd is negative or already taken.
    ///
    /// # Errors
    /// Returns `value` when `fd` is negative or occupied.
    pub fn insert(&mut self, fd: RawFd, value: T) -> Result<u64, T> {
        let Some(index) = Self::index(fd) else {
            return Err(value);
        };
        if index >= self.slots.len() {
            self.slots.resize_with(index + 1, || Slot {
                generation: 0,
                value: None,
            });
        }
        let slot = &mut self.slots[index];
        if slot.value.is_some() {
            return Err(value);
        }
        slot.generation = slot.generation.wrapping_add(1);
        slot.value = Some(value);
        self.live += 1;
        #[allow(clippy::cast_sign_loss)]
        Ok((u64::from(slot.generation) << 32) | u64::from(fd as u32))
    }

    /// Removes and returns the entry for `fd`.
    pub fn remove(&mut self, fd: RawFd) -> Option<T> {
        let slot = self.slots.get_mut(Self::index(fd)?)?;
        let value = slot.value.take()?;
        self.live -= 1;
        Some(value)
    }

    /// Removes every entry.
    pub fn drain(&mut self) -> Vec<(RawFd, T)> {
        let mut out = Vec::with_capacity(self.live);
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let Some(v) = slot.value.take() {
                out.push((RawFd::try_from(i).unwrap_or(RawFd::MAX), v));
            }
        }
        self.live = 0;
        out
    }

    /// Visits every entry.
    pub fn for_each(&self, mut f: impl FnMut(RawFd, &T)) {
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(v) = &slot.value {
                f(RawFd::try_from(i).unwrap_or(RawFd::MAX), v);
            }
        }
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
        r.insert(3, 1).unwrap();
        assert_eq!(r.insert(3, 2), Err(2));
        assert_eq!(r.insert(-1, 3), Err(3));
        assert_eq!(r.len(), 1);
        assert_eq!(r.token(3), Some((1 << 32) | 3));
    }

    #[test]
    fn drain_empties_everything() {
        let mut r = Registry::new();
        r.insert(1, 'a').unwrap();
        r.insert(7, 'b').unwrap();
        assert_eq!(r.drain(), vec![(1, 'a'), (7, 'b')]);
        assert!(r.is_empty());
        assert!(r.get(1).is_none());
    }
}
