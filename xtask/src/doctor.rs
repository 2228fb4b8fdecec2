//! The host check: every tool the project runs, what is missing, and how to install it.
//!
//! `cargo xtask doctor` only reports. The main job (`image`, `build`, `test`) calls
//! [`ensure`], which installs missing Debian packages itself on a Debian-family host (saying
//! what it installs) and elsewhere stops with the exact command.

use std::path::Path;
use std::process::Command;

/// One thing the host must provide.
#[derive(Debug, Clone, Copy)]
pub struct Requirement {
    /// What we run or read, as a path or a command name on PATH.
    pub probe: &'static str,
    /// The Debian package that provides it.
    pub package: &'static str,
    /// Why the project needs it.
    pub why: &'static str,
}

/// Which jobs need which requirements. `Need::All` is what `doctor` and CI check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Fetch,
    Build,
    Image,
    Run,
    Test,
    /// `cargo xtask bench`: the Debian peer and the kernel floor.
    Bench,
    /// `cargo xtask compat`: docker-py's suite (its credential-store tests run over `pass`).
    Compat,
}

const R: &[(Need, Requirement)] = &[
    (
        Need::Fetch,
        Requirement {
            probe: "apt-get",
            package: "apt",
            why: "fetch sources from Debian's archive",
        },
    ),
    (
        Need::Fetch,
        Requirement {
            probe: "dpkg-deb",
            package: "dpkg",
            why: "unpack Debian binary packages",
        },
    ),
    (
        Need::Build,
        Requirement {
            probe: "make",
            package: "make",
            why: "kernel and busybox builds",
        },
    ),
    (
        Need::Build,
        Requirement {
            probe: "gcc",
            package: "gcc",
            why: "kernel build",
        },
    ),
    (
        Need::Build,
        Requirement {
            probe: "musl-gcc",
            package: "musl-tools",
            why: "static C packages (busybox)",
        },
    ),
    (
        Need::Build,
        Requirement {
            probe: "bc",
            package: "bc",
            why: "kernel build",
        },
    ),
    (
        Need::Build,
        Requirement {
            probe: "flex",
            package: "flex",
            why: "kernel build (kconfig)",
        },
    ),
    (
        Need::Build,
        Requirement {
            probe: "bison",
            package: "bison",
            why: "kernel build (kconfig)",
        },
    ),
    (
        Need::Build,
        Requirement {
            probe: "/usr/include/libelf.h",
            package: "libelf-dev",
            why: "kernel build (objtool)",
        },
    ),
    (
        Need::Build,
        Requirement {
            probe: "/usr/include/openssl/ssl.h",
            package: "libssl-dev",
            why: "kernel build (sign-file, certs)",
        },
    ),
    (
        Need::Build,
        Requirement {
            probe: "xz",
            package: "xz-utils",
            why: "unpack the kernel source",
        },
    ),
    (
        Need::Build,
        Requirement {
            probe: "bzip2",
            package: "bzip2",
            why: "unpack busybox",
        },
    ),
    (
        Need::Build,
        Requirement {
            probe: "cpio",
            package: "cpio",
            why: "kernel build (kheaders)",
        },
    ),
    (
        Need::Build,
        Requirement {
            probe: "/usr/include/linux/version.h",
            package: "linux-libc-dev",
            why: "kernel headers for musl builds (busybox)",
        },
    ),
    (
        Need::Image,
        Requirement {
            probe: "mke2fs",
            package: "e2fsprogs",
            why: "the ext4 data partition (mke2fs -d, no root)",
        },
    ),
    (
        Need::Image,
        Requirement {
            probe: "grub-mkimage",
            package: "grub-common",
            why: "boot loader images for BIOS and UEFI",
        },
    ),
    (
        Need::Image,
        Requirement {
            probe: "/usr/lib/grub/i386-pc/boot.img",
            package: "grub-pc-bin",
            why: "legacy BIOS boot",
        },
    ),
    (
        Need::Image,
        Requirement {
            probe: "/usr/lib/grub/x86_64-efi/linux.mod",
            package: "grub-efi-amd64-bin",
            why: "UEFI boot",
        },
    ),
    (
        Need::Image,
        Requirement {
            probe: "mformat",
            package: "mtools",
            why: "FAT images: the ESP and the ISO's EFI image",
        },
    ),
    (
        Need::Image,
        Requirement {
            probe: "xorriso",
            package: "xorriso",
            why: "the hybrid ISO (El Torito)",
        },
    ),
    (
        Need::Run,
        Requirement {
            probe: "qemu-system-x86_64",
            package: "qemu-system-x86",
            why: "boot images",
        },
    ),
    (
        Need::Run,
        Requirement {
            probe: "/usr/share/OVMF/OVMF_CODE_4M.fd",
            package: "ovmf",
            why: "UEFI firmware for QEMU",
        },
    ),
    (
        Need::Run,
        Requirement {
            probe: "qemu-img",
            package: "qemu-utils",
            why: "check and convert disk images",
        },
    ),
    (
        Need::Test,
        Requirement {
            probe: "sgdisk",
            package: "gdisk",
            why: "verify the GPT of disk images in tests",
        },
    ),
    (
        Need::Test,
        Requirement {
            probe: "fsck.vfat",
            package: "dosfstools",
            why: "check the ESP in tests",
        },
    ),
    (
        Need::Test,
        Requirement {
            probe: "docker-registry",
            package: "docker-registry",
            why: "a real registry on 127.0.0.1 for tests",
        },
    ),
    (
        Need::Test,
        Requirement {
            probe: "containerd",
            package: "containerd",
            why: "the containerd shim's e2e test runs its own containerd and ctr",
        },
    ),
    (
        Need::Test,
        Requirement {
            probe: "protoc",
            package: "protobuf-compiler",
            why: "the e2e tests' CRI client (k8s-cri) compiles kubelet's protos",
        },
    ),
    (
        Need::Test,
        Requirement {
            probe: "ssh",
            package: "openssh-client",
            why: "log into test VMs",
        },
    ),
    (
        Need::Test,
        Requirement {
            probe: "ssh-keygen",
            package: "openssh-client",
            why: "keys for test VMs",
        },
    ),
    (
        Need::Bench,
        Requirement {
            probe: "debootstrap",
            package: "debootstrap",
            why: "bench: build the Debian peer from Debian's archive",
        },
    ),
    (
        Need::Bench,
        Requirement {
            probe: "/bin/busybox",
            package: "busybox-static",
            why: "bench: the kernel floor's trivial init and the busybox test image",
        },
    ),
    (
        Need::Compat,
        Requirement {
            probe: "pass",
            package: "pass",
            why: "compat: the password store docker-py's credential-store tests use",
        },
    ),
    (
        Need::Compat,
        Requirement {
            probe: "gpg",
            package: "gnupg",
            why: "compat: the GPG key of docker-py's credential-store tests",
        },
    ),
    (
        Need::Compat,
        Requirement {
            probe: "/bin/busybox",
            package: "busybox-static",
            why: "compat: the image standing in for the suite's alpine and busybox",
        },
    ),
    (
        Need::Test,
        Requirement {
            probe: "openssl",
            package: "openssl",
            why: "TLS certificates in tests",
        },
    ),
];

/// The requirements for a set of jobs.
pub fn requirements(needs: &[Need]) -> Vec<Requirement> {
    R.iter()
        .filter(|(n, _)| needs.contains(n))
        .map(|(_, r)| *r)
        .collect()
}

pub fn all_needs() -> Vec<Need> {
    vec![
        Need::Fetch,
        Need::Build,
        Need::Image,
        Need::Run,
        Need::Test,
        Need::Bench,
    ]
}

pub fn is_present(r: &Requirement) -> bool {
    if r.probe.starts_with('/') {
        return Path::new(r.probe).exists();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    // sbin is not on a normal user's PATH on Debian, but mke2fs lives there.
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(Into::into))
        .any(|d| d.join(r.probe).is_file())
}

pub fn missing(needs: &[Need]) -> Vec<Requirement> {
    requirements(needs)
        .into_iter()
        .filter(|r| !is_present(r))
        .collect()
}

fn install_command<S: AsRef<str>>(packages: &[S]) -> String {
    let names: Vec<&str> = packages.iter().map(AsRef::as_ref).collect();
    format!(
        "sudo apt-get install -y --allow-downgrades {}",
        names.join(" ")
    )
}

fn is_debian_family() -> bool {
    std::fs::read_to_string("/etc/os-release")
        .map(|s| {
            s.lines().any(|l| {
                (l.starts_with("ID=") || l.starts_with("ID_LIKE=")) && l.contains("debian")
            })
        })
        .unwrap_or(false)
}

/// `cargo xtask doctor`: a report of every requirement. Returns false when something is missing.
pub fn report() -> bool {
    let mut ok = true;
    for r in requirements(&all_needs()) {
        let present = is_present(&r);
        ok &= present;
        println!(
            "{} {:38} {:20} {}",
            if present { "ok     " } else { "MISSING" },
            r.probe,
            r.package,
            r.why
        );
    }
    let missing = missing(&all_needs());
    if missing.is_empty() {
        println!("\nEverything the project needs is installed.");
    } else {
        let mut pkgs: Vec<&str> = missing.iter().map(|r| r.package).collect();
        pkgs.sort();
        pkgs.dedup();
        println!(
            "\nMissing. Install with:\n  {}",
            install_command(&with_matching_qemu_utils(pkgs))
        );
    }
    ok
}

/// `cargo xtask doctor`'s options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Args {
    /// Also install the SPDX validator (`pyspdxtools`, PyPI's spdx-tools) into its venv under
    /// the cache, where the publish test finds it (CI does this).
    #[arg(long)]
    pub spdx_tools: bool,
}

/// `cargo xtask doctor`: the report, failing when something is missing.
pub fn main(layout: &crate::layout::Layout, args: &Args) -> anyhow::Result<()> {
    let ok = report();
    let spdx = if args.spdx_tools {
        Some(crate::sbom::validate::ensure(&layout.cache)?)
    } else {
        crate::sbom::validate::installed(&layout.cache)
    };
    match spdx {
        Some(tool) => println!("ok      pyspdxtools ({})", tool.display()),
        None => println!(
            "absent  pyspdxtools (the publish test installs it; or `cargo xtask doctor \
             --spdx-tools`)"
        ),
    }
    if ok {
        Ok(())
    } else {
        anyhow::bail!("some host tools are missing (see above)")
    }
}

/// Makes sure the host has what these jobs need: installs it with apt on a Debian-family
/// host, or stops with the command to run.
pub fn ensure(needs: &[Need]) -> anyhow::Result<()> {
    let missing = missing(needs);
    if missing.is_empty() {
        return Ok(());
    }
    let mut pkgs: Vec<&str> = missing.iter().map(|r| r.package).collect();
    pkgs.sort();
    pkgs.dedup();
    if !is_debian_family() {
        anyhow::bail!(
            "missing host tools ({}); on Debian: {}",
            pkgs.join(", "),
            install_command(&pkgs)
        );
    }
    // Every tool the project uses that is here now must still be here after apt: it may
    // remove a package to satisfy another (it once removed qemu-utils for qemu-system-x86).
    let present_before: Vec<Requirement> = requirements(&all_needs())
        .into_iter()
        .filter(is_present)
        .collect();
    let root = rustix_is_root();
    eprintln!("Installing missing host packages: {}", pkgs.join(" "));
    let apt = || {
        if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        }
    };
    // The QEMU pin is worked out again for each attempt: on a fresh machine the package
    // lists are empty until the update, and an unpinned qemu-utils is what apt resolves by
    // removing it (see with_matching_qemu_utils).
    let install = || -> anyhow::Result<(bool, Vec<String>)> {
        let pinned = with_matching_qemu_utils(pkgs.clone());
        let status = apt()
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args([
                "install",
                "-y",
                "--no-install-recommends",
                "--allow-downgrades",
            ])
            .args(&pinned)
            .status()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot run apt-get: {e}; install by hand: {}",
                    install_command(&pinned)
                )
            })?;
        Ok((status.success(), pinned))
    };
    if !install()?.0 {
        // A stale package list is the usual reason: refresh once and try again.
        let _ = apt().arg("update").status();
        let (ok, pinned) = install()?;
        if !ok {
            anyhow::bail!(
                "apt-get could not install {}; try: {}",
                pinned.join(" "),
                install_command(&pinned)
            );
        }
    }
    let still = self::missing(needs);
    if !still.is_empty() {
        anyhow::bail!(
            "still missing after install: {}",
            still.iter().map(|r| r.probe).collect::<Vec<_>>().join(", ")
        );
    }
    let lost: Vec<&str> = present_before
        .iter()
        .filter(|r| !is_present(r))
        .map(|r| r.probe)
        .collect();
    if !lost.is_empty() {
        anyhow::bail!(
            "apt removed tools the project needs while installing {}: {} (see `cargo xtask \
                doctor`)",
            pkgs.join(" "),
            lost.join(", ")
        );
    }
    Ok(())
}

/// QEMU's Debian packages must come from one version: a newer backported `qemu-utils`
/// (qemu-img) breaks the archive's `qemu-system-common`, and apt's answer to installing
/// `qemu-system-x86` alone is to remove qemu-utils, so qemu-img goes missing. When
/// qemu-system-x86 is to be installed, name qemu-utils at its candidate version as well, so
/// one transaction keeps both tools (a downgrade where a backport was installed).
fn with_matching_qemu_utils(pkgs: Vec<&str>) -> Vec<String> {
    let candidate = if pkgs.contains(&"qemu-system-x86") {
        apt_candidate("qemu-system-x86")
    } else {
        None
    };
    pin_qemu_utils(pkgs, candidate.as_deref())
}

/// `pkgs` with qemu-utils named at `candidate` (qemu-system-x86's) when qemu-system-x86 is
/// among them; unpinned when apt knows no candidate yet.
fn pin_qemu_utils(mut pkgs: Vec<&str>, candidate: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if pkgs.contains(&"qemu-system-x86") {
        pkgs.retain(|p| *p != "qemu-utils");
        match candidate {
            Some(v) => out.push(format!("qemu-utils={v}")),
            None => out.push("qemu-utils".into()),
        }
    }
    out.extend(pkgs.into_iter().map(String::from));
    out
}

/// The version apt would install for `package` (`apt-cache policy`'s "Candidate:").
fn apt_candidate(package: &str) -> Option<String> {
    let out = Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .ok()?;
    parse_candidate(&String::from_utf8_lossy(&out.stdout))
}

fn parse_candidate(policy: &str) -> Option<String> {
    let v = policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))?
        .trim();
    (!v.is_empty() && v != "(none)").then(|| v.to_string())
}

fn rustix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_requirement_names_a_package_and_a_reason() {
        for r in requirements(&all_needs()) {
            assert!(!r.package.is_empty() && !r.why.is_empty(), "{r:?}");
        }
    }

    #[test]
    fn a_missing_tool_is_detected() {
        let fake = Requirement {
            probe: "/nonexistent/axion-tool",
            package: "x",
            why: "y",
        };
        assert!(!is_present(&fake));
        let real = Requirement {
            probe: "sh",
            package: "dash",
            why: "y",
        };
        assert!(is_present(&real));
    }

    #[test]
    fn qemu_utils_is_pinned_only_beside_qemu_system() {
        let v = "1:7.2+dfsg-7+deb12u18+b3";
        assert_eq!(
            pin_qemu_utils(vec!["ovmf", "qemu-system-x86", "qemu-utils"], Some(v)),
            [
                format!("qemu-utils={v}"),
                "ovmf".into(),
                "qemu-system-x86".into()
            ]
        );
        // qemu-img alone missing: the archive's candidate matches what is installed.
        assert_eq!(pin_qemu_utils(vec!["qemu-utils"], Some(v)), ["qemu-utils"]);
        assert_eq!(
            pin_qemu_utils(vec!["qemu-system-x86"], None),
            ["qemu-utils", "qemu-system-x86"]
        );
    }

    #[test]
    fn qemu_utils_follows_qemu_system_version() {
        let policy =
            "qemu-system-x86:\n  Installed: (none)\n  Candidate: 1:7.2+dfsg-7+deb12u18+b3\n";
        assert_eq!(
            parse_candidate(policy).as_deref(),
            Some("1:7.2+dfsg-7+deb12u18+b3")
        );
        assert_eq!(parse_candidate("x:\n  Candidate: (none)\n"), None);
        // Without qemu-system-x86 in the set, nothing is pinned.
        assert_eq!(
            with_matching_qemu_utils(vec!["qemu-utils", "mtools"]),
            ["qemu-utils", "mtools"]
        );
    }
}
