//! API version negotiation. The CLI reads `API-Version` from `/_ping` and uses the lower of
//! its own and ours; requests then carry a `/vX.YZ` prefix, which we accept down to
//! [`MIN_API_VERSION`].

pub const API_VERSION: &str = "1.47";
pub const MIN_API_VERSION: &str = "1.24";

/// Parses "1.47" into (1, 47).
pub fn parse(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Whether a requested version is one we serve.
pub fn supported(v: &str) -> bool {
    match (parse(v), parse(MIN_API_VERSION), parse(API_VERSION)) {
        (Some(v), Some(min), Some(max)) => v >= min && v <= max,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn negotiation_range() {
        assert!(supported("1.47"));
        assert!(supported("1.24"));
        assert!(supported("1.41"));
        assert!(!supported("1.23"));
        assert!(!supported("1.50"));
        assert!(!supported("abc"));
        assert_eq!(parse("1.9"), Some((1, 9)));
        assert!(parse("1.47") > parse("1.9"));
    }
}
