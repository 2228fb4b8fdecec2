//! Image profiles: one TOML file per kind of image in `image-profiles/`.
//!
//! ```toml
//! # image-profiles/qemu.toml
//! [profile]
//! name = "qemu"                          # must match the file name
//! description = "Container host for QEMU/KVM"
//! packages = ["linux", "busybox", "init", "engine"]   # recipes; dependencies are added
//! overlays = ["base"]                    # folders under overlays/, applied in order
//! cmdline = "console=ttyS0"              # kernel command line
//! formats = ["raw", "qcow2", "iso"]      # what `cargo xtask image` writes by default
//! data-size-mib = 1024                   # the persistent /var/lib partition
//!
//! [hardware]                             # optional: the virtual machine it is made for
//! cpus = 2
//! memory-mib = 1024
//! firmware = "efi"                       # efi | bios
//! nic = "vmxnet3"                        # virtio | vmxnet3 | e1000
//! disk-controller = "pvscsi"             # virtio | pvscsi | sata
//! vmware-hardware-version = 14           # vmx-NN in the OVF (14 = vSphere 6.7)
//!
//! [update]                               # optional: in-place updates (axion-update)
//! trusted-keys = ["keys/release.pub"]    # public keys (PEM, `cargo xtask keygen`) the image
//!                                        # accepts updates from; paths from the checkout root
//! ```
//!
//! `AXION_TRUSTED_KEYS=FILE[:FILE...]` in the environment of `image`/`publish` adds keys to
//! every profile's list (tests and one-off builds use it rather than editing a profile).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::recipe::{RecipeError, RecipeSet};

/// `cargo xtask list`: recipes and image profiles with their versions and licenses.
pub fn list(layout: &crate::layout::Layout) -> anyhow::Result<()> {
    let recipes = RecipeSet::load(&layout.recipes())?;
    println!("Recipes:");
    for r in recipes.recipes.values() {
        let m = &r.spec.package;
        let kind = match &r.spec.build {
            crate::recipe::Build::Kbuild(_) => "kbuild",
            crate::recipe::Build::Make(_) => "make",
            crate::recipe::Build::Cargo(_) => "cargo",
        };
        println!(
            "  {:12} {:16} {:7} {:28} {}",
            m.name, m.version, kind, m.license, m.summary
        );
    }
    println!("\nProfiles:");
    for (name, p) in load_all(&layout.root, &recipes)? {
        let formats: Vec<&str> = p.spec.profile.formats.iter().map(|f| f.name()).collect();
        println!(
            "  {:12} {:40} formats: {}",
            name,
            p.spec.profile.description,
            formats.join(", ")
        );
    }
    Ok(())
}

/// The image formats `cargo xtask image` can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The kernel and the compressed initramfs, for direct kernel boot.
    Initramfs,
    Raw,
    Qcow2,
    Vmdk,
    Ova,
    Iso,
}

impl Format {
    pub const ALL: [Format; 6] = [
        Format::Initramfs,
        Format::Raw,
        Format::Qcow2,
        Format::Vmdk,
        Format::Ova,
        Format::Iso,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::Initramfs => "initramfs",
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Ova => "ova",
            Format::Iso => "iso",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                format!("unknown format '{s}' (one of: initramfs, raw, qcow2, vmdk, ova, iso)")
            })
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    pub profile: ProfileMeta,
    #[serde(default)]
    pub hardware: Hardware,
    #[serde(default)]
    pub update: Update,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Update {
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProfileMeta {
    pub name: String,
    pub description: String,
    pub packages: Vec<String>,
    #[serde(default)]
    pub overlays: Vec<String>,
    #[serde(default)]
    pub cmdline: String,
    pub formats: Vec<Format>,
    #[serde(default = "default_data_size")]
    pub data_size_mib: u64,
}

fn default_data_size() -> u64 {
    1024
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Efi,
    Bios,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Nic {
    Virtio,
    Vmxnet3,
    E1000,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskController {
    Virtio,
    Pvscsi,
    Sata,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Hardware {
    pub cpus: u32,
    pub memory_mib: u64,
    pub firmware: Firmware,
    pub nic: Nic,
    pub disk_controller: DiskController,
    pub vmware_hardware_version: u32,
}

impl Default for Hardware {
    fn default() -> Self {
        Hardware {
            cpus: 2,
            memory_mib: 1024,
            firmware: Firmware::Efi,
            nic: Nic::Virtio,
            disk_controller: DiskController::Virtio,
            vmware_hardware_version: 14,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Profile {
    pub path: PathBuf,
    pub spec: ProfileFile,
}

impl Profile {
    pub fn name(&self) -> &str {
        &self.spec.profile.name
    }
}

fn invalid(path: &Path, key: impl Into<String>, message: impl Into<String>) -> RecipeError {
    RecipeError::Invalid {
        path: path.to_owned(),
        key: key.into(),
        message: message.into(),
    }
}

pub fn parse_profile(path: &Path, text: &str) -> Result<Profile, RecipeError> {
    let spec: ProfileFile = toml::from_str(text).map_err(|e| RecipeError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let p = Profile {
        path: path.to_owned(),
        spec,
    };
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if p.name() != stem {
        return Err(invalid(
            path,
            "profile.name",
            format!("'{}' must match the file name '{stem}.toml'", p.name()),
        ));
    }
    if p.spec.profile.packages.is_empty() {
        return Err(invalid(
            path,
            "profile.packages",
            "an image needs at least one package",
        ));
    }
    if p.spec.profile.formats.is_empty() {
        return Err(invalid(path, "profile.formats", "name at least one format"));
    }
    let hw = &p.spec.hardware;
    if hw.cpus == 0 || hw.cpus > 128 {
        return Err(invalid(
            path,
            "hardware.cpus",
            format!("{} is not between 1 and 128", hw.cpus),
        ));
    }
    if hw.memory_mib < 128 {
        return Err(invalid(
            path,
            "hardware.memory-mib",
            format!("{} MiB is too little (at least 128)", hw.memory_mib),
        ));
    }
    if !(13..=21).contains(&hw.vmware_hardware_version) {
        return Err(invalid(
            path,
            "hardware.vmware-hardware-version",
            "vSphere 6.5 (13) up to 8.0 (21)",
        ));
    }
    if p.spec.profile.data_size_mib < 16 {
        return Err(invalid(path, "profile.data-size-mib", "at least 16 MiB"));
    }
    Ok(p)
}

/// Loads a profile and checks it against the recipes and overlays it names.
pub fn load_profile(root: &Path, name: &str, recipes: &RecipeSet) -> Result<Profile, RecipeError> {
    let path = root.join("image-profiles").join(format!("{name}.toml"));
    if !path.is_file() {
        let known = list_profiles(root).unwrap_or_default().join(", ");
        return Err(RecipeError::Invalid {
            path,
            key: "profile".into(),
            message: format!("no profile named '{name}' (known: {known})"),
        });
    }
    let text = std::fs::read_to_string(&path).map_err(|source| RecipeError::Read {
        path: path.clone(),
        source,
    })?;
    let p = parse_profile(&path, &text)?;
    for (i, pkg) in p.spec.profile.packages.iter().enumerate() {
        if !recipes.recipes.contains_key(pkg) {
            return Err(invalid(
                &path,
                format!("profile.packages[{i}]"),
                format!("no recipe named '{pkg}'"),
            ));
        }
    }
    for (i, o) in p.spec.profile.overlays.iter().enumerate() {
        if !root.join("overlays").join(o).is_dir() {
            return Err(invalid(
                &path,
                format!("profile.overlays[{i}]"),
                format!("no folder overlays/{o}"),
            ));
        }
    }
    Ok(p)
}

pub fn list_profiles(root: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("image-profiles"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "toml").then(|| p.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    names.sort();
    Ok(names)
}

/// All profiles, loaded and checked; used by `list` and the repository test.
pub fn load_all(
    root: &Path,
    recipes: &RecipeSet,
) -> Result<BTreeMap<String, Profile>, RecipeError> {
    let names = list_profiles(root).map_err(|source| RecipeError::Read {
        path: root.join("image-profiles"),
        source,
    })?;
    names
        .into_iter()
        .map(|n| load_profile(root, &n, recipes).map(|p| (n, p)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[profile]
name = "qemu"
description = "test"
packages = ["linux"]
formats = ["raw", "qcow2"]
"#;

    fn parse(text: &str) -> Result<Profile, RecipeError> {
        parse_profile(Path::new("image-profiles/qemu.toml"), text)
    }

    #[test]
    fn good_profile_has_default_hardware() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.spec.hardware, Hardware::default());
        assert_eq!(p.spec.profile.formats, [Format::Raw, Format::Qcow2]);
    }

    #[test]
    fn unknown_format_is_named() {
        let e = parse(&GOOD.replace("\"qcow2\"", "\"vhdx\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("vhdx") && e.contains("qemu.toml"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse(&format!(
            "{GOOD}\n[hardware]\ncpus = 2\nmemory-mib = 512\nfirmware = \
             \"efi\"\nnic = \"virtio\"\ndisk-controller = \
             \"virtio\"\nvmware-hardware-version = 14\ngpu = true\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("gpu"), "{e}");
    }

    #[test]
    fn bad_hardware_value_names_key() {
        let e = parse(&format!(
            "{GOOD}\n[hardware]\ncpus = 0\nmemory-mib = 512\nfirmware = \
             \"efi\"\nnic = \"virtio\"\ndisk-controller = \
             \"virtio\"\nvmware-hardware-version = 14\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("hardware.cpus"), "{e}");
    }

    #[test]
    fn repository_profiles_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let recipes = RecipeSet::load(&root.join("recipes")).unwrap();
        let all = load_all(&root, &recipes).unwrap();
        for name in ["qemu", "vsphere", "minimal"] {
            assert!(all.contains_key(name), "profile {name} missing");
        }
    }
}
