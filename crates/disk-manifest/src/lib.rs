//! The manifest of the disk image an axion ISO carries (`/axion/disk.manifest` beside
//! `/axion/disk.raw.zst`), so that `axion-update install DEVICE` writes exactly the disk a
//! user would get from the raw or qcow2 image.
//!
//! ```text
//! axion-disk-image 1
//! profile=qemu
//! version=0.1.0
//! file=disk.raw.zst
//! size=1178599424
//! sha256=<64 lowercase hex digits: the sha256 of the uncompressed disk>
//! ```
//!
//! `xtask` writes it ([`Manifest::render`]); the installer reads it from a medium it did not
//! make, so [`Manifest::parse`] treats it as outside input (fuzzed as `disk_manifest`): the
//! first line must be the format line, every other key exactly once, nothing else, no
//! control characters, at most [`MAX_LEN`] bytes in all.

use std::fmt;

/// The first line: the format and its version.
pub const FORMAT_LINE: &str = "axion-disk-image 1";
/// A manifest longer than this is refused before it is parsed.
pub const MAX_LEN: usize = 4096;
/// Largest disk image accepted (1 TiB): a size beyond it is a broken manifest.
pub const MAX_SIZE: u64 = 1 << 40;

/// What the manifest says about the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The image profile (`/etc/axion/release`'s `profile=`).
    pub profile: String,
    /// The version the image reports.
    pub version: String,
    /// The compressed image's file name, beside the manifest (no folder).
    pub file: String,
    /// Size of the uncompressed disk in bytes (a multiple of 512).
    pub size: u64,
    /// sha256 of the uncompressed disk, lowercase hex.
    pub sha256: String,
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    TooLong(usize),
    NotText,
    NoFormatLine,
    BadLine(usize),
    UnknownKey(String),
    Duplicate(String),
    Missing(&'static str),
    BadValue(&'static str, String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::TooLong(n) => write!(f, "the manifest is {n} bytes (at most {MAX_LEN})"),
            Error::NotText => write!(f, "the manifest is not UTF-8 text"),
            Error::NoFormatLine => write!(f, "the manifest does not start with `{FORMAT_LINE}`"),
            Error::BadLine(n) => write!(f, "line {n} of the manifest is not KEY=VALUE"),
            Error::UnknownKey(k) => write!(f, "unknown key `{k}` in the manifest"),
            Error::Duplicate(k) => write!(f, "key `{k}` appears twice in the manifest"),
            Error::Missing(k) => write!(f, "the manifest has no `{k}=`"),
            Error::BadValue(k, why) => write!(f, "bad `{k}=` in the manifest: {why}"),
        }
    }
}

impl std::error::Error for Error {}

const KEYS: [&str; 5] = ["profile", "version", "file", "size", "sha256"];

impl Manifest {
    /// The manifest's text (what [`Manifest::parse`] reads back).
    pub fn render(&self) -> String {
        format!(
            "{FORMAT_LINE}\nprofile={}\nversion={}\nfile={}\nsize={}\nsha256={}\n",
            self.profile, self.version, self.file, self.size, self.sha256
        )
    }

    /// Parses and checks a manifest read from a medium.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, Error> {
        if bytes.len() > MAX_LEN {
            return Err(Error::TooLong(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| Error::NotText)?;
        let mut lines = text.lines();
        if lines.next() != Some(FORMAT_LINE) {
            return Err(Error::NoFormatLine);
        }
        let mut values: [Option<&str>; 5] = [None; 5];
        for (i, line) in lines.enumerate() {
            let (k, v) = line.split_once('=').ok_or(Error::BadLine(i + 2))?;
            let slot = KEYS
                .iter()
                .position(|&known| known == k)
                .ok_or_else(|| Error::UnknownKey(printable(k)))?;
            if values[slot].replace(v).is_some() {
                return Err(Error::Duplicate(k.to_owned()));
            }
        }
        let get = |i: usize| values[i].ok_or(Error::Missing(KEYS[i]));
        let m = Manifest {
            profile: word("profile", get(0)?)?,
            version: word("version", get(1)?)?,
            file: file_name(get(2)?)?,
            size: size(get(3)?)?,
            sha256: sha256(get(4)?)?,
        };
        Ok(m)
    }
}

/// A short name of visible ASCII (profile, version).
fn word(key: &'static str, v: &str) -> Result<String, Error> {
    if v.is_empty() || v.len() > 128 {
        return Err(Error::BadValue(
            key,
            "empty or longer than 128 bytes".into(),
        ));
    }
    if !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::BadValue(key, format!("`{}`", printable(v))));
    }
    Ok(v.to_owned())
}

/// A plain file name beside the manifest: no folder, no leading dot.
fn file_name(v: &str) -> Result<String, Error> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && !v.starts_with('.')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        return Err(Error::BadValue(
            "file",
            format!("`{}` is not a plain file name", printable(v)),
        ));
    }
    Ok(v.to_owned())
}

fn size(v: &str) -> Result<u64, Error> {
    let n: u64 = if v.bytes().all(|b| b.is_ascii_digit()) {
        v.parse().ok()
    } else {
        None
    }
    .ok_or_else(|| Error::BadValue("size", format!("`{}` is not a number", printable(v))))?;
    if n == 0 || n > MAX_SIZE || !n.is_multiple_of(512) {
        return Err(Error::BadValue(
            "size",
            format!("{n} is not a multiple of 512 between 512 and {MAX_SIZE}"),
        ));
    }
    Ok(n)
}

fn sha256(v: &str) -> Result<String, Error> {
    if v.len() != 64 || !v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(Error::BadValue(
            "sha256",
            "not 64 lowercase hex digits".into(),
        ));
    }
    Ok(v.to_owned())
}

/// `s` cut to 64 characters with control characters escaped, for an error message.
fn printable(s: &str) -> String {
    s.chars().take(64).flat_map(char::escape_default).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            profile: "qemu".into(),
            version: "0.1.0-e2e.1".into(),
            file: "disk.raw.zst".into(),
            size: 1_178_599_424,
            sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn render_then_parse_is_the_same_manifest() {
        let m = sample();
        assert_eq!(Manifest::parse(m.render().as_bytes()), Ok(m));
    }

    #[test]
    fn broken_manifests_are_refused_with_the_reason() {
        let good = sample().render();
        let cases: Vec<(String, &str)> = vec![
            (
                good.replace(FORMAT_LINE, "axion-disk-image 2"),
                "does not start",
            ),
            (format!("{good}extra=1\n"), "unknown key `extra`"),
            (format!("{good}size=512\n"), "appears twice"),
            (good.replace("size=1178599424\n", ""), "no `size=`"),
            (good.replace("1178599424", "1000"), "multiple of 512"),
            (good.replace("1178599424", "-512"), "not a number"),
            (
                good.replace("1178599424", "99999999999999999999999"),
                "not a number",
            ),
            (
                good.replace("disk.raw.zst", "../etc/passwd"),
                "plain file name",
            ),
            (good.replace("disk.raw.zst", ".hidden"), "plain file name"),
            (
                good.replace(&"ab".repeat(32), &"AB".repeat(32)),
                "64 lowercase",
            ),
            (good.replace("qemu", "qe mu"), "bad `profile=`"),
            (good.replace("profile=qemu\n", "profile qemu\n"), "line 2"),
            ("x".repeat(MAX_LEN + 1), "at most"),
        ];
        for (text, want) in cases {
            let e = Manifest::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        assert_eq!(Manifest::parse(&[0xff, 0xfe]), Err(Error::NotText));
    }
}
