//! `kbuild`: Linux from source, everything built in.
//!
//! 1. Unpack: a `.deb` source (Debian's linux-source-X) is unpacked with `dpkg-deb -x` and the
//!    `usr/src/linux-source-*.tar.*` inside it is unpacked; a tarball is unpacked directly.
//! 2. Configure: `make <base>` (tinyconfig or defconfig), the recipe's fragment appended to
//!    `.config`, `make olddefconfig`. Then every option of the fragment is checked against
//!    the result ([`check_config`]): an option Kconfig dropped (a missing dependency, a
//!    renamed symbol) fails the build with its name. No option may be `=m`, and
//!    `CONFIG_MODULES` must be off: the image has no modules.
//! 3. Build: `make -jN bzImage` in the source tree, with `-ffile-prefix-map` so the scratch
//!    path does not reach the image, and the fixed `KBUILD_BUILD_*` of the build environment.
//! 4. Stage: `/boot/vmlinuz` (bzImage), `/boot/config` (the final .config); the recipe's
//!    license files go to /usr/share/licenses/linux/.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::BuildCtx;
use crate::recipe::KbuildSpec;

/// Where the source appears to the compiler (instead of the scratch directory).
const SOURCE_PREFIX: &str = "/usr/src/linux";

pub fn build(ctx: &BuildCtx, spec: &KbuildSpec) -> Result<()> {
    let Some(source) = ctx.sources.first() else {
        bail!(
            "{}: a kbuild recipe needs a [[source]] with the kernel",
            ctx.recipe.path.display()
        );
    };
    let src = unpack_kernel(ctx, source)?;
    ctx.set_source_dir(&src)?;

    let base = spec.base.as_str();
    if base != "tinyconfig" && base != "defconfig" {
        bail!(
            "{}: key 'build.base': '{base}' is neither tinyconfig nor defconfig",
            ctx.recipe.path.display()
        );
    }
    let make = |args: &[&str]| {
        let mut c = ctx.command("make", &src);
        c.arg("ARCH=x86_64").args(args);
        c
    };
    ctx.run(&format!("make {base}"), &mut make(&[base]))?;
    let fragment_path = ctx.recipe.dir.join(&spec.config);
    let fragment = std::fs::read_to_string(&fragment_path)
        .with_context(|| format!("cannot read {}", fragment_path.display()))?;
    let dot_config = src.join(".config");
    let mut config = std::fs::read_to_string(&dot_config)
        .with_context(|| format!("cannot read {}", dot_config.display()))?;
    config.push_str("\n# ---- axion fragment: ");
    config.push_str(&spec.config);
    config.push('\n');
    config.push_str(&fragment);
    std::fs::write(&dot_config, config)?;
    ctx.run("make olddefconfig", &mut make(&["olddefconfig"]))?;
    let result = std::fs::read_to_string(&dot_config)?;
    let problems = check_config(&parse_config(&fragment), &parse_config(&result));
    if !problems.is_empty() {
        let text = problems.join("\n  ");
        ctx.note(&format!("== config check failed:\n  {text}\n"));
        bail!(
            "{}: {} option(s) of the fragment did not stick after olddefconfig (a missing \
             dependency or a symbol this kernel does not have):\n  {text}",
            fragment_path.display(),
            problems.len()
        );
    }

    let jobs = format!("-j{}", ctx.jobs);
    let kcflags = format!(
        "KCFLAGS=-ffile-prefix-map={}={SOURCE_PREFIX}",
        src.display()
    );
    let kaflags = format!(
        "KAFLAGS=-ffile-prefix-map={}={SOURCE_PREFIX}",
        src.display()
    );
    ctx.run(
        "make bzImage",
        &mut make(&[&jobs, &kcflags, &kaflags, "bzImage"]),
    )?;

    let boot = ctx.tree.join("boot");
    std::fs::create_dir_all(&boot)?;
    let bz = src.join("arch/x86/boot/bzImage");
    std::fs::copy(&bz, boot.join("vmlinuz"))
        .with_context(|| format!("cannot copy {}", bz.display()))?;
    std::fs::copy(&dot_config, boot.join("config"))?;
    Ok(())
}

/// Unpacks the kernel source and returns its top directory.
fn unpack_kernel(ctx: &BuildCtx, source: &Path) -> Result<PathBuf> {
    let is_deb = ctx
        .recipe
        .spec
        .sources
        .first()
        .is_some_and(|s| s.file.ends_with(".deb"));
    if !is_deb {
        return ctx.unpack(source, "src");
    }
    let deb = ctx.work.join("deb");
    let mut c = ctx.command("dpkg-deb", &ctx.work);
    c.arg("-x").arg(source).arg(&deb);
    ctx.run("dpkg-deb -x", &mut c)?;
    let usr_src = deb.join("usr/src");
    let tarball = std::fs::read_dir(&usr_src)
        .with_context(|| format!("{}: the .deb has no usr/src", source.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-source-") && n.contains(".tar"))
        })
        .with_context(|| {
            format!(
                "{}: no usr/src/linux-source-*.tar.* inside",
                source.display()
            )
        })?;
    let src = ctx.unpack(&tarball, "src")?;
    // The tarball is 140 MB; the unpacked tree is what we need.
    let _ = std::fs::remove_dir_all(&deb);
    Ok(src)
}

/// A parsed .config: symbol → value, where "n" stands for `# CONFIG_X is not set`.
pub fn parse_config(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# ") {
            if let Some(sym) = rest.strip_suffix(" is not set") {
                if sym.starts_with("CONFIG_") && !sym.contains(' ') {
                    out.insert(sym.to_owned(), "n".to_owned());
                }
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.starts_with("CONFIG_") {
                out.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    out
}

/// What is wrong with `result` given the `fragment` that was asked for: each requested
/// option with another value, any module, and modules support itself.
pub fn check_config(
    fragment: &BTreeMap<String, String>,
    result: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (k, want) in fragment {
        let got = result.get(k).map(String::as_str).unwrap_or("n");
        if got != want {
            let got = if result.contains_key(k) {
                got.to_owned()
            } else {
                "not set (unknown or dependency missing)".into()
            };
            problems.push(format!("{k}: asked {want}, got {got}"));
        }
    }
    for (k, v) in result {
        if v == "m" {
            problems.push(format!("{k}=m: everything must be built in"));
        }
    }
    if result.get("CONFIG_MODULES").is_some_and(|v| v == "y") {
        problems.push(
            "CONFIG_MODULES=y: the image has no modules; add '# CONFIG_MODULES is not set'".into(),
        );
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_set_unset_and_string_options() {
        let c = parse_config(
            "# comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_S=\"-axion\"\n\nCONFIG_N=64\n",
        );
        assert_eq!(c["CONFIG_A"], "y");
        assert_eq!(c["CONFIG_B"], "n");
        assert_eq!(c["CONFIG_S"], "\"-axion\"");
        assert_eq!(c["CONFIG_N"], "64");
        assert!(!c.contains_key("comment"));
    }

    #[test]
    fn reports_options_that_did_not_stick_and_modules() {
        let frag = parse_config(
            "CONFIG_A=y\n# CONFIG_MODULES is not \
             set\nCONFIG_GONE=y\nCONFIG_OFF=y\n# CONFIG_B is not set\n",
        );
        let result = parse_config("CONFIG_A=y\n# CONFIG_OFF is not set\nCONFIG_B=y\nCONFIG_M=m\n");
        let p = check_config(&frag, &result);
        assert!(
            p.iter()
                .any(|l| l.starts_with("CONFIG_GONE: asked y, got not set")),
            "{p:?}"
        );
        assert!(p.iter().any(|l| l == "CONFIG_OFF: asked y, got n"), "{p:?}");
        assert!(p.iter().any(|l| l == "CONFIG_B: asked n, got y"), "{p:?}");
        assert!(p.iter().any(|l| l.starts_with("CONFIG_M=m")), "{p:?}");
        assert!(!p.iter().any(|l| l.starts_with("CONFIG_A")), "{p:?}");
        // An unset MODULES that was asked unset is fine.
        assert_eq!(p.len(), 4, "{p:?}");
    }

    #[test]
    fn the_committed_fragment_asks_for_no_modules_and_names_every_group() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let text =
            std::fs::read_to_string(root.join("recipes/linux/container-host.config")).unwrap();
        let f = parse_config(&text);
        assert_eq!(f.get("CONFIG_MODULES").map(String::as_str), Some("n"));
        assert!(!f.values().any(|v| v == "m"));
        for must in [
            "CONFIG_VIRTIO_NET",
            "CONFIG_VMXNET3",
            "CONFIG_VMWARE_PVSCSI",
            "CONFIG_OVERLAY_FS",
            "CONFIG_CGROUP_BPF",
            "CONFIG_NFT_COMPAT",
            "CONFIG_EFI_STUB",
            "CONFIG_INPUT_EVDEV",
        ] {
            assert_eq!(f.get(must).map(String::as_str), Some("y"), "{must}");
        }
    }
}
