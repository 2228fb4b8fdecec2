//! The content-addressed download cache. (Filled in by issue 2.)
