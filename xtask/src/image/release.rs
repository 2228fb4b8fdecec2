//! The generated `release` overlay: what the image says about itself to its update agent.
//!
//! - `etc/axion/release`: `profile=NAME` and `version=V` lines ([`super::release_version`]);
//! - `etc/axion/update/trusted/KEYID.pub`: each public key of the profile's
//!   `[update] trusted-keys` (plus `AXION_TRUSTED_KEYS`), checked to be a P-256 PEM key;
//! - with no key, `etc/axion/update/trusted/NONE` says that the image accepts no update, and
//!   the build says so too.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::profile::Profile;

/// The profile's trusted key files, then those of `AXION_TRUSTED_KEYS` (colon-separated).
pub fn trusted_key_files(root: &Path, profile: &Profile) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = profile
        .spec
        .update
        .trusted_keys
        .iter()
        .map(|p| root.join(p))
        .collect();
    if let Ok(extra) = std::env::var("AXION_TRUSTED_KEYS") {
        out.extend(
            extra
                .split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
        );
    }
    out
}

/// Writes the overlay into a new temporary folder.
pub fn overlay(root: &Path, profile: &Profile, version: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir().context("cannot make a temporary folder")?;
    write(
        dir.path(),
        profile,
        version,
        &trusted_key_files(root, profile),
    )?;
    Ok(dir)
}

pub fn write(dir: &Path, profile: &Profile, version: &str, keys: &[PathBuf]) -> Result<()> {
    let etc = dir.join("etc/axion");
    let trusted = etc.join("update/trusted");
    std::fs::create_dir_all(&trusted)?;
    std::fs::write(
        etc.join("release"),
        format!("profile={}\nversion={version}\n", profile.name()),
    )?;
    for path in keys {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "{}: key 'update.trusted-keys': cannot read {}",
                profile.path.display(),
                path.display()
            )
        })?;
        let parsed = signing::public_keys(&text)
            .with_context(|| format!("{}: not a public key", path.display()))?;
        if parsed.is_empty() {
            anyhow::bail!("{}: no PEM 'PUBLIC KEY' block", path.display());
        }
        for k in parsed {
            std::fs::write(trusted.join(format!("{}.pub", k.key_id())), k.to_pem())?;
        }
    }
    if keys.is_empty() {
        eprintln!(
            "note: profile {} names no trusted update key ([update] trusted-keys): the image \
             will refuse every update",
            profile.name()
        );
        std::fs::write(
            trusted.join("NONE"),
            "This image was built without a trusted update key: axion-update refuses every \
             update.\n",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(dir: &Path) -> Profile {
        let path = dir.join("p.toml");
        crate::profile::parse_profile(
            &path,
            "[profile]\nname = \"p\"\ndescription = \"d\"\npackages = [\"linux\"]\n\
             formats = [\"raw\"]\n",
        )
        .unwrap()
    }

    #[test]
    fn the_image_carries_its_version_and_trusted_keys_or_says_it_has_none() {
        let d = tempfile::tempdir().unwrap();
        let p = profile(d.path());
        let (_, public) = crate::publish::sign::keygen_files(&d.path().join("k")).unwrap();
        let with = d.path().join("with");
        write(&with, &p, "0.2.0", std::slice::from_ref(&public)).unwrap();
        assert_eq!(
            std::fs::read_to_string(with.join("etc/axion/release")).unwrap(),
            "profile=p\nversion=0.2.0\n"
        );
        let id = signing::PublicKey::from_pem(&std::fs::read_to_string(&public).unwrap())
            .unwrap()
            .key_id();
        let trusted = with.join("etc/axion/update/trusted");
        assert!(trusted.join(format!("{id}.pub")).is_file());
        assert!(!trusted.join("NONE").exists());

        let without = d.path().join("without");
        write(&without, &p, "0.2.0", &[]).unwrap();
        assert!(without.join("etc/axion/update/trusted/NONE").is_file());

        std::fs::write(d.path().join("bad.pub"), "not a key").unwrap();
        let e = write(&d.path().join("x"), &p, "1", &[d.path().join("bad.pub")]).unwrap_err();
        assert!(e.to_string().contains("no PEM"), "{e}");
    }
}
