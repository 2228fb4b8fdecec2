//! The software bill of materials of an image: an SPDX 2.3 JSON document listing every
//! package in it with version, license, where its source came from and that source's hash.
//!
//! The document is made from the recipes alone (plus the image's artifact hashes), so it is
//! reproducible: `created` is SOURCE_DATE_EPOCH and the namespace is derived from content.

pub mod components;
pub mod validate;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::recipe::{Build, Recipe};
use components::Components;

/// The workspace's `repository` (xtask's Cargo.toml inherits it); empty when there is none.
pub const REPOSITORY: &str = env!("CARGO_PKG_REPOSITORY");

/// What the SBOM says about one shipped artifact (a disk image, the OVA, …).
#[derive(Debug, Clone)]
pub struct Artifact {
    pub file_name: String,
    pub sha256: String,
}

/// Input for [`document`].
pub struct SbomInput<'a> {
    pub profile: &'a str,
    pub version: &'a str,
    /// Seconds since the epoch; becomes `creationInfo.created`.
    pub source_date_epoch: u64,
    /// Every package in the image, dependencies included.
    pub packages: Vec<&'a Recipe>,
    pub artifacts: Vec<Artifact>,
    /// What the packages link statically ([`components::collect`]).
    pub components: &'a Components,
    /// Where our own code lives (the workspace's `repository`, [`REPOSITORY`]); empty: none.
    pub repository: &'a str,
}

/// An SPDX identifier may hold letters, digits, '.' and '-' only.
pub(crate) fn spdx_id(kind: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-{kind}-{clean}")
}

/// Where a package's source comes from, as SPDX wants it: a URL, or NOASSERTION with the
/// Debian coordinates in `sourceInfo` (the mirror is whatever apt is configured to use).
fn download_location(r: &Recipe, repository: &str) -> (String, String) {
    if matches!(r.spec.build, Build::Cargo(_)) {
        let location = if repository.is_empty() {
            "NOASSERTION".to_owned()
        } else {
            format!("git+{repository}")
        };
        return (
            location,
            format!("packages/{} in the axion repository", r.name()),
        );
    }
    let Some(s) = r.spec.sources.first() else {
        return ("NONE".into(), "no sources".into());
    };
    let mut info = Vec::new();
    if let Some(d) = &s.debian_source {
        info.push(format!(
            "Debian source package {} version {}, file {}",
            d.package, d.version, d.file
        ));
    }
    if let Some(d) = &s.debian_binary {
        info.push(format!(
            "Debian binary package {} version {}",
            d.package, d.version
        ));
    }
    let location = s
        .urls
        .first()
        .cloned()
        .unwrap_or_else(|| "NOASSERTION".into());
    (location, info.join("; "))
}

pub fn document(input: &SbomInput) -> Value {
    let name = format!("axion-{}-{}", input.profile, input.version);
    let created = rfc3339(input.source_date_epoch);
    let image_id = "SPDXRef-Image".to_string();

    let mut packages = Vec::new();
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_id,
    })];

    let artifact_checksums: Vec<Value> = input
        .artifacts
        .iter()
        .map(|a| json!({ "algorithm": "SHA256", "checksumValue": a.sha256 }))
        .collect();
    packages.push(json!({
        "name": name,
        "SPDXID": image_id,
        "versionInfo": input.version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        // The JSON schema spells it with an underscore (tag-value: OPERATING-SYSTEM).
        "primaryPackagePurpose": "OPERATING_SYSTEM",
        "summary": format!("axion image, profile {}", input.profile),
        "comment": format!(
            "Artifacts: {}",
            input
                .artifacts
                .iter()
                .map(|a| format!("{} sha256:{}", a.file_name, a.sha256))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "checksums": artifact_checksums.first().cloned().map(|c| vec![c]).unwrap_or_default(),
    }));

    for r in &input.packages {
        let m = &r.spec.package;
        let id = spdx_id("Package", &m.name);
        let (location, source_info) = download_location(r, input.repository);
        let mut p = json!({
            "name": m.name,
            "SPDXID": id,
            "versionInfo": m.version,
            "downloadLocation": location,
            "filesAnalyzed": false,
            "licenseConcluded": m.license,
            "licenseDeclared": m.license,
            "copyrightText": "NOASSERTION",
            "summary": m.summary,
            "checksums": r.spec.sources.iter()
                .map(|s| json!({"algorithm": "SHA256", "checksumValue": s.sha256}))
                .collect::<Vec<_>>(),
        });
        if !source_info.is_empty() {
            p["sourceInfo"] = json!(source_info);
        }
        if let Some(h) = &m.homepage {
            p["homepage"] = json!(h);
        }
        if matches!(r.spec.build, Build::Cargo(_)) {
            p["supplier"] = json!("Organization: axion");
        }
        packages.push(p);
        relationships.push(json!({
            "spdxElementId": image_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
        for d in &m.depends {
            relationships.push(json!({
                "spdxElementId": id,
                "relationshipType": "DEPENDS_ON",
                "relatedSpdxElement": spdx_id("Package", d),
            }));
        }
    }

    let listed: Vec<&str> = input.packages.iter().map(|r| r.name()).collect();
    for c in &input.components.list {
        packages.push(component_package(c));
    }
    for (package, ids) in &input.components.links {
        if !listed.contains(&package.as_str()) {
            continue;
        }
        // The package's binary links the component in and so contains it.
        for kind in ["STATIC_LINK", "CONTAINS"] {
            for id in ids {
                relationships.push(json!({
                    "spdxElementId": spdx_id("Package", package),
                    "relationshipType": kind,
                    "relatedSpdxElement": id,
                }));
            }
        }
    }

    // The namespace must be unique per document; derive it from the content so identical
    // inputs give identical documents. It must be an absolute URI: under the repository's
    // URL, or under SPDX's own prefix for documents that have no home of their own.
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&packages).unwrap_or_default());
    let digest = hex::encode(h.finalize());
    let base = if input.repository.starts_with("https://") {
        input.repository.trim_end_matches('/')
    } else {
        "https://spdx.org/spdxdocs"
    };
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": format!(
            "{base}/spdx/{}-{}",
            name,
            &digest[..16]
        ),
        "creationInfo": {
            "created": created,
            "creators": [format!("Tool: axion-xtask-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "relationships": relationships,
    })
}

/// The SPDX package of one statically linked component.
fn component_package(c: &components::Component) -> Value {
    let mut p = json!({
        "name": c.name,
        "SPDXID": c.id,
        "versionInfo": c.version,
        "supplier": c.supplier,
        "downloadLocation": c.download_location,
        "filesAnalyzed": false,
        "licenseConcluded": c.license,
        "licenseDeclared": c.license,
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "LIBRARY",
        "sourceInfo": c.source_info,
        "comment": format!("License texts: licenses/{}/", c.license_dir),
    });
    if let Some(sum) = &c.sha256 {
        p["checksums"] = json!([{ "algorithm": "SHA256", "checksumValue": sum }]);
    }
    if let Some(purl) = &c.purl {
        p["externalRefs"] = json!([{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": purl,
        }]);
    }
    p
}

/// `YYYY-MM-DDThh:mm:ssZ` for seconds since the epoch (UTC). The calendar is the `time`
/// crate's (here through rcgen already), as in `docker_api::time`: no date code of our own.
pub fn rfc3339(secs: u64) -> String {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::RecipeSet;
    use std::path::Path;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn document_lists_every_package_with_license_and_source_hash() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let set = RecipeSet::load(&root.join("recipes")).unwrap();
        let pkgs: Vec<&Recipe> = set.recipes.values().collect();
        let doc = document(&SbomInput {
            profile: "qemu",
            version: "0.1.0",
            source_date_epoch: 1_700_000_000,
            packages: pkgs.clone(),
            artifacts: vec![Artifact {
                file_name: "a.raw".into(),
                sha256: "ab".repeat(32),
            }],
            components: &Components::default(),
            repository: REPOSITORY,
        });
        assert_eq!(doc["spdxVersion"], "SPDX-2.3");
        let listed = doc["packages"].as_array().unwrap();
        assert_eq!(
            listed.len(),
            pkgs.len() + 1,
            "every package plus the image itself"
        );
        let linux = listed.iter().find(|p| p["name"] == "linux").unwrap();
        assert_eq!(
            linux["licenseDeclared"],
            "GPL-2.0-only WITH Linux-syscall-note"
        );
        assert_eq!(
            linux["checksums"][0]["checksumValue"],
            set.recipes["linux"].spec.sources[0].sha256.as_str()
        );
        assert!(linux["sourceInfo"]
            .as_str()
            .unwrap()
            .contains("linux-source-6.1"));
        let busybox = listed.iter().find(|p| p["name"] == "busybox").unwrap();
        assert!(busybox["downloadLocation"]
            .as_str()
            .unwrap()
            .starts_with("https://"));
        // Every CONTAINS relationship points at a listed package.
        let ids: Vec<&str> = listed
            .iter()
            .map(|p| p["SPDXID"].as_str().unwrap())
            .collect();
        for rel in doc["relationships"].as_array().unwrap() {
            assert!(
                ids.contains(&rel["relatedSpdxElement"].as_str().unwrap()),
                "{rel}"
            );
        }
        // Same input, same bytes.
        let again = document(&SbomInput {
            profile: "qemu",
            version: "0.1.0",
            source_date_epoch: 1_700_000_000,
            packages: pkgs,
            artifacts: vec![Artifact {
                file_name: "a.raw".into(),
                sha256: "ab".repeat(32),
            }],
            components: &Components::default(),
            repository: REPOSITORY,
        });
        assert_eq!(doc, again);
    }

    /// The workspace's `repository` as its Cargo.toml says it.
    fn workspace_repository() -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        let t: toml::Value = text.parse().unwrap();
        t["workspace"]["package"]
            .get("repository")
            .and_then(|r| r.as_str())
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn the_workspace_repository_reaches_xtask() {
        assert_eq!(REPOSITORY, workspace_repository());
    }

    #[test]
    fn namespace_and_locations_are_uris_with_or_without_a_repository() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let set = RecipeSet::load(&root.join("recipes")).unwrap();
        let pkgs: Vec<&Recipe> = set.recipes.values().collect();
        for repository in [workspace_repository().as_str(), ""] {
            let doc = document(&SbomInput {
                profile: "qemu",
                version: "0.1.0",
                source_date_epoch: 1_700_000_000,
                packages: pkgs.clone(),
                artifacts: vec![],
                components: &Components::default(),
                repository,
            });
            let ns = doc["documentNamespace"].as_str().unwrap();
            assert!(ns.starts_with("https://") && !ns.contains('#'), "{ns}");
            if !repository.is_empty() {
                assert!(ns.starts_with(repository), "{ns}");
            }
            let engine = doc["packages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "engine")
                .unwrap();
            let want = if repository.is_empty() {
                "NOASSERTION".to_owned()
            } else {
                format!("git+{repository}")
            };
            assert_eq!(engine["downloadLocation"], want.as_str());
        }
    }

    /// The SBOM of the qemu profile (recipes and the components they link, found for real)
    /// through the SPDX project's validator; every crate the engine links per Cargo.lock is a
    /// package with the lock's checksum, linked from the engine.
    #[test]
    fn qemu_profile_sbom_lists_the_engines_crates_and_pyspdxtools_accepts_it() {
        let layout = crate::layout::Layout::discover();
        let set = RecipeSet::load(&layout.recipes()).unwrap();
        let profile = crate::profile::load_profile(&layout.root, "qemu", &set).unwrap();
        let pkgs = set.closure(&profile.spec.profile.packages).unwrap();
        let comps = components::collect(&layout.root, &pkgs, REPOSITORY, false).unwrap();
        let doc = document(&SbomInput {
            profile: "qemu",
            version: "0.1.0",
            source_date_epoch: 1_700_000_000,
            packages: pkgs,
            artifacts: vec![Artifact {
                file_name: "a.raw".into(),
                sha256: "ab".repeat(32),
            }],
            components: &comps,
            repository: REPOSITORY,
        });
        let crates = components::linked_crates(&layout.root, "engine", false).unwrap();
        assert!(crates.len() > 50, "{crates:?}");
        let lock: toml::Value = std::fs::read_to_string(layout.root.join("Cargo.lock"))
            .unwrap()
            .parse()
            .unwrap();
        let listed = doc["packages"].as_array().unwrap();
        let rels = doc["relationships"].as_array().unwrap();
        for (name, version) in &crates {
            let p = listed
                .iter()
                .find(|p| p["name"] == name.as_str() && p["versionInfo"] == version.as_str())
                .unwrap_or_else(|| panic!("{name} {version} is not in the SBOM"));
            let locked = lock["package"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| {
                    l["name"].as_str() == Some(name) && l["version"].as_str() == Some(version)
                })
                .unwrap();
            if let Some(sum) = locked.get("checksum") {
                assert_eq!(p["checksums"][0]["checksumValue"], sum.as_str().unwrap());
                assert_eq!(p["supplier"], "Organization: crates.io");
            }
            assert!(
                rels.iter()
                    .any(|r| r["spdxElementId"] == "SPDXRef-Package-engine"
                        && r["relationshipType"] == "STATIC_LINK"
                        && r["relatedSpdxElement"] == p["SPDXID"]),
                "engine does not STATIC_LINK {name}"
            );
        }
        // Debian's musl, linked into busybox and dropbear.
        let musl = listed
            .iter()
            .find(|p| p["name"] == "musl" && p["supplier"] == "Organization: Debian")
            .expect("Debian's musl");
        assert!(rels
            .iter()
            .any(|r| r["spdxElementId"] == "SPDXRef-Package-busybox"
                && r["relatedSpdxElement"] == musl["SPDXID"]));

        let tool = match validate::ensure(&layout.cache) {
            Ok(t) => t,
            Err(e) => {
                test_skip::skip(format!("pyspdxtools cannot be installed: {e:#}"));
                return;
            }
        };
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("qemu.spdx.json");
        std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
        validate::validate(&tool, &file).unwrap();
    }
}
