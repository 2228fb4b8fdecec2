//! init's modules as a library: the binary (`main.rs`, PID 1) and the fuzz targets
//! (`fuzz/`: the cloud-init, network-config, OVF environment and DHCP parsers) use them.

pub mod cloudinit;
pub mod data;
pub mod firstboot;
pub mod identity;
pub mod input;
pub mod isolate;
pub mod log;
pub mod mounts;
pub mod net;
pub mod ovfenv;
pub mod rootswitch;
pub mod services;
pub mod settings;
pub mod sources;
pub mod sys;
pub mod trace;
pub mod watchdog;
