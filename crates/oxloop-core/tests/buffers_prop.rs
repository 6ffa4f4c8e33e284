//! Property tests of `buffers`: the slow-spot rule against its definition, and
//! `PageBuf` against a `Vec<u8>` model under random writes.

use oxloop_core::buffers::{is_slow_copy_start, PageBuf, PAGE_SIZE, SLOW_EDGE};
use proptest::prelude::*;

proptest! {
    #[test]
    fn slow_spots_are_exactly_the_page_edges(addr in any::<usize>()) {
        let offset = addr % PAGE_SIZE;
        // Spelled differently from the implementation on purpose: the model.
        #[allow(clippy::manual_range_contains)]
        let near_edge = offset != 0 && (offset < SLOW_EDGE || offset > PAGE_SIZE - SLOW_EDGE);
        prop_assert_eq!(is_slow_copy_start(addr), near_edge);
        // A page boundary is never slow, whatever the page.
        prop_assert!(!is_slow_copy_start(addr - offset));
    }

    #[test]
    fn page_buf_behaves_as_a_vec(
        len in 0usize..(3 * PAGE_SIZE + 7),
        writes in prop::collection::vec((any::<usize>(), any::<u8>()), 0..64),
    ) {
        let mut buf = PageBuf::new(len);
        let mut model = vec![0u8; len];
        prop_assert_eq!(buf.len(), len);
        prop_assert_eq!(buf.as_ptr() as usize % PAGE_SIZE, 0);
        prop_assert!(!is_slow_copy_start(buf.as_ptr() as usize));
        for (at, byte) in writes {
            if len == 0 {
                break;
            }
            buf[at % len] = byte;
            model[at % len] = byte;
        }
        prop_assert_eq!(&buf[..], &model[..]);
    }
}
