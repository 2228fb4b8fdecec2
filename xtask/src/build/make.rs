//! `make`: C packages with a Kconfig-style build (busybox), static against Debian's musl.
//!
//! 1. Unpack the first source (a tarball) into the scratch directory; copy the recipe's
//!    `files` into it; with `configure`, run `./configure --host=x86_64-linux-musl
//!    --prefix=/usr` plus the recipe's arguments (autoconf packages such as dropbear).
//! 2. With `config`: copy it to `.config` and run `make oldconfig` (stdin closed: the kept
//!    config must be complete, so nothing is asked).
//! 3. `make -jN <targets>` (default `all`) with `CC=musl-gcc HOSTCC=gcc` and
//!    `EXTRA_CFLAGS` = the kernel headers (musl-gcc's include path has none of its own: a
//!    directory of links to the host's linux, asm and asm-generic headers) and
//!    `-ffile-prefix-map` so the scratch path does not reach the binary.
//! 4. `make install` with `CONFIG_PREFIX` and `DESTDIR` both the staging tree (busybox
//!    honours the first: /bin/busybox plus relative links for every applet), or, when the
//!    recipe has `install`, just those files copied to their places (mode 0755).
//! 5. Every ELF executable in the tree must be static (no program interpreter).

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::BuildCtx;
use crate::recipe::MakeSpec;

pub fn build(ctx: &BuildCtx, spec: &MakeSpec) -> Result<()> {
    let Some(source) = ctx.sources.first() else {
        bail!(
            "{}: a make recipe needs a [[source]] with the tarball",
            ctx.recipe.path.display()
        );
    };
    let src = ctx.unpack(source, "src")?;
    ctx.set_source_dir(&src)?;
    let include = ctx.work.join("kernel-headers");
    std::fs::create_dir_all(&include)?;
    for (name, target) in [
        ("linux", "/usr/include/linux"),
        ("asm-generic", "/usr/include/asm-generic"),
        ("mtd", "/usr/include/mtd"),
        ("asm", "/usr/include/x86_64-linux-gnu/asm"),
    ] {
        if Path::new(target).is_dir() {
            std::os::unix::fs::symlink(target, include.join(name))?;
        } else if name != "mtd" {
            bail!("{target} is missing: install linux-libc-dev (kernel headers for musl builds)");
        }
    }
    for (name, from) in &spec.files {
        let from = ctx.recipe.dir.join(from);
        std::fs::copy(&from, src.join(name))
            .with_context(|| format!("cannot copy {} into the source tree", from.display()))?;
    }
    let cflags = format!(
        "-Os -isystem {} -ffile-prefix-map={}=/usr/src/{}",
        include.display(),
        src.display(),
        ctx.recipe.name()
    );
    if let Some(extra) = &spec.configure {
        let mut c = ctx.command("./configure", &src);
        c.args([
            "--host=x86_64-linux-musl",
            "--build=x86_64-linux-gnu",
            "--prefix=/usr",
            "CC=musl-gcc",
        ])
        .arg(format!("CFLAGS={cflags}"))
        .arg("LDFLAGS=-static -s")
        .args(extra);
        ctx.run("configure", &mut c)?;
    }
    let mut vars = vec![
        "CC=musl-gcc".to_owned(),
        "HOSTCC=gcc".to_owned(),
        format!("EXTRA_CFLAGS={cflags}"),
    ];
    vars.extend(spec.make_args.iter().cloned());
    let make = |args: &[&str]| {
        let mut c = ctx.command("make", &src);
        c.args(&vars).args(args);
        c
    };
    if let Some(config) = &spec.config {
        let from = ctx.recipe.dir.join(config);
        std::fs::copy(&from, src.join(".config"))
            .with_context(|| format!("cannot copy {}", from.display()))?;
        ctx.run("make oldconfig", &mut make(&["oldconfig"]))?;
    }
    let jobs = format!("-j{}", ctx.jobs);
    let mut targets: Vec<&str> = spec.targets.iter().map(String::as_str).collect();
    if targets.is_empty() {
        targets.push("all");
    }
    let mut args = vec![jobs.as_str()];
    args.extend(&targets);
    ctx.run(&format!("make {}", targets.join(" ")), &mut make(&args))?;
    if spec.install.is_empty() {
        let prefix = format!("CONFIG_PREFIX={}", ctx.tree.display());
        let destdir = format!("DESTDIR={}", ctx.tree.display());
        ctx.run("make install", &mut make(&[&prefix, &destdir, "install"]))?;
    } else {
        for (built, to) in &spec.install {
            let from = src.join(built);
            let dest = ctx.tree.join(to.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap_or(&ctx.tree))?;
            std::fs::copy(&from, &dest).with_context(|| {
                format!("cannot install {} (named in build.install)", from.display())
            })?;
            std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        }
    }
    check_static(&ctx.tree)
}

/// Fails naming any dynamically linked ELF executable in the tree.
pub fn check_static(tree: &Path) -> Result<()> {
    for e in walkdir::WalkDir::new(tree) {
        let e = e?;
        if !e.file_type().is_file() {
            continue;
        }
        let mut magic = [0u8; 4];
        let is_elf = std::fs::File::open(e.path())
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok()
            && &magic == b"\x7fELF";
        if is_elf && !super::is_static_elf(e.path())? {
            bail!(
                "{} is dynamically linked; packages must be static (musl-gcc -static)",
                e.path().display()
            );
        }
    }
    Ok(())
}
