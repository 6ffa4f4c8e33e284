//! Native transports, one file per transport kind (uvloop's `handles/` layout).
//!
//! They plug into the loop through the same fd registry as `add_reader`: a
//! transport's `_read_ready`/`_write_ready` are its reader and writer callbacks, so
//! ordering, `_ensure_fd_no_transport` and the `_selector` view behave exactly as
//! for asyncio's selector transports.

pub mod stream;
