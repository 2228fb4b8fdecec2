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
        // The full texts COPYING points to, from the kernel source.
        "licenses/linux/LICENSES/preferred/GPL-2.0".into(),
        "licenses/linux/LICENSES/exceptions/Linux-syscall-note".into(),
    ] {
        assert!(
            published.join(&name).is_file(),
            "{name} missing from the published folder"
        );
    }
    // Handed out like the images: every published file is readable by all.
    for entry in walkdir_files(&published)? {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&entry)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{} is {mode:o}", entry.display());
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
    let sbom_path = published.join(format!("axion-minimal-{version}.spdx.json"));
    check_sbom(&sbom_path, &published)?;
    check_static_components(&sbom, &published)?;
    // The SPDX project's own validator (PyPI's spdx-tools; CI installs it with `cargo xtask
    // doctor --spdx-tools`).
    match xtask::sbom::validate::ensure(&axion_tests::layout().cache) {
        Ok(tool) => {
            let said = xtask::sbom::validate::validate(&tool, &sbom_path)?;
            eprintln!("pyspdxtools accepts {}: {said}", sbom_path.display());
        }
        Err(e) => axion_tests::skip(format_args!("pyspdxtools cannot be installed: {e:#}")),
    }
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

    // Rebuilt from the recorded inputs, every file has the published sha256 (the comparison
    // naming a differing file is xtask's unit test verify::tests).
    let verified = xtask_ok(&["verify", published.to_str().unwrap()], TIMEOUT)?;
    let said = String::from_utf8_lossy(&verified.stdout);
    assert!(said.starts_with("identical: all "), "{said}");

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
    // The profile's packages; the components they link statically come after them (see
    // check_static_components).
    let mut listed: Vec<&str> = doc
        .package_information
        .iter()
        .filter(|p| p.package_spdx_identifier.starts_with("SPDXRef-Package-"))
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

/// Every file under `dir`, recursively.
fn walkdir_files(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            out.extend(walkdir_files(&e.path())?);
        } else {
            out.push(e.path());
        }
    }
    Ok(out)
}

/// What the profile's binaries link statically is in the SBOM, each its own package: every
/// crate init links, per Cargo.lock (the engine's, with the same code, in xtask's unit test
/// `qemu_profile_sbom_lists_the_engines_crates_and_pyspdxtools_accepts_it`: the minimal
/// profile has no engine), with the lock's checksum, a license and its license file under
/// licenses/, and Debian's musl for busybox.
fn check_static_components(sbom: &serde_json::Value, published: &std::path::Path) -> Result<()> {
    let layout = axion_tests::layout();
    let lock: toml::Value = std::fs::read_to_string(layout.root.join("Cargo.lock"))?.parse()?;
    let locked = lock["package"].as_array().unwrap();
    let packages = sbom["packages"].as_array().unwrap();
    let rels = sbom["relationships"].as_array().unwrap();
    let links = |from: &str, to: &serde_json::Value| {
        rels.iter().any(|r| {
            r["spdxElementId"] == from
                && r["relationshipType"] == "STATIC_LINK"
                && r["relatedSpdxElement"] == *to
        })
    };
    let crates = xtask::sbom::components::linked_crates(&layout.root, "init", false)?;
    assert!(!crates.is_empty());
    for (name, version) in &crates {
        let lock_entry = locked
            .iter()
            .find(|l| l["name"].as_str() == Some(name) && l["version"].as_str() == Some(version))
            .unwrap_or_else(|| panic!("{name} {version} is not in Cargo.lock"));
        let p = packages
            .iter()
            .find(|p| p["name"] == name.as_str() && p["versionInfo"] == version.as_str())
            .unwrap_or_else(|| panic!("the SBOM lacks crate {name} {version}, which init links"));
        if let Some(sum) = lock_entry.get("checksum").and_then(|c| c.as_str()) {
            assert_eq!(p["checksums"][0]["checksumValue"], sum, "{name}");
        }
        assert_ne!(p["licenseDeclared"], "NOASSERTION", "{name}");
        assert!(p["supplier"].is_string(), "{name}");
        assert!(
            links("SPDXRef-Package-init", &p["SPDXID"]),
            "init -> {name}"
        );
        let dir = published.join(format!("licenses/crates/{name}-{version}"));
        assert!(
            std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()),
            "no license text for {name} in {}",
            dir.display()
        );
    }
    let musl = packages
        .iter()
        .find(|p| p["name"] == "musl" && p["supplier"] == "Organization: Debian")
        .expect("Debian's musl");
    assert!(musl["checksums"][0]["checksumValue"].is_string(), "{musl}");
    assert!(links("SPDXRef-Package-busybox", &musl["SPDXID"]));
    Ok(())
}
