//! The shim's settings: a TOML file, `$AXION_SHIM_CONFIG` or [`DEFAULT_PATH`]. containerd
//! starts the shim with its own environment, so the variable can be set on containerd.
//!
//! ```toml
//! # Where the template lives: axion-vmd's --state-dir, so the two share one template.
//! state_dir = "/var/lib/axion-vmd"
//! # The qemu profile's image (`cargo xtask image --profile qemu`, out/qemu/).
//! kernel = "/usr/share/axion/vmlinuz"
//! initrd = "/usr/share/axion/initramfs.cpio.zst"
//! disk = "/usr/share/axion/axion.qcow2"   # optional: without it /var/lib is a tmpfs
//! memory_mib = 512                         # the template's RAM (every clone's)
//! cpus = 2                                 # default: the host's cores, at most 4
//! accel = "tcg"                            # or "kvm"
//! ```

use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const ENV: &str = "AXION_SHIM_CONFIG";
pub const DEFAULT_PATH: &str = "/etc/axion/containerd-shim.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub state_dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    #[serde(default)]
    pub disk: Option<PathBuf>,
    #[serde(default = "memory_default")]
    pub memory_mib: u64,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default = "accel_default")]
    pub accel: String,
}

fn memory_default() -> u64 {
    512
}

fn accel_default() -> String {
    "tcg".into()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the shim's settings {path} (set {ENV} to another file): {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("{path}: accel = {0:?}: use \"tcg\" or \"kvm\"", path = .1)]
    Accel(String, String),
}

impl Config {
    /// The settings file `$AXION_SHIM_CONFIG` names, else [`DEFAULT_PATH`].
    pub fn load() -> Result<Config, ConfigError> {
        let p = std::env::var_os(ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| DEFAULT_PATH.into());
        Self::read(&p)
    }

    pub fn read(p: &Path) -> Result<Config, ConfigError> {
        let path = p.display().to_string();
        let t = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&t, &path)
    }

    pub fn parse(t: &str, path: &str) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(t).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        c.accel_kind()
            .map_err(|_| ConfigError::Accel(c.accel.clone(), path.into()))?;
        Ok(c)
    }

    pub fn accel_kind(&self) -> Result<qemu::Accel, ()> {
        match self.accel.as_str() {
            "tcg" => Ok(qemu::Accel::Tcg),
            "kvm" => Ok(qemu::Accel::Kvm),
            _ => Err(()),
        }
    }

    pub fn cpus(&self) -> u32 {
        self.cpus.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get().min(4) as u32)
                .unwrap_or(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_and_wrong_settings() {
        let c = Config::parse(
            "state_dir = \"/s\"\nkernel = \"/k\"\ninitrd = \"/i\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.memory_mib, 512);
        assert_eq!(c.accel, "tcg");
        assert!(c.disk.is_none());
        let e = Config::parse("state_dir = \"/s\"\nkernel = \"/k\"\n", "t.toml").unwrap_err();
        assert!(e.to_string().contains("initrd"), "{e}");
        let e = Config::parse(
            "state_dir = \"/s\"\nkernel = \"/k\"\ninitrd = \"/i\"\naccel = \"hvf\"\n",
            "t.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("use \"tcg\" or \"kvm\""), "{e}");
        let e = Config::parse("statedir = 1", "t.toml").unwrap_err();
        assert!(e.to_string().contains("statedir"), "{e}");
    }
}
