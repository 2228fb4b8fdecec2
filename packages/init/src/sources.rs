//! Where first-boot settings come from, besides the kernel command line: the OVF environment
//! (vSphere's ISO transport), a NoCloud `cidata` volume, and QEMU fw_cfg. Each source is
//! read once at boot; each yields settings layers in its own order, and `gather` returns
//! them in the documented merge order (see `settings`). Problems are printed on the console
//! as `axion: settings: SOURCE: KEY: what (ignored)` and never stop the boot.
//!
//! Finding volumes: every block device in `/sys/class/block` (disks, partitions, CD-ROMs;
//! not loop/ram/zram devices, not empty drives) is probed by reading its first 34 KiB: an
//! ISO 9660 primary volume descriptor (`CD001` at 32 KiB, volume id at +40) or a FAT boot
//! sector (label at 43 or, for FAT32, 71). A volume labelled `cidata` (any case) is the
//! NoCloud seed: it is mounted read-only (vfat or iso9660) on a directory under /run,
//! `meta-data`, `user-data` and `network-config` are read, and it is unmounted. Any other
//! ISO 9660 volume is mounted the same way and looked at for `ovf-env.xml` (vSphere names
//! its ISO `OVF ENV`, cloud-init does not rely on the label either).
//!
//! fw_cfg: the kernel (CONFIG_FW_CFG_SYSFS) shows QEMU's `-fw_cfg name=opt/axion/NAME,...`
//! entries as `/sys/firmware/qemu_fw_cfg/by_name/opt/axion/NAME/raw`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::cloudinit;
use crate::settings::{parse_cmdline, Layer};
use crate::sys;

/// The biggest settings document read from any source (certificates fit easily).
const MAX_DOC: u64 = 4 << 20;

pub const FW_CFG_DIR: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/axion";

/// Prints one settings problem on the consoles.
pub fn report(source: &str, problem: &str) {
    let tail = if problem.contains("ignored") {
        ""
    } else {
        " (ignored)"
    };
    crate::log::line(&format!("axion: settings: {source}: {problem}{tail}"));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Vfat,
    Iso9660,
}

impl FsKind {
    fn fstype(self) -> &'static str {
        match self {
            FsKind::Vfat => "vfat",
            FsKind::Iso9660 => "iso9660",
        }
    }
}

/// The filesystem and label found in a device's first bytes (at least 34 KiB for ISO 9660).
pub fn probe(buf: &[u8]) -> Option<(FsKind, String)> {
    let text = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .trim_end_matches([' ', '\0'])
            .to_string()
    };
    if buf.len() >= 32768 + 72 && buf[32768] == 1 && &buf[32769..32774] == b"CD001" {
        return Some((FsKind::Iso9660, text(&buf[32808..32840])));
    }
    if buf.len() >= 512 && buf[510] == 0x55 && buf[511] == 0xaa {
        if &buf[82..87] == b"FAT32" {
            return Some((FsKind::Vfat, text(&buf[71..82])));
        }
        if &buf[54..57] == b"FAT" {
            return Some((FsKind::Vfat, text(&buf[43..54])));
        }
    }
    None
}

/// Block devices worth probing, sorted by name.
pub fn candidates(class_block: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(class_block) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            !["loop", "ram", "zram", "nbd"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .filter(|n| {
            fs::read_to_string(class_block.join(n).join("size"))
                .is_ok_and(|s| s.trim().parse::<u64>().is_ok_and(|z| z > 0))
        })
        .collect();
    v.sort();
    v
}

fn read_head(dev: &Path) -> std::io::Result<Vec<u8>> {
    let f = fs::File::open(dev)?;
    let mut buf = Vec::with_capacity(34 * 1024);
    f.take(34 * 1024).read_to_end(&mut buf)?;
    Ok(buf)
}

fn read_doc(path: &Path) -> Option<Result<String, String>> {
    let f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(format!("read {}: {e}", path.display()))),
    };
    let mut buf = Vec::new();
    if let Err(e) = f.take(MAX_DOC + 1).read_to_end(&mut buf) {
        return Some(Err(format!("read {}: {e}", path.display())));
    }
    if buf.len() as u64 > MAX_DOC {
        return Some(Err(format!(
            "{}: larger than {} MiB",
            path.display(),
            MAX_DOC >> 20
        )));
    }
    Some(String::from_utf8(buf).map_err(|_| format!("{}: not UTF-8 text", path.display())))
}

/// A volume mounted read-only for as long as this lives.
struct Mounted(PathBuf);

impl Mounted {
    fn new(dev: &Path, kind: FsKind, name: &str) -> Result<Mounted, String> {
        let dir = PathBuf::from(format!("/run/axion/mnt-{name}"));
        fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        sys::mount(&dev.to_string_lossy(), &dir, kind.fstype(), flags, None)
            .map_err(|e| format!("mount {} ({}) read-only: {e}", dev.display(), kind.fstype()))?;
        Ok(Mounted(dir))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = sys::umount(&self.0, 0) {
            crate::warn!("unmount {}: {e}", self.0.display());
            let _ = sys::umount(&self.0, libc::MNT_DETACH);
        }
        let _ = fs::remove_dir(&self.0);
    }
}

/// Parses the three NoCloud documents (any may be missing) into layers, lowest first.
pub fn nocloud_layers(
    source: &str,
    meta: Option<&str>,
    user: Option<&str>,
    network: Option<&str>,
) -> Vec<Layer> {
    let mut layers = Vec::new();
    for (name, text, parse) in [
        (
            "meta-data",
            meta,
            cloudinit::parse_meta_data as fn(&str) -> cloudinit::Parsed,
        ),
        ("user-data", user, cloudinit::parse_user_data),
        ("network-config", network, cloudinit::parse_network_config),
    ] {
        let Some(text) = text else { continue };
        let mut p = parse(text);
        for w in &p.problems {
            report(&format!("{source} {name}"), w);
        }
        for f in &mut p.layer.write_files {
            f.source = format!("{source} {name}");
        }
        layers.push(p.layer);
    }
    layers
}

fn read_docs(dir: &Path, names: &[&str], source: &str) -> Vec<Option<String>> {
    names
        .iter()
        .map(|n| match read_doc(&dir.join(n)) {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                report(source, &e);
                None
            }
        })
        .collect()
}

/// QEMU fw_cfg: `opt/axion/{meta-data,user-data,network-config,cmdline}`.
pub fn fw_cfg(dir: &Path) -> Vec<Layer> {
    if !dir.exists() {
        return Vec::new();
    }
    let docs = read_docs(
        dir,
        &[
            "meta-data/raw",
            "user-data/raw",
            "network-config/raw",
            "cmdline/raw",
        ],
        "fw_cfg",
    );
    let mut layers = nocloud_layers(
        "fw_cfg",
        docs[0].as_deref(),
        docs[1].as_deref(),
        docs[2].as_deref(),
    );
    if let Some(c) = &docs[3] {
        let parsed = parse_cmdline(c);
        for w in &parsed.warnings {
            report(
                "fw_cfg cmdline",
                w.trim_start_matches("kernel command line: "),
            );
        }
        layers.push(parsed.layer);
    }
    if !layers.is_empty() {
        crate::info!("settings: read QEMU fw_cfg opt/axion/*");
    }
    layers
}

/// What the block devices offer: (OVF environment layers, NoCloud layers).
pub fn volumes(class_block: &Path) -> (Vec<Layer>, Vec<Layer>) {
    let mut ovf = Vec::new();
    let mut nocloud = Vec::new();
    for name in candidates(class_block) {
        let dev = PathBuf::from(format!("/dev/{name}"));
        let Ok(head) = read_head(&dev) else { continue };
        let Some((kind, label)) = probe(&head) else {
            continue;
        };
        if label.eq_ignore_ascii_case("cidata") {
            if !nocloud.is_empty() {
                report(
                    "nocloud",
                    &format!(
                        "{}: a second cidata volume; only the first is used",
                        dev.display()
                    ),
                );
                continue;
            }
            let m = match Mounted::new(&dev, kind, "cidata") {
                Ok(m) => m,
                Err(e) => {
                    report("nocloud", &e);
                    continue;
                }
            };
            let docs = read_docs(
                &m.0,
                &["meta-data", "user-data", "network-config"],
                "nocloud",
            );
            drop(m);
            crate::info!(
                "settings: NoCloud volume {} ({}, label {label})",
                dev.display(),
                kind.fstype()
            );
            nocloud = nocloud_layers(
                "nocloud",
                docs[0].as_deref(),
                docs[1].as_deref(),
                docs[2].as_deref(),
            );
            if nocloud.is_empty() {
                nocloud.push(Layer::default());
            }
        } else if kind == FsKind::Iso9660 && ovf.is_empty() {
            let Ok(m) = Mounted::new(&dev, kind, "ovfenv") else {
                continue;
            };
            let found = ["ovf-env.xml", "OVF-ENV.XML", "ovf_env.xml", "OVF_ENV.XML"]
                .iter()
                .find_map(|n| read_doc(&m.0.join(n)));
            drop(m);
            match found {
                None => {}
                Some(Err(e)) => report("ovf-env", &e),
                Some(Ok(xml)) => {
                    crate::info!(
                        "settings: OVF environment on {} (label {label})",
                        dev.display()
                    );
                    let (layers, problems) = crate::ovfenv::parse(&xml);
                    for p in problems {
                        report("ovf-env", &p);
                    }
                    ovf = layers;
                    for l in &mut ovf {
                        for f in &mut l.write_files {
                            f.source = "ovf-env user-data".into();
                        }
                    }
                    if ovf.is_empty() {
                        ovf.push(Layer::default());
                    }
                }
            }
        }
    }
    (ovf, nocloud)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_iso_and_fat_labels() {
        let mut iso = vec![0u8; 34 * 1024];
        iso[32768] = 1;
        iso[32769..32774].copy_from_slice(b"CD001");
        iso[32808..32840].copy_from_slice(format!("{:<32}", "cidata").as_bytes());
        assert_eq!(probe(&iso), Some((FsKind::Iso9660, "cidata".into())));

        let mut fat = vec![0u8; 512];
        fat[510] = 0x55;
        fat[511] = 0xaa;
        fat[54..62].copy_from_slice(b"FAT12   ");
        fat[43..54].copy_from_slice(b"CIDATA     ");
        assert_eq!(probe(&fat), Some((FsKind::Vfat, "CIDATA".into())));
        let mut fat32 = vec![0u8; 512];
        fat32[510] = 0x55;
        fat32[511] = 0xaa;
        fat32[82..90].copy_from_slice(b"FAT32   ");
        fat32[71..82].copy_from_slice(b"NO NAME    ");
        assert_eq!(probe(&fat32), Some((FsKind::Vfat, "NO NAME".into())));
        assert_eq!(probe(&[0u8; 100]), None);
        assert_eq!(probe(&vec![0u8; 40000]), None);
    }

    /// The real tools' output, when the host has them (mkfs.vfat from dosfstools, xorriso).
    #[test]
    fn probes_what_mkfs_and_xorriso_write() {
        let dir = std::env::temp_dir().join(format!("axion-probe-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("tree")).unwrap();
        fs::write(dir.join("tree/meta-data"), "instance-id: x\n").unwrap();
        let img = dir.join("fat.img");
        let ok = std::process::Command::new("mkfs.vfat")
            .args(["-n", "CIDATA", "-C"])
            .arg(&img)
            .arg("1440")
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            assert_eq!(
                probe(&fs::read(&img).unwrap()),
                Some((FsKind::Vfat, "CIDATA".into()))
            );
        } else {
            test_skip::skip("mkfs.vfat is not installed (dosfstools)");
        }
        let iso = dir.join("seed.iso");
        let ok = std::process::Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-V", "cidata", "-J", "-R", "-o"])
            .arg(&iso)
            .arg(dir.join("tree"))
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            assert_eq!(
                probe(&fs::read(&iso).unwrap()),
                Some((FsKind::Iso9660, "cidata".into()))
            );
        } else {
            test_skip::skip("xorriso is not installed");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The documented order: OVF environment < NoCloud < fw_cfg < kernel command line.
    #[test]
    fn merge_order_across_sources() {
        let (ovf, problems) = crate::ovfenv::parse(
            r#"<Environment xmlns:oe="http://schemas.dmtf.org/ovf/environment/1" oe:id="ovf-id">
            <PropertySection>
            <Property oe:key="hostname" oe:value="from-ovf"/>
            <Property oe:key="ssh-key" oe:value="ssh-ed25519 K1 ovf"/>
            <Property oe:key="network" oe:value="10.1.1.1/24"/></PropertySection></Environment>"#,
        );
        assert!(problems.is_empty(), "{problems:?}");
        let nocloud = nocloud_layers(
            "nocloud",
            Some("instance-id: nc-id\n"),
            Some(
                "#cloud-config\nhostname: from-nocloud\nssh_authorized_keys: [ssh-ed25519 K2 nc]\n",
            ),
            None,
        );
        let fw = nocloud_layers(
            "fw_cfg",
            None,
            Some("#cloud-config\nhostname: from-fwcfg\n"),
            None,
        );
        let cmdline = parse_cmdline("axion.ssh_key=\"ssh-ed25519 K3 cmd\"").layer;
        let layers: Vec<Layer> = ovf
            .iter()
            .chain(&nocloud)
            .chain(&fw)
            .cloned()
            .chain([cmdline.clone()])
            .collect();
        let s = crate::settings::Settings::merge(&layers);
        assert_eq!(s.hostname, "from-fwcfg");
        assert_eq!(s.instance_id.as_deref(), Some("nc-id"));
        assert_eq!(
            s.ssh_keys,
            [
                "ssh-ed25519 K1 ovf",
                "ssh-ed25519 K2 nc",
                "ssh-ed25519 K3 cmd"
            ]
        );
        assert!(
            matches!(s.network, crate::settings::Network::Static(_)),
            "OVF's network stays when nobody overrides it"
        );
        let with_cmd_host: Vec<Layer> = layers
            .into_iter()
            .chain([parse_cmdline("axion.hostname=from-cmdline").layer])
            .collect();
        assert_eq!(
            crate::settings::Settings::merge(&with_cmd_host).hostname,
            "from-cmdline"
        );
    }

    #[test]
    fn fw_cfg_documents_in_a_fake_sysfs() {
        let dir = std::env::temp_dir().join(format!("axion-fwcfg-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for (n, t) in [
            ("meta-data", "instance-id: fw-1\nlocal-hostname: meta\n"),
            (
                "user-data",
                "#cloud-config\nhostname: user\nwrite_files:\n  - path: /etc/x\n    content: y\n",
            ),
            ("cmdline", "axion.hostname=cmd axion.debug"),
        ] {
            fs::create_dir_all(dir.join(n)).unwrap();
            fs::write(dir.join(n).join("raw"), t).unwrap();
        }
        let layers = fw_cfg(&dir);
        let s = crate::settings::Settings::merge(&layers);
        assert_eq!(s.hostname, "cmd");
        assert_eq!(s.instance_id.as_deref(), Some("fw-1"));
        assert!(s.debug);
        assert_eq!(s.write_files[0].source, "fw_cfg user-data");
        assert!(fw_cfg(&dir.join("missing")).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
