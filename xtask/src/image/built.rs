//! Built images: finding one in `out/PROFILE` ([`find_bootable`]), telling whether it is
//! older than its inputs ([`stale_reason`]), and making sure a fresh one exists, building it
//! when needed ([`ensure`], what `cargo xtask run` and `cargo xtask vmd` boot).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context, Result};

use crate::layout::Layout;
use crate::profile::{Format, Profile};

/// What can be booted: a disk image, an ISO, or a kernel with its initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootable {
    Disk {
        path: PathBuf,
        format: qemu::DiskFormat,
    },
    Iso(PathBuf),
    Kernel {
        kernel: PathBuf,
        initrd: PathBuf,
    },
}

/// Formats `run` can boot, in the order it prefers them when none is asked for.
const PREFERENCE: [Format; 5] = [
    Format::Qcow2,
    Format::Raw,
    Format::Iso,
    Format::Vmdk,
    Format::Initramfs,
];

/// Finds a built image of `format` in `out` (image assembly names files
/// `axion-PROFILE-VERSION.EXT`; the initramfs format is a kernel plus its initramfs). The
/// newest wins if there are several versions.
pub fn find_bootable(out: &Path, profile: &str, format: Format) -> Option<Bootable> {
    let files: Vec<PathBuf> = std::fs::read_dir(out)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    let newest = |pred: &dyn Fn(&str) -> bool| -> Option<PathBuf> {
        files
            .iter()
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(pred))
            .max_by_key(|p| {
                std::fs::metadata(p)
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH)
            })
            .cloned()
    };
    let prefix = format!("axion-{profile}-");
    let image =
        |ext: &str| newest(&|n: &str| n.starts_with(&prefix) && n.ends_with(&format!(".{ext}")));
    match format {
        Format::Raw => image("raw").map(|path| Bootable::Disk {
            path,
            format: qemu::DiskFormat::Raw,
        }),
        Format::Qcow2 => image("qcow2").map(|path| Bootable::Disk {
            path,
            format: qemu::DiskFormat::Qcow2,
        }),
        Format::Vmdk => image("vmdk").map(|path| Bootable::Disk {
            path,
            format: qemu::DiskFormat::Vmdk,
        }),
        Format::Iso => image("iso").map(Bootable::Iso),
        Format::Initramfs => {
            let kernel = newest(&|n: &str| {
                n.ends_with("vmlinuz") || n.ends_with(".vmlinuz") || n == "bzImage"
            })?;
            let initrd = newest(&|n: &str| n.contains("initrd") || n.contains("initramfs"))?;
            Some(Bootable::Kernel { kernel, initrd })
        }
        Format::Ova => None,
    }
}

/// The format to boot: the one asked for, else the first built one in [`PREFERENCE`] order.
pub fn choose_bootable(
    out: &Path,
    profile: &str,
    format: Option<Format>,
) -> Result<(Format, Bootable)> {
    let build_hint =
        |f: Format| format!("build it with `cargo xtask image --profile {profile} --format {f}`");
    match format {
        Some(Format::Ova) => bail!(
            "an OVA is for vSphere; to boot its disk here use --format vmdk (or convert the VMDK \
                inside with `qemu-img convert`)"
        ),
        Some(f) => find_bootable(out, profile, f)
            .map(|b| (f, b))
            .ok_or_else(|| {
                anyhow!(
                    "no {f} image of profile '{profile}' in {}: \
                {}",
                    out.display(),
                    build_hint(f)
                )
            }),
        None => PREFERENCE
            .iter()
            .find_map(|&f| find_bootable(out, profile, f).map(|b| (f, b)))
            .ok_or_else(|| {
                anyhow!(
                    "no bootable image of profile '{profile}' in {}: build one with \
                `cargo xtask image --profile {profile}`",
                    out.display()
                )
            }),
    }
}

/// Makes sure an image of the profile exists and is not older than its inputs, building it
/// with `cargo xtask image` when it is missing or stale. A stale image whose rebuild fails is
/// booted anyway, with a warning.
pub fn ensure(
    layout: &Layout,
    profile: &Profile,
    format: Option<Format>,
) -> Result<(Format, Bootable)> {
    let out = layout.out(profile.name());
    let name = profile.name();
    let found = choose_bootable(&out, name, format);
    let (wanted, reason) = match &found {
        Ok((f, b)) => match stale_reason(layout, profile, b) {
            None => return found,
            Some(why) => (*f, format!("the {f} image is older than {why}")),
        },
        Err(_) => {
            let f = format.unwrap_or_else(|| default_format(profile));
            (f, format!("there is no {f} image yet"))
        }
    };
    eprintln!("{reason}: building it with `cargo xtask image --profile {name} --format {wanted}`");
    match build_image(layout, name, wanted) {
        Ok(()) => choose_bootable(&out, name, Some(wanted)),
        Err(e) if found.is_ok() => {
            eprintln!("warning: rebuilding failed ({e:#}); booting the existing image");
            found
        }
        Err(e) => Err(e),
    }
}

/// The format to build when none is asked for and none is built: the first of the profile's
/// formats that `run` can boot, in [`PREFERENCE`] order.
fn default_format(profile: &Profile) -> Format {
    let fs = &profile.spec.profile.formats;
    PREFERENCE
        .into_iter()
        .find(|f| fs.contains(f))
        .unwrap_or(Format::Qcow2)
}

/// Builds the profile's image in `format` (its messages go to stderr, so that `run --detach`
/// keeps stdout for the export lines).
fn build_image(layout: &Layout, profile: &str, format: Format) -> Result<()> {
    crate::image::build_profile(layout, profile, &[format], None, false).with_context(|| {
        format!("`cargo xtask image --profile {profile} --format {format}` failed")
    })?;
    Ok(())
}

/// Why a built image is stale: the newest input (the profile, recipes, overlays, package
/// sources and the workspace crates they build from, staged package trees in the cache)
/// that is newer than it, or `None`.
pub fn stale_reason(layout: &Layout, profile: &Profile, bootable: &Bootable) -> Option<String> {
    let image = match bootable {
        Bootable::Disk { path, .. } | Bootable::Iso(path) => path,
        Bootable::Kernel { initrd, .. } => initrd,
    };
    let built = std::fs::metadata(image).and_then(|m| m.modified()).ok()?;
    let mut inputs: Vec<PathBuf> = vec![
        profile.path.clone(),
        layout.recipes(),
        layout.root.join("overlays"),
        layout.root.join("packages"),
    ];
    if let Ok(rd) = std::fs::read_dir(layout.packages()) {
        inputs.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    for input in inputs {
        let walk =
            walkdir::WalkDir::new(&input).max_depth(if input.starts_with(layout.packages()) {
                0
            } else {
                20
            });
        for entry in walk
            .into_iter()
            .filter_entry(|e| e.file_name() != "target")
            .filter_map(|e| e.ok())
        {
            let newer = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .is_some_and(|t| t > built);
            if newer {
                let p = entry.path();
                return Some(
                    p.strip_prefix(&layout.root)
                        .unwrap_or(p)
                        .display()
                        .to_string(),
                );
            }
        }
    }
    // The workspace crates the image's Rust programs reach through path dependencies
    // (crates/docker-api, vchan, registry...): their package build keys cover them, so a
    // change there must make the image stale too (crates only the host uses do not).
    let crates = layout.root.join("crates");
    for e in std::fs::read_dir(layout.root.join("packages"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if !e.path().join("Cargo.toml").is_file() {
            continue;
        }
        for f in crate::build::key::cargo_inputs(&layout.root, &name).unwrap_or_default() {
            if f.starts_with(&crates)
                && std::fs::metadata(&f)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t > built)
            {
                return Some(
                    f.strip_prefix(&layout.root)
                        .unwrap_or(&f)
                        .display()
                        .to_string(),
                );
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn touch(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, name).unwrap();
        p
    }

    fn profile(text: &str) -> Profile {
        crate::profile::parse_profile(Path::new("image-profiles/qemu.toml"), text).unwrap()
    }

    const QEMU_PROFILE: &str = r#"
[profile]
name = "qemu"
description = "t"
packages = ["linux"]
cmdline = "console=ttyS0"
formats = ["raw"]
[hardware]
cpus = 2
memory-mib = 1024
firmware = "efi"
nic = "vmxnet3"
disk-controller = "pvscsi"
vmware-hardware-version = 14
"#;

    #[test]
    fn format_preference_and_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let e = choose_bootable(d, "qemu", None).unwrap_err().to_string();
        assert!(e.contains("cargo xtask image --profile qemu"), "{e}");
        touch(d, "axion-qemu-0.1.0.raw");
        touch(d, "axion-other-0.1.0.qcow2"); // another profile's image is not ours
        assert_eq!(choose_bootable(d, "qemu", None).unwrap().0, Format::Raw);
        let qcow = touch(d, "axion-qemu-0.1.0.qcow2");
        let (f, b) = choose_bootable(d, "qemu", None).unwrap();
        assert_eq!(
            (f, b),
            (
                Format::Qcow2,
                Bootable::Disk {
                    path: qcow,
                    format: qemu::DiskFormat::Qcow2
                }
            )
        );
        let e = choose_bootable(d, "qemu", Some(Format::Iso))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no iso image") && e.contains("--format iso"),
            "{e}"
        );
        let e = choose_bootable(d, "qemu", Some(Format::Ova))
            .unwrap_err()
            .to_string();
        assert!(e.contains("vmdk"), "{e}");
        let k = touch(d, "vmlinuz");
        let i = touch(d, "initrd.zst");
        assert_eq!(
            choose_bootable(d, "qemu", Some(Format::Initramfs))
                .unwrap()
                .1,
            Bootable::Kernel {
                kernel: k,
                initrd: i
            }
        );
    }

    #[test]
    fn stale_when_an_input_is_newer() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        for d in [
            "recipes",
            "overlays/base",
            "packages/init/src",
            "packages/init/target",
            "image-profiles",
            "out/qemu",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("image-profiles/qemu.toml"), QEMU_PROFILE).unwrap();
        let mut p = profile(QEMU_PROFILE);
        p.path = root.join("image-profiles/qemu.toml");
        let layout = Layout::with_cache(root.clone(), dir.path().join("cache"));
        std::thread::sleep(Duration::from_millis(20));
        let img = touch(&root.join("out/qemu"), "axion-qemu-0.1.0.raw");
        let b = Bootable::Disk {
            path: img,
            format: qemu::DiskFormat::Raw,
        };
        assert_eq!(stale_reason(&layout, &p, &b), None);
        std::thread::sleep(Duration::from_millis(20));
        touch(&root.join("packages/init/target"), "ignored.o"); // build output is not an input
        assert_eq!(stale_reason(&layout, &p, &b), None);
        touch(&root.join("packages/init/src"), "main.rs");
        // The folder counts too (a deleted file changes only its folder).
        let why = stale_reason(&layout, &p, &b).unwrap();
        assert!(why.starts_with("packages/init/src"), "{why}");
    }

    #[test]
    fn stale_when_a_crate_a_package_builds_from_is_newer() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        for d in [
            "recipes",
            "overlays",
            "packages/engine/src",
            "crates/api/src",
            "crates/hostonly/src",
            "image-profiles",
            "out/qemu",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(
            root.join("Cargo.toml"),
            "[workspace]\nmembers = [\"packages/*\", \"crates/*\"]\n",
        )
        .unwrap();
        std::fs::write(
            root.join("packages/engine/Cargo.toml"),
            "[package]\nname = \"engine\"\n[dependencies]\napi = { path = \"../../crates/api\" }\n",
        )
        .unwrap();
        std::fs::write(
            root.join("crates/api/Cargo.toml"),
            "[package]\nname = \"api\"\n",
        )
        .unwrap();
        std::fs::write(
            root.join("crates/hostonly/Cargo.toml"),
            "[package]\nname = \"hostonly\"\n",
        )
        .unwrap();
        std::fs::write(root.join("image-profiles/qemu.toml"), QEMU_PROFILE).unwrap();
        let mut p = profile(QEMU_PROFILE);
        p.path = root.join("image-profiles/qemu.toml");
        let layout = Layout::with_cache(root.clone(), dir.path().join("cache"));
        std::thread::sleep(Duration::from_millis(20));
        let img = touch(&root.join("out/qemu"), "axion-qemu-0.1.0.raw");
        let b = Bootable::Disk {
            path: img,
            format: qemu::DiskFormat::Raw,
        };
        assert_eq!(stale_reason(&layout, &p, &b), None);
        std::thread::sleep(Duration::from_millis(20));
        touch(&root.join("crates/hostonly/src"), "lib.rs"); // no package builds from it
        assert_eq!(stale_reason(&layout, &p, &b), None);
        touch(&root.join("crates/api/src"), "lib.rs");
        assert_eq!(
            stale_reason(&layout, &p, &b).as_deref(),
            Some("crates/api/src/lib.rs")
        );
    }
}
