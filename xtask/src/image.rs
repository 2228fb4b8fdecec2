//! Image assembly: staged packages + overlays → root filesystem → every image format.
//!
//! One call, [`assemble`], writes the requested formats of a profile into an output folder:
//!
//! | format      | files                                                      |
//! |-------------|------------------------------------------------------------|
//! | `initramfs` | `axion-P-V.vmlinuz`, `axion-P-V.initrd.zst` (direct kernel boot) |
//! | `raw`       | `axion-P-V.raw`: GPT disk, BIOS + UEFI (sparse file)        |
//! | `qcow2`     | `axion-P-V.qcow2`: the same disk                            |
//! | `vmdk`      | `axion-P-V.vmdk`: the same disk, streamOptimized            |
//! | `ova`       | `axion-P-V.ova`: OVF + that VMDK + SHA-256 manifest         |
//! | `iso`       | `axion-P-V.iso`: hybrid ISO (CD or USB stick, BIOS + UEFI), with the raw disk for `axion-update install` |
//!
//! (P = profile, V = the workspace version.) Every file is written under a temporary name in
//! the output folder and renamed into place, so a final path never holds half a file, and
//! `SHA256SUMS` there is updated for everything written. Every format is bit-identical from
//! one build to the next: all timestamps are `SOURCE_DATE_EPOCH`, all identifiers (disk and
//! partition GUIDs, FAT volume id, ext4 UUID and hash seed, VMDK content id) are derived from
//! the profile name.
//!
//! The root filesystem *is* the initramfs (as in LinuxKit): every boot starts from the image;
//! state lives on the `axion-data` partition, which init mounts at `/var/lib`. The ESP holds
//! GRUB (`EFI/BOOT/BOOTX64.EFI`), `grub/grub.cfg`, `grub/grubenv`, the marker `axion/medium`
//! and two slots for in-place updates: `axion/A/{vmlinuz,initrd.zst,release}` (this build,
//! active) and `axion/B/` (empty until `axion-update apply`; see [`grub`]).

pub mod built;
pub mod data;
pub mod disk;
pub mod esp;
pub mod grub;
pub mod initramfs;
pub mod iso;
pub mod ova;
pub mod qcow2;
pub mod release;
pub mod sparse;
pub mod vmdk;

pub use built::{choose_bootable, ensure, find_bootable, stale_reason, Bootable};

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::layout::Layout;
use crate::profile::{Format, Profile};
use crate::rootfs::{self, PackageTree, Rootfs};

/// `cargo xtask image`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long, default_value = "qemu")]
    pub profile: String,
    /// Formats to write (default: the profile's list).
    #[arg(long, value_delimiter = ',')]
    pub format: Vec<Format>,
    /// Output folder (default: out/PROFILE).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub offline: bool,
    #[command(flatten)]
    pub cache: crate::remote_cache::CacheArgs,
}

/// `cargo xtask image`: builds the profile's images; prints the written files with their
/// sizes.
pub fn main(layout: &Layout, args: &Args) -> Result<()> {
    args.cache.apply()?;
    let written = build_profile(
        layout,
        &args.profile,
        &args.format,
        args.out.clone(),
        args.offline,
    )?;
    for path in written {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!("{:>10}  {}", crate::ui::human_size(size), path.display());
    }
    Ok(())
}

/// The version in every file name: the workspace version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The version an image reports (`/etc/axion/release`) and `axion-update` compares:
/// `AXION_VERSION` from the environment when set (a release pipeline, or tests publishing
/// v1 and v2 of one checkout), else [`VERSION`]. File names keep [`VERSION`].
pub fn release_version() -> String {
    std::env::var("AXION_VERSION")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| VERSION.to_owned())
}

const MIB: u64 = 1024 * 1024;

/// `cargo xtask image`: builds (or finds cached) the packages of profile `name`, then
/// assembles `formats` (default: the profile's) into `out` (default `out/NAME/`); returns
/// the paths written.
pub fn build_profile(
    layout: &Layout,
    name: &str,
    formats: &[Format],
    out: Option<PathBuf>,
    offline: bool,
) -> Result<Vec<PathBuf>> {
    crate::doctor::ensure(&[crate::doctor::Need::Image])?;
    let recipes = crate::recipe::RecipeSet::load(&layout.recipes())?;
    let profile = crate::profile::load_profile(&layout.root, name, &recipes)?;
    let formats = if formats.is_empty() {
        profile.spec.profile.formats.clone()
    } else {
        formats.to_vec()
    };
    let out = out.unwrap_or_else(|| layout.out(profile.name()));
    let staged = profile_packages(layout, &recipes, &profile, offline)?;
    let trees: Vec<PackageTree> = staged
        .into_iter()
        .map(|s| PackageTree {
            name: s.name,
            tree: s.tree,
        })
        .collect();
    let names: Vec<&str> = formats.iter().map(|f| f.name()).collect();
    let step = crate::ui::step(&format!(
        "assembling {} for profile {}",
        names.join(", "),
        profile.name()
    ));
    let written = assemble(layout, &profile, &trees, &formats, &out)?;
    step.finish_and_clear();
    Ok(written)
}

/// The profile's packages, built now unless the cache has them.
pub fn profile_packages(
    layout: &Layout,
    recipes: &crate::recipe::RecipeSet,
    profile: &Profile,
    offline: bool,
) -> Result<Vec<crate::build::Staged>> {
    let opts = crate::build::BuildOptions {
        offline,
        ..Default::default()
    };
    crate::build::build_packages(layout, recipes, &profile.spec.profile.packages, &opts)
        .with_context(|| format!("cannot build the packages of profile {}", profile.name()))
}

/// Assembles `formats` of `profile` from the staged `packages` into `out` and returns the
/// paths written (SHA256SUMS last). `SOURCE_DATE_EPOCH` comes from the environment or the
/// checkout's last commit; overlays from `overlays/` of the checkout.
pub fn assemble(
    layout: &Layout,
    profile: &Profile,
    packages: &[PackageTree],
    formats: &[Format],
    out: &Path,
) -> Result<Vec<PathBuf>> {
    let epoch = rootfs::source_date_epoch(&layout.root)?;
    let overlays: Vec<(String, PathBuf)> = profile
        .spec
        .profile
        .overlays
        .iter()
        .map(|o| (o.clone(), layout.root.join("overlays").join(o)))
        .collect();
    let release = release::overlay(&layout.root, profile, &release_version())?;
    let mut overlays = overlays;
    overlays.push(("release".into(), release.path().to_owned()));
    assemble_with(profile, packages, &overlays, formats, out, epoch)
}

/// [`assemble`] with everything explicit (tests use it with hand-made trees).
pub fn assemble_with(
    profile: &Profile,
    packages: &[PackageTree],
    overlays: &[(String, PathBuf)],
    formats: &[Format],
    out: &Path,
    epoch: u64,
) -> Result<Vec<PathBuf>> {
    let name = profile.name();
    let base = format!("axion-{name}-{VERSION}");
    let fs = Rootfs::assemble(packages, overlays, epoch)?;
    let kernel_path = find_kernel(packages)?;
    let kernel = std::fs::read(&kernel_path)
        .with_context(|| format!("cannot read {}", kernel_path.display()))?;
    let mut initrd = Vec::new();
    initramfs::write(&fs, &mut initrd).context("cannot write the initramfs")?;
    let cfg = grub::config(
        &format!("axion {name} {VERSION}"),
        &profile.spec.profile.cmdline,
    );

    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".axion-work-")
        .tempdir_in(out)
        .with_context(|| format!("cannot make a work folder in {}", out.display()))?;
    let w = work.path();
    // (temporary path, final name), renamed into place at the end.
    let mut done: Vec<(PathBuf, String)> = Vec::new();
    let want = |f: Format| formats.contains(&f);

    if want(Format::Initramfs) {
        let k = w.join("vmlinuz");
        std::fs::write(&k, &kernel)?;
        done.push((k, format!("{base}.vmlinuz")));
        let i = w.join("initrd.zst");
        std::fs::write(&i, &initrd)?;
        done.push((i, format!("{base}.initrd.zst")));
    }

    let efi = if want(Format::Raw)
        || want(Format::Qcow2)
        || want(Format::Vmdk)
        || want(Format::Ova)
        || want(Format::Iso)
    {
        Some(grub::mkimage(grub::Target::Efi)?)
    } else {
        None
    };

    // The ISO carries the raw disk too (compressed), for `axion-update install`.
    let mut iso_disk: Option<(PathBuf, disk_manifest::Manifest)> = None;
    if want(Format::Raw)
        || want(Format::Qcow2)
        || want(Format::Vmdk)
        || want(Format::Ova)
        || want(Format::Iso)
    {
        let efi = efi.as_deref().expect("made above");
        let core = grub::mkimage(grub::Target::BiosDisk)?;
        // Slot A holds this build; B is empty until the first update (see grub.rs).
        let slots_cfg = grub::slots_config(
            &format!("axion {name} {}", release_version()),
            &profile.spec.profile.cmdline,
        );
        let env = grub::fresh_grubenv(&release_version());
        let release = format!("profile={name}\nversion={}\n", release_version());
        let files: Vec<(&str, &[u8])> = vec![
            ("EFI/BOOT/BOOTX64.EFI", efi),
            ("grub/grub.cfg", slots_cfg.as_bytes()),
            ("grub/grubenv", &env),
            (grub::MARKER, b"axion\n"),
            ("axion/A/vmlinuz", &kernel),
            ("axion/A/initrd.zst", &initrd),
            ("axion/A/release", release.as_bytes()),
        ];
        let content: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
        // Room for slot B, as large as A plus a margin for growth.
        let esp_size = esp_size(content + (kernel.len() + initrd.len()) as u64);
        let esp = esp::build(&files, esp_size, esp::LABEL, volume_id(name), epoch)
            .context("cannot build the ESP")?;
        let data_img = w.join("data.ext4");
        data::make(
            &data_img,
            profile.spec.profile.data_size_mib,
            derive_uuid(name, "data-fs"),
            epoch,
        )?;
        let raw = w.join("disk.raw");
        let guids = disk::Guids {
            disk: derive_uuid(name, "disk"),
            bios: derive_uuid(name, "part-bios"),
            esp: derive_uuid(name, "part-esp"),
            data: derive_uuid(name, "part-data"),
        };
        disk::write(
            &raw,
            &disk::Contents {
                core_img: &core,
                esp: &esp,
                data: &data_img,
            },
            guids,
        )?;
        std::fs::remove_file(&data_img)?;
        let raw_file = File::open(&raw)?;
        if want(Format::Iso) {
            let z = w.join("disk.raw.zst");
            let manifest = iso::compress_disk(&raw, &z, name, &release_version())?;
            iso_disk = Some((z, manifest));
        }
        if want(Format::Qcow2) {
            let q = w.join("disk.qcow2");
            let f =
                File::create_new(&q).with_context(|| format!("cannot create {}", q.display()))?;
            qcow2::write(&raw_file, BufWriter::new(f))
                .with_context(|| format!("cannot write {}", q.display()))?;
            done.push((q, format!("{base}.qcow2")));
        }
        if want(Format::Vmdk) || want(Format::Ova) {
            let vmdk_name = format!("{base}.vmdk");
            let v = w.join("disk.vmdk");
            let f = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&v)
                .with_context(|| format!("cannot create {}", v.display()))?;
            let h = Sha256::digest(format!("axion/{name}/vmdk-cid"));
            let word =
                |i: usize| u32::from_le_bytes(h[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
            let cid = word(0) & 0x7fff_ffff;
            vmdk::write(
                &raw_file,
                &f,
                &vmdk::Descriptor {
                    file_name: &vmdk_name,
                    cid,
                    long_cid: [word(1), word(2), word(3), cid],
                },
            )
            .with_context(|| format!("cannot write {}", v.display()))?;
            if want(Format::Ova) {
                let ovf_text = ova::ovf(&ova::OvfInput {
                    profile,
                    version: VERSION,
                    vmdk_name: &vmdk_name,
                    vmdk_size: f.metadata()?.len(),
                    capacity: raw_file.metadata()?.len(),
                });
                let o = w.join("image.ova");
                let of = File::create_new(&o)
                    .with_context(|| format!("cannot create {}", o.display()))?;
                ova::write(BufWriter::new(of), &base, &ovf_text, &vmdk_name, &v, epoch)
                    .with_context(|| format!("cannot write {}", o.display()))?;
                done.push((o, format!("{base}.ova")));
            }
            if want(Format::Vmdk) {
                done.push((v, vmdk_name));
            }
        }
        if want(Format::Raw) {
            done.push((raw, format!("{base}.raw")));
        }
    }

    if want(Format::Iso) {
        let efi = efi.as_deref().expect("made above");
        let eltorito = grub::mkimage(grub::Target::BiosCd)?;
        let efi_size = ((efi.len() as u64 + 256 * 1024).div_ceil(MIB) + 1) * MIB;
        let efi_img = esp::build(
            &[("EFI/BOOT/BOOTX64.EFI", efi)],
            efi_size,
            "AXION-EFI",
            volume_id(&format!("{name}-iso")),
            epoch,
        )
        .context("cannot build the ISO's EFI image")?;
        let iso_path = w.join("image.iso");
        let volid = format!(
            "AXION_{}",
            name.to_uppercase()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        iso::write(
            &iso_path,
            &iso::Contents {
                volume_id: &volid,
                grub_cfg: &cfg,
                kernel: &kernel,
                initrd: &initrd,
                eltorito: &eltorito,
                efi_img: &efi_img,
                disk: iso_disk.as_ref().map(|(p, m)| (p.as_path(), m)),
            },
            epoch,
        )?;
        done.push((iso_path, format!("{base}.iso")));
    }

    if done.is_empty() {
        bail!("no formats to write for profile {name}");
    }
    let mut written = Vec::new();
    let mut sums = read_sums(&out.join("SHA256SUMS"));
    for (tmp, final_name) in done {
        sums.insert(final_name.clone(), sha256_file(&tmp)?);
        let dest = out.join(&final_name);
        std::fs::rename(&tmp, &dest)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), dest.display()))?;
        written.push(dest);
    }
    sums.retain(|n, _| out.join(n).is_file());
    let text: String = sums.iter().map(|(n, h)| format!("{h}  {n}\n")).collect();
    let tmp = w.join("SHA256SUMS");
    std::fs::write(&tmp, text)?;
    let dest = out.join("SHA256SUMS");
    std::fs::rename(&tmp, &dest).with_context(|| format!("cannot write {}", dest.display()))?;
    written.push(dest);
    Ok(written)
}

/// The kernel is the staged `/boot/vmlinuz` of one package (the linux recipe).
fn find_kernel(packages: &[PackageTree]) -> Result<PathBuf> {
    let found: Vec<&PackageTree> = packages
        .iter()
        .filter(|p| p.tree.join("boot/vmlinuz").is_file())
        .collect();
    match found.as_slice() {
        [one] => Ok(one.tree.join("boot/vmlinuz")),
        [] => bail!(
            "no package stages /boot/vmlinuz (add the linux recipe to the profile's packages)"
        ),
        many => bail!(
            "several packages stage /boot/vmlinuz: {}",
            many.iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// ESP size: the content plus room for an update, at least 64 MiB (FAT32), in 16 MiB steps.
fn esp_size(content: u64) -> u64 {
    let want = content + content / 4 + 16 * MIB;
    want.div_ceil(16 * MIB).max(4) * 16 * MIB
}

/// A UUID (variant 1, version 4 layout) derived from the profile and a purpose.
pub fn derive_uuid(profile: &str, what: &str) -> uuid::Uuid {
    let h = Sha256::digest(format!("axion/{profile}/{what}"));
    uuid::Builder::from_random_bytes(h[..16].try_into().expect("16 bytes")).into_uuid()
}

fn volume_id(profile: &str) -> u32 {
    let h = Sha256::digest(format!("axion/{profile}/fat-volume-id"));
    u32::from_le_bytes(h[..4].try_into().expect("4 bytes"))
}

pub fn sha256_file(path: &Path) -> Result<String> {
    crate::cache::sha256_file(path).with_context(|| format!("cannot read {}", path.display()))
}

fn read_sums(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split_once("  ")
                .map(|(h, n)| (n.to_owned(), h.to_owned()))
        })
        .collect()
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests;
