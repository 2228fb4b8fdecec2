//! The image write of `axion-update install` on a regular file standing in for the disk.

use super::*;
use ruzstd::encoding::{compress_to_vec, CompressionLevel};

/// A 5 MiB "disk": a head with a marker (the partition table's place), zeros, data, zeros.
fn image() -> Vec<u8> {
    let mut d = vec![0u8; 5 * HEAD];
    d[..8].copy_from_slice(b"HEADMARK");
    d[510] = 0x55;
    d[511] = 0xaa;
    for (i, b) in d[2 * HEAD + 100..3 * HEAD].iter_mut().enumerate() {
        *b = (i % 251) as u8 | 1;
    }
    d
}

fn manifest_of(d: &[u8]) -> Manifest {
    Manifest {
        profile: "qemu".into(),
        version: "0.1.0".into(),
        file: "disk.raw.zst".into(),
        size: d.len() as u64,
        sha256: hex::encode(Sha256::digest(d)),
    }
}

/// A target file full of old bytes (0xee), larger than the image.
fn old_disk() -> (tempfile::NamedTempFile, Target) {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().write_all_at(&vec![0xee; 7 * HEAD], 0).unwrap();
    let file = File::options().write(true).open(f.path()).unwrap();
    (f, Target { file, block: false })
}

#[test]
fn the_image_lands_byte_for_byte_and_nothing_beyond_it_changes() {
    let d = image();
    let (f, t) = old_disk();
    write_image(
        &compress_to_vec(&d[..], CompressionLevel::Fastest)[..],
        &t,
        &manifest_of(&d),
    )
    .unwrap();
    let got = std::fs::read(f.path()).unwrap();
    assert_eq!(got.len(), 7 * HEAD, "the disk was not grown or shrunk");
    assert!(got[..d.len()] == d[..], "the image differs on the disk");
    assert!(
        got[d.len()..].iter().all(|&b| b == 0xee),
        "beyond the image"
    );
}

#[test]
fn a_damaged_image_is_refused_and_leaves_no_partition_table() {
    let d = image();
    let good = manifest_of(&d);
    let z = compress_to_vec(&d[..], CompressionLevel::Fastest);
    let mut wrong_hash = good.clone();
    wrong_hash.sha256 = "00".repeat(32);
    let mut too_big = good.clone();
    too_big.size += 512;
    let mut too_small = good.clone();
    too_small.size -= 512;
    // (stream, manifest, error, refused before any write)
    let cases: Vec<(Vec<u8>, &Manifest, &str, bool)> = vec![
        (z.clone(), &wrong_hash, "sha256", false),
        (z.clone(), &too_big, "truncated", false),
        (z.clone(), &too_small, "longer than", false),
        (z[..z.len() / 2].to_vec(), &good, "not", false),
        (b"not zstd at all".to_vec(), &good, "not valid zstd", true),
        (Vec::new(), &good, "not valid zstd", true),
    ];
    for (bytes, m, want, untouched) in cases {
        let (f, t) = old_disk();
        let e = format!("{:#}", write_image(&bytes[..], &t, m).unwrap_err());
        assert!(e.contains(want), "{want}: {e}");
        let got = std::fs::read(f.path()).unwrap();
        if untouched {
            assert!(
                got.iter().all(|&b| b == 0xee),
                "{want}: the disk was written"
            );
        } else {
            assert!(
                got[..HEAD].iter().all(|&b| b == 0),
                "{want}: the first MiB (MBR, GPT) is not zeroed after a refusal"
            );
        }
    }
}

#[test]
fn the_command_line_is_checked() {
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let o = options(&s(&["/dev/vdb", "--force", "--from", "/mnt"])).unwrap();
    assert_eq!(o.device, Path::new("/dev/vdb"));
    assert!(o.force);
    assert_eq!(o.from.as_deref(), Some(Path::new("/mnt")));
    for bad in [
        &[][..],
        &["--from"],
        &["--bogus", "/dev/vdb"],
        &["/dev/a", "/dev/b"],
    ] {
        let e = options(&s(bad)).unwrap_err().to_string();
        assert!(e.contains("usage"), "{bad:?}: {e}");
    }
}

#[test]
fn install_refuses_what_is_not_a_whole_disk() {
    let f = tempfile::NamedTempFile::new().unwrap();
    let e = main(&[f.path().to_string_lossy().into_owned()]).unwrap_err();
    assert!(format!("{e:#}").contains("not a block device"), "{e:#}");
}
