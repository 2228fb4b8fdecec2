//! `/info`'s `Labels` from small `key=value` files the host keeps (the update agent's state
//! file, `/etc/axion/release`): what `docker info` shows under "Labels:" as `PREFIX+key=value`.
//!
//! The files are written by other programs, so they are outside input: a line that is not
//! `key=value`, a key outside `[a-z0-9._-]`, a value with control characters or more than
//! [`MAX_VALUE`] bytes is skipped, and at most [`MAX_LABELS`] labels are taken. A later line
//! with the same key wins.

use std::collections::BTreeMap;

/// The most labels one file gives.
pub const MAX_LABELS: usize = 32;
/// The longest key or value kept, in bytes.
pub const MAX_VALUE: usize = 256;

/// `PREFIX+key=value` for every well-formed line of `text`, sorted by key.
pub fn parse(text: &str, prefix: &str) -> Vec<String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        let key_ok = !key.is_empty()
            && key.len() <= MAX_VALUE
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        let value_ok = value.len() <= MAX_VALUE && !value.chars().any(char::is_control);
        if !key_ok || !value_ok || (out.len() >= MAX_LABELS && !out.contains_key(key)) {
            continue;
        }
        out.insert(key.to_owned(), value.to_owned());
    }
    out.into_iter()
        .map(|(k, v)| format!("{prefix}{k}={v}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_lines_become_prefixed_labels() {
        let text = "version=0.2.0\nprofile=qemu\n\nupdate.state=pending\nupdate.last-failed=\n";
        assert_eq!(
            parse(text, "axion."),
            [
                "axion.profile=qemu",
                "axion.update.last-failed=",
                "axion.update.state=pending",
                "axion.version=0.2.0"
            ]
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let long = "x".repeat(MAX_VALUE + 1);
        let text = format!(
            "no equals sign\nUpper=1\n=empty\nbad key=1\nctl=a\u{7}b\nlong={long}\nok=1\nok=2\n"
        );
        assert_eq!(parse(&text, "p."), ["p.ok=2"]);
    }

    #[test]
    fn at_most_max_labels() {
        let text: String = (0..100).map(|i| format!("k{i}=v\n")).collect();
        assert_eq!(parse(&text, "").len(), MAX_LABELS);
    }
}
