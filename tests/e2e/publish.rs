//! `cargo xtask publish` and `pull`: the published folder is complete and verifiable, and a
//! round trip through a real registry on 127.0.0.1 gives back the same bytes.

use std::time::Duration;

use anyhow::Result;
use axion_tests::registry::{Compression, Registry};
use axion_tests::{xtask, xtask_ok};

const TIMEOUT: Duration = Duration::from_secs(3600);

#[test]
fn publish_push_and_pull_round_trip() -> Result<()> {
    let registry = Registry::start()?;
    let dir = tempfile::tempdir()?;
    let published = dir.path().join("published");
    let reference = format!("{}/axion/minimal:test", registry.host());
    xtask_ok(&["publish", "--profile", "minimal", "--out", published.to_str().unwrap(), "--push", &reference], TIMEOUT)?;

    // The folder: images, SBOM, licenses, build manifest, and SHA256SUMS that sha256sum accepts.
    let version = xtask::image::VERSION;
    for name in [
        format!("axion-minimal-{version}.raw"),
        format!("axion-minimal-{version}.spdx.json"),
        "build-manifest.json".into(),
        "SHA256SUMS".into(),
        "licenses/linux/COPYING".into(),
    ] {
        assert!(published.join(&name).is_file(), "{name} missing from the published folder");
    }
    let check = std::process::Command::new("sha256sum").arg("-c").arg("--strict").arg("SHA256SUMS").current_dir(&published).output()?;
    assert!(check.status.success(), "sha256sum -c: {}", String::from_utf8_lossy(&check.stdout));

    let sbom: serde_json::Value = serde_json::from_slice(&std::fs::read(published.join(format!("axion-minimal-{version}.spdx.json")))?)?;
    assert_eq!(sbom["spdxVersion"], "SPDX-2.3");
    let names: Vec<&str> = sbom["packages"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    for pkg in ["linux", "busybox", "init"] {
        assert!(names.contains(&pkg), "SBOM lacks {pkg}: {names:?}");
    }
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(published.join("build-manifest.json"))?)?;
    assert!(manifest["toolchain"]["cargo"].as_str().unwrap_or_default().contains("rustc"), "{manifest}");
    assert!(manifest["packages"].as_array().unwrap().iter().all(|p| p["build-key"].is_string()), "{manifest}");

    // Round trip: every file comes back byte for byte.
    let pulled = dir.path().join("pulled");
    xtask_ok(&["pull", &reference, "--out", pulled.to_str().unwrap()], TIMEOUT)?;
    let sums = std::fs::read_to_string(published.join("SHA256SUMS"))?;
    for name in sums.lines().filter_map(|l| l.split_once("  ").map(|(_, n)| n)).chain(["SHA256SUMS"]) {
        assert_eq!(std::fs::read(pulled.join(name))?, std::fs::read(published.join(name))?, "{name} differs after the round trip");
    }

    // A reference that is an ordinary container image is refused with a clear message.
    registry.push_busybox("some/image", "latest", Compression::Gzip)?;
    let out = xtask(&["pull", &format!("{}/some/image:latest", registry.host()), "--out", dir.path().join("x").to_str().unwrap()], TIMEOUT)?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not an axion artifact"), "{err}");
    Ok(())
}
