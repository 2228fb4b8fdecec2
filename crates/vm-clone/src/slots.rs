//! The template's volume slots: spare 9p devices every VM of one template has, so a clone can
//! point each at a volume or host directory of its own (a fsdev's path is not part of the
//! migrated state, only the device is). axion-vmd's volumes module gives them their meaning.

use std::path::PathBuf;

/// How many volume slots the template has.
pub const SLOTS: usize = 4;

/// The 9p mount tag of slot `i`.
pub fn slot_tag(i: usize) -> String {
    format!("axion.vol{i}")
}

/// What a clone's slot exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub path: PathBuf,
    pub readonly: bool,
}
