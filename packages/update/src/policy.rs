//! Whether a verified artifact may be written: versions, profile, failed versions.

use std::cmp::Ordering;

/// What `/etc/axion/release` says about the running image.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub profile: String,
    pub version: String,
}

impl Release {
    /// `profile=NAME` and `version=V` lines.
    pub fn parse(text: &str) -> Option<Release> {
        let mut profile = None;
        let mut version = None;
        for line in text.lines() {
            match line.split_once('=') {
                Some(("profile", v)) => profile = Some(v.trim().to_owned()),
                Some(("version", v)) => version = Some(v.trim().to_owned()),
                _ => {}
            }
        }
        Some(Release {
            profile: profile?,
            version: version?,
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refusal {
    #[error("the artifact is for profile '{theirs}', this machine runs profile '{ours}'")]
    ProfileMismatch { ours: String, theirs: String },
    #[error(
        "version {theirs} is not newer than the running {ours} (--allow-downgrade to write it \
         anyway)"
    )]
    Downgrade { ours: String, theirs: String },
    #[error("version {0} is running already")]
    Same(String),
    #[error(
        "version {0} failed its health check on this machine before (--retry-failed to try it \
         again)"
    )]
    Failed(String),
    #[error("the signed artifact names no {0}")]
    MissingClaim(&'static str),
}

/// Compares versions part by part (split at `.`, `-`, `+`): numbers as numbers, other parts
/// as text, a number before text; a missing part is smaller (`1.2` < `1.2.1`).
pub fn compare(a: &str, b: &str) -> Ordering {
    let parts = |s: &str| -> Vec<String> {
        s.split(['.', '-', '+'])
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let (pa, pb) = (parts(a), parts(b));
    for i in 0..pa.len().max(pb.len()) {
        let o = match (pa.get(i), pb.get(i)) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(x), Some(y)) => match (x.parse::<u64>(), y.parse::<u64>()) {
                (Ok(x), Ok(y)) => x.cmp(&y),
                (Ok(_), Err(_)) => Ordering::Less,
                (Err(_), Ok(_)) => Ordering::Greater,
                (Err(_), Err(_)) => x.cmp(y),
            },
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

pub struct Options {
    pub allow_downgrade: bool,
    pub retry_failed: bool,
}

/// Checks the artifact's signed claims against the running release.
pub fn admit(
    running: &Release,
    profile: Option<&str>,
    version: Option<&str>,
    failed: Option<&str>,
    opts: &Options,
) -> Result<(), Refusal> {
    let profile = profile.ok_or(Refusal::MissingClaim("axion.profile"))?;
    let version = version.ok_or(Refusal::MissingClaim("axion.version"))?;
    if profile != running.profile {
        return Err(Refusal::ProfileMismatch {
            ours: running.profile.clone(),
            theirs: profile.into(),
        });
    }
    if failed == Some(version) && !opts.retry_failed {
        return Err(Refusal::Failed(version.into()));
    }
    match compare(version, &running.version) {
        Ordering::Greater => Ok(()),
        Ordering::Equal if !opts.allow_downgrade => Err(Refusal::Same(version.into())),
        _ if opts.allow_downgrade => Ok(()),
        _ => Err(Refusal::Downgrade {
            ours: running.version.clone(),
            theirs: version.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_parts() {
        assert_eq!(compare("0.1.0", "0.2.0"), Ordering::Less);
        assert_eq!(compare("0.10.0", "0.9.9"), Ordering::Greater);
        assert_eq!(compare("1.2", "1.2.1"), Ordering::Less);
        assert_eq!(compare("0.1.0", "0.1.0"), Ordering::Equal);
        assert_eq!(compare("0.1.0-2", "0.1.0-10"), Ordering::Less);
        assert_eq!(compare("1.0.rc1", "1.0.1"), Ordering::Greater);
    }

    #[test]
    fn refuses_downgrades_other_profiles_and_failed_versions() {
        let running = Release::parse("profile=qemu\nversion=0.2.0\n").unwrap();
        let no = Options {
            allow_downgrade: false,
            retry_failed: false,
        };
        let yes = Options {
            allow_downgrade: true,
            retry_failed: true,
        };
        let admit = |p, v, f, o| admit(&running, Some(p), Some(v), f, o);
        assert_eq!(admit("qemu", "0.3.0", None, &no), Ok(()));
        assert!(matches!(
            admit("qemu", "0.1.0", None, &no),
            Err(Refusal::Downgrade { .. })
        ));
        assert_eq!(admit("qemu", "0.1.0", None, &yes), Ok(()));
        assert_eq!(
            admit("qemu", "0.2.0", None, &no),
            Err(Refusal::Same("0.2.0".into()))
        );
        assert!(matches!(
            admit("vsphere", "0.3.0", None, &yes),
            Err(Refusal::ProfileMismatch { .. })
        ));
        assert_eq!(
            admit("qemu", "0.3.0", Some("0.3.0"), &no),
            Err(Refusal::Failed("0.3.0".into()))
        );
        assert_eq!(admit("qemu", "0.3.0", Some("0.3.0"), &yes), Ok(()));
        assert_eq!(
            super::admit(&running, Some("qemu"), None, None, &no),
            Err(Refusal::MissingClaim("axion.version"))
        );
        assert_eq!(Release::parse("version=1\n"), None);
    }
}
