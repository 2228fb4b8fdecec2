//! Where the shared build cache's settings come from: the flags of `build` and `image`, the
//! environment, `~/.config/axion/config.toml`, and docker's stored logins.
//!
//! ```toml
//! [build-cache]
//! registry = "127.0.0.1:5000/axion/build-cache"
//! push = true                          # also push what the registry lacks
//! sign-key = "/path/cache.key"         # sign what this machine pushes
//! trusted-keys = ["/path/cache.pub"]   # use only entries one of these keys signed
//! timeout = 20                         # seconds the registry has to answer a request
//! ```
//!
//! The environment wins over the file: `AXION_BUILD_CACHE`, `AXION_BUILD_CACHE_PUSH`,
//! `AXION_BUILD_CACHE_SIGN_KEY`, `AXION_BUILD_CACHE_TRUSTED_KEYS` (paths separated by `:`),
//! `AXION_BUILD_CACHE_TIMEOUT`; the flags win over both. A setting that does not parse, or a
//! key that cannot be read, means no shared cache at all (a warning): never a cache that
//! trusts less than it was told to.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use registry::Credentials;
use serde_json::Value;

use super::Remote;

pub const ENV: &str = "AXION_BUILD_CACHE";
pub const ENV_PUSH: &str = "AXION_BUILD_CACHE_PUSH";
pub const ENV_SIGN_KEY: &str = "AXION_BUILD_CACHE_SIGN_KEY";
pub const ENV_TRUSTED_KEYS: &str = "AXION_BUILD_CACHE_TRUSTED_KEYS";
pub const ENV_TIMEOUT: &str = "AXION_BUILD_CACHE_TIMEOUT";

/// The flags of `build` and `image`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CacheArgs {
    /// A shared build cache in an OCI registry: packages found there are pulled (verified)
    /// instead of built. Default: $AXION_BUILD_CACHE, or build-cache.registry in
    /// ~/.config/axion/config.toml.
    #[arg(long = "cache", value_name = "REGISTRY/REPOSITORY")]
    pub cache: Option<String>,
    /// Also push packages to the shared cache when it lacks them (read-only otherwise).
    #[arg(long)]
    pub cache_push: bool,
    /// Sign the entries pushed to the shared cache with this private key (`cargo xtask
    /// keygen`); machines that trust its public key use them.
    #[arg(long = "sign-key", value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
}

impl CacheArgs {
    /// Makes the flags this run's setting: the build options of every step read it
    /// ([`Remote::configured`]) as they read the environment.
    pub fn apply(&self) -> Result<()> {
        if let Some(c) = &self.cache {
            Remote::parse(c, false)?;
            // Set before any thread starts (set_var is unsafe from edition 2024 on).
            std::env::set_var(ENV, c);
        }
        if self.cache_push {
            std::env::set_var(ENV_PUSH, "1");
        }
        if let Some(k) = &self.sign_key {
            crate::publish::sign::load_key(k)?;
            std::env::set_var(ENV_SIGN_KEY, k);
        }
        Ok(())
    }
}

/// Flag-less settings: `env` (a lookup of the variables above) wins over the config file.
pub fn from_settings(
    env: &dyn Fn(&str) -> Option<String>,
    file: Option<&str>,
) -> Result<Option<Remote>> {
    let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let truthy = |v: &str| matches!(v.trim(), "1" | "true" | "yes");
    let (mut reg, mut push, mut sign_key, mut trusted, mut timeout) =
        (None, false, None, Vec::new(), None);
    if let Some(text) = file {
        let t: toml::Value = text.parse().context("~/.config/axion/config.toml")?;
        if let Some(c) = t.get("build-cache") {
            let str_of = |k: &str| c.get(k).and_then(|v| v.as_str()).map(str::to_owned);
            reg = str_of("registry");
            push = c.get("push").and_then(|v| v.as_bool()).unwrap_or(false);
            sign_key = str_of("sign-key").map(PathBuf::from);
            if let Some(keys) = c.get("trusted-keys") {
                let keys = keys
                    .as_array()
                    .context("build-cache.trusted-keys is not a list of paths")?;
                for k in keys {
                    let k = k
                        .as_str()
                        .context("build-cache.trusted-keys holds a non-string")?;
                    trusted.push(PathBuf::from(k));
                }
            }
            if let Some(t) = c.get("timeout") {
                let t = t
                    .as_integer()
                    .filter(|t| *t > 0)
                    .context("build-cache.timeout is not a number of seconds")?;
                timeout = Some(t as u64);
            }
        }
    }
    if let Some(e) = env(ENV) {
        reg = Some(e);
    }
    if let Some(p) = env(ENV_PUSH) {
        push = truthy(&p);
    }
    if let Some(k) = env(ENV_SIGN_KEY) {
        sign_key = Some(PathBuf::from(k));
    }
    if let Some(k) = env(ENV_TRUSTED_KEYS) {
        trusted = k
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
    }
    if let Some(t) = env(ENV_TIMEOUT) {
        let t: u64 = t
            .trim()
            .parse()
            .ok()
            .filter(|t| *t > 0)
            .with_context(|| format!("{ENV_TIMEOUT}={t} is not a number of seconds"))?;
        timeout = Some(t);
    }
    let Some(reg) = reg else {
        return Ok(None);
    };
    let mut r = Remote::parse(&reg, push)?;
    if let Some(k) = sign_key {
        r.signer = Some(Arc::new(crate::publish::sign::load_key(&k)?));
    }
    r.trusted = super::trust::load_trusted(&trusted)?;
    if let Some(t) = timeout {
        r.timeout = Duration::from_secs(t);
    }
    Ok(Some(r))
}

pub fn config_file() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".config")))
        .map(|d| d.join("axion/config.toml"))
}

/// docker's stored login for `registry` (`auths` of `$DOCKER_CONFIG/config.json` or
/// `~/.docker/config.json`, keyed by host or URL).
pub fn credentials(registry: &str) -> Option<Credentials> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".docker")))?;
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    credentials_in(&text, registry)
}

fn credentials_in(config: &str, registry: &str) -> Option<Credentials> {
    use base64::Engine as _;
    let v: Value = serde_json::from_str(config).ok()?;
    let auths = v.get("auths")?.as_object()?;
    let entry = auths.iter().find_map(|(k, e)| {
        let host = k
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        (host == registry).then_some(e)
    })?;
    let mut c = Credentials::default();
    if let Some(a) = entry.get("auth").and_then(|a| a.as_str()) {
        let raw = base64::engine::general_purpose::STANDARD.decode(a).ok()?;
        let (u, p) = std::str::from_utf8(&raw).ok()?.split_once(':')?;
        c.username = u.to_owned();
        c.password = p.to_owned();
    }
    if let Some(t) = entry.get("identitytoken").and_then(|t| t.as_str()) {
        c.identity_token = t.to_owned();
    }
    (!c.is_empty()).then_some(c)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn settings_flag_env_and_file() {
        let file = "[build-cache]\nregistry = \"reg.example:5000/axion/cache\"\npush = true\n";
        let r = from_settings(&env_of(&[]), Some(file)).unwrap().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.push),
            ("reg.example:5000", "axion/cache", true)
        );
        assert!(r.trusted.is_empty() && r.signer.is_none());
        assert_eq!(r.timeout, super::super::ANSWER_TIMEOUT);
        let env = env_of(&[
            (ENV, "127.0.0.1:5000/c"),
            (ENV_PUSH, "0"),
            (ENV_TIMEOUT, "3"),
        ]);
        let r = from_settings(&env, Some(file)).unwrap().unwrap();
        assert_eq!((r.registry.as_str(), r.push), ("127.0.0.1:5000", false));
        assert_eq!(r.timeout, Duration::from_secs(3));
        assert!(from_settings(&env_of(&[]), None).unwrap().is_none());
        assert!(from_settings(&env_of(&[(ENV, "no-repository")]), None).is_err());
        assert!(from_settings(&env_of(&[(ENV, "h/c"), (ENV_TIMEOUT, "soon")]), None).is_err());
        assert!(Remote::parse("h/Upper", false).is_err());
    }

    #[test]
    fn keys_that_cannot_be_read_mean_no_cache_not_a_trusting_one() {
        let d = tempfile::tempdir().unwrap();
        let (private, public) = signing::SigningKey::generate().unwrap();
        let (key, pubk) = (d.path().join("c.key"), d.path().join("c.pub"));
        std::fs::write(&key, private).unwrap();
        std::fs::write(&pubk, public).unwrap();
        let file = format!(
            "[build-cache]\nregistry = \"h:1/c\"\nsign-key = \"{}\"\ntrusted-keys = [\"{}\"]\n",
            key.display(),
            pubk.display()
        );
        let r = from_settings(&env_of(&[]), Some(&file)).unwrap().unwrap();
        assert_eq!(r.trusted.len(), 1);
        assert!(r.signer.is_some());
        let missing = d.path().join("missing.pub").display().to_string();
        let env = env_of(&[(ENV_TRUSTED_KEYS, &missing)]);
        assert!(from_settings(&env, Some(&file)).is_err());
        let bad = file.replace("trusted-keys = [", "trusted-keys = [1, ");
        assert!(from_settings(&env_of(&[]), Some(&bad)).is_err());
    }

    #[test]
    fn docker_config_logins() {
        // "user:secret"
        let cfg = r#"{"auths":{"https://reg.example:5000/v2/":{"auth":"dXNlcjpzZWNyZXQ="}}}"#;
        let c = credentials_in(cfg, "reg.example:5000").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("user", "secret")
        );
        assert!(credentials_in(cfg, "other:5000").is_none());
    }
}
