//! Busybox images for the tests and the bench, from a static busybox binary (the project's
//! own package, or the host's for the bench's peer): a registry layer with applets, users
//! and a marker file ([`layer`]), and a `docker save` archive ([`image_tar`]).

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;

/// A root filesystem: the static `busybox` binary plus applet symlinks, /etc/passwd, /tmp,
/// and /etc/axion-test-image holding `marker` (so each test image has its own layer).
pub fn layer(bb: &Path, marker: &str) -> Result<Vec<u8>> {
    let data = std::fs::read(bb).with_context(|| format!("reading {}", bb.display()))?;
    let list = Command::new(bb)
        .arg("--list")
        .output()
        .with_context(|| format!("{} --list", bb.display()))?;
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, p: &str, mode: u32| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, p, std::io::empty())?;
        Ok(())
    };
    for (d, m) in [
        ("bin/", 0o755),
        ("etc/", 0o755),
        ("tmp/", 0o1777),
        ("root/", 0o700),
        ("home/", 0o755),
    ] {
        dir(&mut b, d, m)?;
    }
    let file = |b: &mut tar::Builder<Vec<u8>>, p: &str, mode: u32, content: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_mode(mode);
        h.set_size(content.len() as u64);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, p, content)?;
        Ok(())
    };
    file(&mut b, "bin/busybox", 0o755, &data)?;
    file(
        &mut b,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
    )?;
    file(&mut b, "etc/axion-test-image", 0o644, marker.as_bytes())?;
    file(&mut b, "etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_mtime(1_700_000_000);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    Ok(b.into_inner()?)
}

/// A one-layer `docker save` archive of busybox:latest from a static busybox, so a daemon
/// can `docker load` it without a registry (the bench's guests; the engine's load test).
pub fn image_tar(busybox: &[u8]) -> Result<Vec<u8>> {
    image_tar_as(busybox, "busybox:latest", &["sh"])
}

/// [`image_tar`] tagged `tag`, with `cmd` as the image's command (e.g. a pod's sandbox
/// image, whose command must keep running).
pub fn image_tar_as(busybox: &[u8], tag: &str, cmd: &[&str]) -> Result<Vec<u8>> {
    let mut layer = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(0);
    layer.append_data(&mut dir, "bin/", std::io::empty())?;
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    h.set_mtime(0);
    layer.append_data(&mut h, "bin/busybox", busybox)?;
    for applet in ["sh", "true", "echo", "sleep"] {
        let mut l = tar::Header::new_ustar();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_mode(0o777);
        l.set_size(0);
        l.set_mtime(0);
        layer.append_link(&mut l, format!("bin/{applet}"), "busybox")?;
    }
    let layer = layer.into_inner()?;
    let layer_id = hex::encode(Sha256::digest(&layer));
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": { "Cmd": cmd, "Env": ["PATH=/bin"] },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_id}")] },
        "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "axion bench: the host's \
            static busybox" }]
    })
    .to_string();
    let config_id = hex::encode(Sha256::digest(config.as_bytes()));
    let manifest = serde_json::json!([{
        "Config": format!("{config_id}.json"),
        "RepoTags": [tag],
        "Layers": [format!("{layer_id}/layer.tar")],
    }])
    .to_string();
    let mut t = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| -> std::io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        t.append_data(&mut h, name, data)
    };
    add(&format!("{layer_id}/layer.tar"), &layer)?;
    add(&format!("{config_id}.json"), config.as_bytes())?;
    add("manifest.json", manifest.as_bytes())?;
    Ok(t.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn busybox_image_is_a_docker_save_archive() {
        let bytes = image_tar(b"\x7fELF fake busybox").unwrap();
        let mut names = Vec::new();
        let mut manifest = String::new();
        let mut a = tar::Archive::new(&bytes[..]);
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            if name == "manifest.json" {
                e.read_to_string(&mut manifest).unwrap();
            }
            names.push(name);
        }
        let m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
        assert_eq!(m[0]["RepoTags"][0], "busybox:latest");
        let layer = m[0]["Layers"][0].as_str().unwrap();
        assert!(names.iter().any(|n| n == layer), "{names:?}");
        assert!(names.iter().any(|n| n == m[0]["Config"].as_str().unwrap()));
        // Same input, same bytes.
        assert_eq!(bytes, image_tar(b"\x7fELF fake busybox").unwrap());
    }
}
