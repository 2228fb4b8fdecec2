//! Image references: `busybox`, `busybox:1.36`, `127.0.0.1:5000/busybox:latest`,
//! `repo@sha256:...`. Normalised as Docker does: no registry means docker.io, and a
//! single-component docker.io repository gets `library/`.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid reference format: {0:?}")]
pub struct BadReference(pub String);

pub const DOCKER_HUB: &str = "docker.io";

fn valid_component(c: &str) -> bool {
    !c.is_empty()
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && c.as_bytes()[0].is_ascii_alphanumeric()
        && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .map(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
        .unwrap_or(false)
}

impl Reference {
    pub fn parse(s: &str) -> Result<Self, BadReference> {
        let bad = || BadReference(s.to_string());
        if s.is_empty() || s.len() > 512 {
            return Err(bad());
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                if !valid_digest(d) {
                    return Err(bad());
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let t = &rest[last_slash + i + 1..];
                if !valid_tag(t) {
                    return Err(bad());
                }
                (&rest[..last_slash + i], Some(t.to_string()))
            }
            None => (rest, None),
        };
        let mut parts: Vec<&str> = name.split('/').collect();
        let registry = if parts.len() > 1
            && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
        {
            let r = parts.remove(0);
            if r.is_empty() || r.chars().any(|c| c.is_whitespace() || c == '@') {
                return Err(bad());
            }
            let (host, port) = r.rsplit_once(':').unwrap_or((r, "0"));
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let hb = host.as_bytes();
            if hb.is_empty()
                || !hb[0].is_ascii_alphanumeric()
                || !hb
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b".-".contains(b))
            {
                return Err(bad());
            }
            r.to_string()
        } else {
            DOCKER_HUB.to_string()
        };
        if parts.iter().any(|c| !valid_component(c)) {
            return Err(bad());
        }
        let mut repository = parts.join("/");
        if registry == DOCKER_HUB && parts.len() == 1 {
            repository = format!("library/{repository}");
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".into())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The repository as users write it: `busybox`, `user/app`, `127.0.0.1:5000/busybox`.
    pub fn familiar_name(&self) -> String {
        if self.registry == DOCKER_HUB {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            format!("{}/{}", self.registry, self.repository)
        }
    }

    /// `name:tag` (the key images are tagged under) when a tag is present.
    pub fn tagged(&self) -> Option<String> {
        self.tag
            .as_ref()
            .map(|t| format!("{}:{t}", self.familiar_name()))
    }

    /// What to ask the registry for: the digest if given, else the tag.
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "library/busybox")
        );
        assert_eq!(r.tagged().unwrap(), "busybox:latest");
        let r = Reference::parse("127.0.0.1:5000/busybox:1.36").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "busybox");
        assert_eq!(r.tagged().unwrap(), "127.0.0.1:5000/busybox:1.36");
        let r = Reference::parse("localhost/a/b").unwrap();
        assert_eq!(r.registry, "localhost");
        assert_eq!(r.repository, "a/b");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("x/y@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.object(), d);
    }

    #[test]
    fn rejects_bad_names() {
        for s in [
            "",
            "UPPER",
            "a//b",
            "a:",
            "a@sha256:12",
            "-a",
            "a b",
            "a:t/b",
            "../x",
        ] {
            assert!(Reference::parse(s).is_err(), "{s}");
        }
    }
}
