//! Driving QEMU for `xtask run/test/bench` and the host daemon. (Filled in by issue 5.)
