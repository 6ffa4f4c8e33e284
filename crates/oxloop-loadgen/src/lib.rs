//! The parts that `oxloop-loadgen` and `oxloop-floor` share.

pub mod tls;
