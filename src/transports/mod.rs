//! Native transports, one file per transport kind (uvloop's `handles/` layout),
//! over one shared base (`base.rs`, asyncio's `_SelectorTransport`).
//!
//! They plug into the loop through the same fd registry as `add_reader`: a
//! transport's reader and writer callbacks are its bound methods, so ordering,
//! `_ensure_fd_no_transport` and the `_selector` view behave exactly as for
//! asyncio's selector transports.

pub mod base;
pub mod datagram;
pub mod stream;
