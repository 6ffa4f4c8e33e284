//! Where a read buffer may start.
//!
//! The kernel copies socket data into (and out of) a user buffer that starts a few
//! bytes past a page boundary, or a few bytes before one, 2-4x more slowly than into
//! one that starts on the boundary or further inside the page: a loopback echo of
//! 100 KiB messages measured 62 µs of kernel time per request against 26 µs
//! (`oxloop-floor` with its buffer at each offset: 4-31 and 4088 slow; 0, 32-4064
//! not; 16 KiB messages 1.7x; 1 KiB 5 %). A fresh `bytes` lands wherever the
//! allocator puts it, and in a steady state the allocator keeps handing out the same
//! address, so a process that starts in a slow spot would stay there.

/// The page size the offsets are taken against.
pub const PAGE_SIZE: usize = 4096;

/// How close to a page boundary counts as slow (measured: 31 bytes slow, 32 not).
pub const SLOW_EDGE: usize = 32;

/// Whether a buffer starting at `addr` is in a slow spot: within [`SLOW_EDGE`] bytes
/// of a page boundary, but not on it.
pub fn is_slow_copy_start(addr: usize) -> bool {
    let offset = addr % PAGE_SIZE;
    offset != 0 && !(SLOW_EDGE..=PAGE_SIZE - SLOW_EDGE).contains(&offset)
}

/// A zeroed byte buffer that starts on a page boundary (a `Vec<u8>` starts wherever
/// the allocator puts it, and one of 128 KiB or more is an `mmap` whose data starts
/// 16 bytes into a page: a slow spot). Dereferences to its `len` bytes.
pub struct PageBuf {
    pages: Box<[Page]>,
    len: usize,
}

#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Page([u8; PAGE_SIZE]);

impl PageBuf {
    /// A buffer of `len` zero bytes.
    pub fn new(len: usize) -> Self {
        Self {
            pages: vec![Page([0; PAGE_SIZE]); len.div_ceil(PAGE_SIZE)].into_boxed_slice(),
            len,
        }
    }
}

impl std::ops::Deref for PageBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `Page` is a plain byte array with no padding, so the pages are at
        // least `len` contiguous, initialised bytes, borrowed through `self`.
        unsafe { std::slice::from_raw_parts(self.pages.as_ptr().cast::<u8>(), self.len) }
    }
}

impl std::ops::DerefMut for PageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.pages.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_aligned_and_inner_starts_are_fast() {
        for offset in [0, 32, 48, 272, 2048, 2880, 4064] {
            assert!(!is_slow_copy_start(7 * PAGE_SIZE + offset), "{offset}");
        }
    }

    #[test]
    fn starts_just_past_or_before_a_boundary_are_slow() {
        for offset in [4, 8, 16, 31, 4088, 4095] {
            assert!(is_slow_copy_start(3 * PAGE_SIZE + offset), "{offset}");
        }
    }

    #[test]
    fn page_buf_is_page_aligned_zeroed_and_exactly_len() {
        let mut buf = PageBuf::new(PAGE_SIZE + 1);
        assert_eq!(buf.len(), PAGE_SIZE + 1);
        assert_eq!(buf.as_ptr() as usize % PAGE_SIZE, 0);
        assert!(buf.iter().all(|&b| b == 0));
        buf[PAGE_SIZE] = 7;
        assert_eq!(buf[PAGE_SIZE], 7);
        assert!(PageBuf::new(0).is_empty());
    }
}
