//! axion's build tool as a library: recipe → source → package build → root filesystem →
//! image formats → publish. Each module takes the previous one's output and knows nothing of
//! the next one. `main.rs` is only the command line on top.

pub mod bench;
pub mod build;
pub mod cache;
pub mod compat;
pub mod doctor;
pub mod fetch;
pub mod fuzz;
pub mod image;
pub mod layout;
pub mod profile;
pub mod publish;
pub mod recipe;
pub mod remote_cache;
pub mod rootfs;
pub mod run;
pub mod sbom;
pub mod test;
pub mod ui;
pub mod verify;
pub mod vmd;
