//! The initramfs: the root filesystem as a newc cpio archive, compressed with zstd.
//!
//! Written in Rust rather than with `cpio` so that it needs no root (device nodes, owners)
//! and is reproducible: inode numbers are given in path order, every owner is 0:0, every
//! mtime is `SOURCE_DATE_EPOCH`, devices are 0. The kernel unpacks it with RD_ZSTD.

use std::io::{self, Read, Write};

use crate::rootfs::{Node, Rootfs};

/// zstd level: high ratio (the OVA size goal), still a few seconds for a few MB.
pub const ZSTD_LEVEL: i32 = 19;

// The fields of a cpio newc header, in the header's order: a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn header(
    w: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u64,
    size: u64,
    rdev: (u32, u32),
    name: &str,
) -> io::Result<u64> {
    let namesize = name.len() + 1;
    let h = format!(
        "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
        ino, mode, 0, 0, nlink, mtime as u32, size as u32, 0, 0, rdev.0, rdev.1, namesize, 0
    );
    w.write_all(h.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    let len = (h.len() + namesize) as u64;
    let pad = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..pad as usize])?;
    Ok(len + pad)
}

/// Writes the uncompressed newc archive of `fs` to `w`.
pub fn write_cpio(fs: &Rootfs, mut w: impl Write) -> io::Result<()> {
    let mut ino = 0u32;
    for e in fs.entries.values() {
        ino += 1;
        match &e.node {
            Node::Dir => {
                header(&mut w, ino, e.mode(), 2, fs.epoch, 0, (0, 0), &e.path)?;
            }
            Node::Symlink(target) => {
                header(
                    &mut w,
                    ino,
                    e.mode(),
                    1,
                    fs.epoch,
                    target.len() as u64,
                    (0, 0),
                    &e.path,
                )?;
                w.write_all(target.as_bytes())?;
                pad4(&mut w, target.len() as u64)?;
            }
            Node::CharDev { major, minor } => {
                header(
                    &mut w,
                    ino,
                    e.mode(),
                    1,
                    fs.epoch,
                    0,
                    (*major, *minor),
                    &e.path,
                )?;
            }
            Node::File { source, size } => {
                if *size > u32::MAX as u64 {
                    return Err(io::Error::other(format!(
                        "{}: larger than 4 GiB, which newc cannot hold",
                        source.display()
                    )));
                }
                header(&mut w, ino, e.mode(), 1, fs.epoch, *size, (0, 0), &e.path)?;
                let f = std::fs::File::open(source).map_err(|err| {
                    io::Error::new(
                        err.kind(),
                        format!("cannot read {}: {err}", source.display()),
                    )
                })?;
                let copied = io::copy(&mut f.take(*size), &mut w)?;
                if copied != *size {
                    return Err(io::Error::other(format!(
                        "{} changed size while being read",
                        source.display()
                    )));
                }
                pad4(&mut w, *size)?;
            }
        }
    }
    header(&mut w, 0, 0, 1, 0, 0, (0, 0), "TRAILER!!!")?;
    Ok(())
}

fn pad4(w: &mut impl Write, len: u64) -> io::Result<()> {
    let pad = ((4 - len % 4) % 4) as usize;
    w.write_all(&[0u8; 3][..pad])
}

/// Writes the zstd-compressed archive (what the kernel gets as `initrd`).
pub fn write(fs: &Rootfs, w: impl Write) -> io::Result<()> {
    let mut enc = zstd::stream::Encoder::new(w, ZSTD_LEVEL)?;
    enc.include_checksum(true)?;
    write_cpio(fs, io::BufWriter::with_capacity(1 << 20, &mut enc))?;
    enc.finish()?.flush()
}

/// One entry of a parsed archive (for tests and checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    pub name: String,
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

/// Parses a newc archive back (up to the trailer).
pub fn parse_cpio(mut b: &[u8]) -> io::Result<Vec<CpioEntry>> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
    let mut out = Vec::new();
    let total = b.len();
    loop {
        if b.len() < 110 || &b[..6] != b"070701" {
            return Err(bad("bad newc header"));
        }
        let field = |i: usize| {
            u32::from_str_radix(
                std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap_or("x"),
                16,
            )
        };
        let f: Vec<u32> = (0..13)
            .map(field)
            .collect::<Result<_, _>>()
            .map_err(|_| bad("bad hex field"))?;
        let namesize = f[11] as usize;
        let name = std::str::from_utf8(&b[110..110 + namesize - 1])
            .map_err(|_| bad("name"))?
            .to_owned();
        let mut off = 110 + namesize;
        off += (4 - ((total - b.len() + off) % 4)) % 4;
        let size = f[6] as usize;
        let data = b[off..off + size].to_vec();
        off += size;
        off += (4 - ((total - b.len() + off) % 4)) % 4;
        b = &b[off..];
        if name == "TRAILER!!!" {
            return Ok(out);
        }
        out.push(CpioEntry {
            name,
            ino: f[0],
            mode: f[1],
            uid: f[2],
            gid: f[3],
            nlink: f[4],
            mtime: f[5],
            rdev: (f[9], f[10]),
            data,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootfs::tests::fake_package;
    use crate::rootfs::Rootfs;

    #[test]
    fn round_trip_through_zstd_and_host_cpio() {
        let dir = tempfile::tempdir().unwrap();
        let a = fake_package(dir.path(), "busybox");
        let fs = Rootfs::assemble(&[a], &[], 1_700_000_000).unwrap();
        let mut z = Vec::new();
        write(&fs, &mut z).unwrap();
        let raw = zstd::decode_all(&z[..]).unwrap();
        let entries = parse_cpio(&raw).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            fs.entries.keys().map(String::as_str).collect::<Vec<_>>()
        );
        let bb = entries.iter().find(|e| e.name == "bin/busybox").unwrap();
        assert_eq!(
            (bb.mode, bb.uid, bb.gid, bb.mtime, bb.nlink),
            (0o104755, 0, 0, 1_700_000_000, 1)
        );
        assert_eq!(bb.data, b"#!busybox\n");
        let console = entries.iter().find(|e| e.name == "dev/console").unwrap();
        assert_eq!((console.mode, console.rdev), (0o020600, (5, 1)));
        assert_eq!(
            entries.iter().find(|e| e.name == "init").unwrap().data,
            b"/sbin/init"
        );
        // Inode numbers 1.. in path order.
        assert!(entries
            .iter()
            .enumerate()
            .all(|(i, e)| e.ino == i as u32 + 1));

        // The host's cpio agrees.
        let Ok(mut child) = std::process::Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            test_skip::skip("the host has no `cpio` to cross-check the archive");
            return;
        };
        child.stdin.take().unwrap().write_all(&raw).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            listing.lines().any(|l| l.starts_with("-rwsr-xr-x")
                && l.contains(" root ")
                && l.ends_with("bin/busybox")),
            "{listing}"
        );
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("lrwxrwxrwx") && l.ends_with("init -> /sbin/init")),
            "{listing}"
        );
        assert_eq!(listing.lines().count(), fs.entries.len());
    }
}
