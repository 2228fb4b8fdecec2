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
    xtask_ok(
        &[
            "publish",
            "--profile",
            "minimal",
            "--out",
            published.to_str().unwrap(),
            "--push",
            &reference,
        ],
        TIMEOUT,
    )?;

    // The folder: images, SBOM, licenses, build manifest, and SHA256SUMS that sha256sum accepts.
    let version = xtask::image::VERSION;
    for name in [
        format!("axion-minimal-{version}.raw"),
        format!("axion-minimal-{version}.spdx.json"),
        "build-manifest.json".into(),
        "SHA256SUMS".into(),
        "licenses/linux/COPYING".into(),
    ] {
        assert!(
            published.join(&name).is_file(),
            "{name} missing from the published folder"
        );
    }
    let check = std::process::Command::new("sha256sum")
        .arg("-c")
        .arg("--strict")
        .arg("SHA256SUMS")
        .current_dir(&published)
        .output()?;
    assert!(
        check.status.success(),
        "sha256sum -c: {}",
        String::from_utf8_lossy(&check.stdout)
    );

    let sbom: serde_json::Value = serde_json::from_slice(&std::fs::read(
        published.join(format!("axion-minimal-{version}.spdx.json")),
    )?)?;
    assert_eq!(sbom["spdxVersion"], "SPDX-2.3");
    let names: Vec<&str> = sbom["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for pkg in ["linux", "busybox", "init"] {
        assert!(names.contains(&pkg), "SBOM lacks {pkg}: {names:?}");
    }
    check_sbom(
        &published.join(format!("axion-minimal-{version}.spdx.json")),
        &published,
    )?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(published.join("build-manifest.json"))?)?;
    assert!(
        manifest["toolchain"]["cargo"]
            .as_str()
            .unwrap_or_default()
            .contains("rustc"),
        "{manifest}"
    );
    assert!(
        manifest["packages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["build-key"].is_string()),
        "{manifest}"
    );

    // Round trip: every file comes back byte for byte.
    let pulled = dir.path().join("pulled");
    xtask_ok(
        &["pull", &reference, "--out", pulled.to_str().unwrap()],
        TIMEOUT,
    )?;
    let sums = std::fs::read_to_string(published.join("SHA256SUMS"))?;
    for name in sums
        .lines()
        .filter_map(|l| l.split_once("  ").map(|(_, n)| n))
        .chain(["SHA256SUMS"])
    {
        assert_eq!(
            std::fs::read(pulled.join(name))?,
            std::fs::read(published.join(name))?,
            "{name} differs after the round trip"
        );
    }

    // A reference that is an ordinary container image is refused with a clear message.
    registry.push_busybox(
        &axion_tests::busybox(),
        "some/image",
        "latest",
        Compression::Gzip,
    )?;
    let out = xtask(
        &[
            "pull",
            &format!("{}/some/image:latest", registry.host()),
            "--out",
            dir.path().join("x").to_str().unwrap(),
        ],
        TIMEOUT,
    )?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not an axion artifact"), "{err}");
    Ok(())
}

/// The SBOM read by independent SPDX code (the SPDX tools of the issue are Python, from PyPI,
/// which this machine cannot reach and Debian does not package): the `spdx-rs` reader must
/// accept the document, every license must be a valid SPDX expression (the `spdx` crate),
/// and the content must match the image: exactly the profile's packages with their
/// recipes' versions and pinned source hashes, and the image package's checksum is the
/// sha256 of a published image file.
fn check_sbom(path: &std::path::Path, published: &std::path::Path) -> Result<()> {
    let bytes = std::fs::read(path)?;
    let doc: spdx_rs::models::SPDX = serde_json::from_slice(&bytes)
        .map_err(|e| anyhow::anyhow!("spdx-rs cannot read {}: {e}", path.display()))?;
    let sbom: serde_json::Value = serde_json::from_slice(&bytes)?;
    for p in sbom["packages"].as_array().unwrap() {
        for key in ["licenseDeclared", "licenseConcluded"] {
            let l = p[key].as_str().unwrap_or_default();
            if l != "NOASSERTION" && l != "NONE" {
                spdx::Expression::parse(l).map_err(|e| {
                    anyhow::anyhow!("{}: {key} {l:?} is not an SPDX expression: {e}", p["name"])
                })?;
            }
        }
    }
    let layout = axion_tests::layout();
    let recipes = xtask::recipe::RecipeSet::load(&layout.recipes())?;
    let profile = xtask::profile::load_profile(&layout.root, "minimal", &recipes)?;
    let closure = recipes.closure(&profile.spec.profile.packages)?;
    let image_name = format!("axion-{}-{}", profile.name(), xtask::image::VERSION);
    let mut listed: Vec<&str> = doc
        .package_information
        .iter()
        .map(|p| p.package_name.as_str())
        .filter(|n| *n != image_name)
        .collect();
    listed.sort();
    let mut wanted: Vec<&str> = closure
        .iter()
        .map(|r| r.spec.package.name.as_str())
        .collect();
    wanted.sort();
    assert_eq!(listed, wanted, "the SBOM's packages are not the profile's");
    for r in &closure {
        let p = doc
            .package_information
            .iter()
            .find(|p| p.package_name == r.spec.package.name)
            .unwrap();
        assert_eq!(
            p.package_version.as_deref(),
            Some(r.spec.package.version.as_str()),
            "{}",
            r.spec.package.name
        );
        let sums: Vec<&str> = p
            .package_checksum
            .iter()
            .map(|c| c.value.as_str())
            .collect();
        for src in &r.spec.sources {
            assert!(
                sums.contains(&src.sha256.as_str()),
                "{}: source {} not in the SBOM's checksums {sums:?}",
                r.spec.package.name,
                src.sha256
            );
        }
        assert!(
            doc.relationships
                .iter()
                .any(|rel| rel.related_spdx_element == p.package_spdx_identifier),
            "{} is not related to the image in the SBOM",
            r.spec.package.name
        );
    }
    let image = doc
        .package_information
        .iter()
        .find(|p| p.package_name == image_name)
        .expect("the image package");
    let image_sum = &image
        .package_checksum
        .first()
        .expect("the image's checksum")
        .value;
    let sums = std::fs::read_to_string(published.join("SHA256SUMS"))?;
    assert!(
        sums.lines().any(|l| l.starts_with(image_sum.as_str())),
        "the image package's checksum {image_sum} is no published file's"
    );
    Ok(())
}
