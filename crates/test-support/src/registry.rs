//! A real registry on 127.0.0.1 (Debian's `docker-registry`) and images built from a busybox
//! binary (the project's own package: `xtask::build::project_busybox`), pushed over the
//! registry HTTP API (OCI manifests, gzip or zstd layers, and an image index) — for the tests
//! and the bench; no other registry is reachable here. This is the tests' one push path; the
//! product's own (`cargo xtask publish`) is xtask/src/publish/oci.rs.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Registry {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl Registry {
    /// Starts `docker-registry serve` on a free 127.0.0.1 port with temp storage.
    pub fn start() -> Result<Registry> {
        let exe = "/usr/bin/docker-registry";
        if !Path::new(exe).exists() {
            bail!("{exe} is missing (apt-get install docker-registry)");
        }
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: \
                 {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )?;
        let child = Command::new(exe)
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {exe}"))?;
        let reg = Registry {
            port,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("http://127.0.0.1:{port}/v2/");
        loop {
            if let Ok(r) = reqwest::blocking::get(&url) {
                if r.status().is_success() {
                    return Ok(reg);
                }
            }
            if Instant::now() > deadline {
                bail!("registry did not answer {url} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The registry's storage folder (its `filesystem` driver's root), for tests that
    /// corrupt what it serves.
    pub fn storage(&self) -> std::path::PathBuf {
        self._dir.path().join("data")
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn push_blob(&self, repo: &str, data: &[u8]) -> Result<String> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
        let c = reqwest::blocking::Client::new();
        let r = c
            .post(format!("http://{}/v2/{repo}/blobs/uploads/", self.host()))
            .send()?;
        if r.status().as_u16() != 202 {
            bail!("upload start for {repo}: {}", r.status());
        }
        let loc = r
            .headers()
            .get("location")
            .context("no Location")?
            .to_str()?
            .to_string();
        let loc = if loc.starts_with('/') {
            format!("http://{}{loc}", self.host())
        } else {
            loc
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = c
            .put(format!("{loc}{sep}digest={digest}"))
            .header("Content-Type", "application/octet-stream")
            .body(data.to_vec())
            .send()?;
        if r.status().as_u16() != 201 {
            bail!("blob upload for {repo}: {}", r.status());
        }
        Ok(digest)
    }

    fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<String> {
        let r = reqwest::blocking::Client::new()
            .put(format!(
                "http://{}/v2/{repo}/manifests/{reference}",
                self.host()
            ))
            .header("Content-Type", media_type)
            .body(body.to_vec())
            .send()?;
        if r.status().as_u16() != 201 {
            bail!(
                "manifest push {repo}:{reference}: {} {}",
                r.status(),
                r.text().unwrap_or_default()
            );
        }
        Ok(format!("sha256:{}", hex::encode(Sha256::digest(body))))
    }

    /// Pushes an image of `busybox` (the binary, see [`crate::busybox::layer`]) as
    /// `repo:tag`; returns the manifest digest.
    pub fn push_busybox(
        &self,
        busybox: &Path,
        repo: &str,
        tag: &str,
        compression: Compression,
    ) -> Result<String> {
        self.push_busybox_arch(busybox, repo, tag, compression, "amd64")
    }

    /// Like [`push_busybox`] with the config claiming `arch` (for index selection tests).
    pub fn push_busybox_arch(
        &self,
        busybox: &Path,
        repo: &str,
        tag: &str,
        compression: Compression,
        arch: &str,
    ) -> Result<String> {
        let tar = crate::busybox::layer(busybox, &format!("{repo}:{tag} {arch}\n"))?;
        self.push_image(repo, tag, &tar, compression, arch)
    }

    /// Pushes `repo:tag`: one image of the uncompressed layer `tar` (whatever it holds: the
    /// tests push hostile layers too), compressed as asked; returns the manifest digest.
    pub fn push_image(
        &self,
        repo: &str,
        tag: &str,
        tar: &[u8],
        compression: Compression,
        arch: &str,
    ) -> Result<String> {
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(tar)));
        let (layer, layer_mt) = match compression {
            Compression::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(tar)?;
                (gz.finish()?, "application/vnd.oci.image.layer.v1.tar+gzip")
            }
            Compression::Zstd => (
                zstd::encode_all(tar, 3)?,
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        let config = serde_json::json!({
            "architecture": arch, "os": "linux", "created": "2026-01-01T00:00:00Z",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["sh"]
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]}
        });
        let config = serde_json::to_vec(&config)?;
        let cd = self.push_blob(repo, &config)?;
        let ld = self.push_blob(repo, &layer)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": cd,
                "size": config.len()
            },
            "layers": [{"mediaType": layer_mt, "digest": ld, "size": layer.len()}]
        });
        let body = serde_json::to_vec(&manifest)?;
        self.push_manifest(
            repo,
            tag,
            "application/vnd.oci.image.manifest.v1+json",
            &body,
        )
    }

    /// Pushes `to_repo:to_tag`: the image `repo:tag` (a manifest, not an index) with its
    /// config's `Cmd` set to `cmd`, so that the two images share their layers but not their
    /// id (for layer-store garbage collection tests); returns the manifest digest.
    pub fn push_variant(
        &self,
        repo: &str,
        tag: &str,
        to_repo: &str,
        to_tag: &str,
        cmd: &str,
    ) -> Result<String> {
        let c = reqwest::blocking::Client::new();
        let get = |path: String, accept: &str| -> Result<Vec<u8>> {
            let r = c
                .get(format!("http://{}/v2/{path}", self.host()))
                .header("Accept", accept)
                .send()?;
            if !r.status().is_success() {
                bail!("GET /v2/{path}: {}", r.status());
            }
            Ok(r.bytes()?.to_vec())
        };
        let mt = "application/vnd.oci.image.manifest.v1+json";
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&get(format!("{repo}/manifests/{tag}"), mt)?)?;
        let cd = manifest["config"]["digest"]
            .as_str()
            .context("manifest without a config")?
            .to_string();
        let mut config: serde_json::Value =
            serde_json::from_slice(&get(format!("{repo}/blobs/{cd}"), "*/*")?)?;
        config["config"]["Cmd"] = serde_json::json!([cmd]);
        let config = serde_json::to_vec(&config)?;
        let new = self.push_blob(to_repo, &config)?;
        if new == cd {
            bail!(
                "push_variant: {repo}:{tag} has Cmd [{cmd:?}] already; pick another command so \
                 the images differ"
            );
        }
        manifest["config"]["digest"] = new.into();
        manifest["config"]["size"] = config.len().into();
        for l in manifest["layers"]
            .as_array()
            .context("manifest without layers")?
        {
            let d = l["digest"].as_str().context("layer without a digest")?;
            self.push_blob(to_repo, &get(format!("{repo}/blobs/{d}"), "*/*")?)?;
        }
        let media_type = manifest["mediaType"].as_str().unwrap_or(mt).to_string();
        self.push_manifest(
            to_repo,
            to_tag,
            &media_type,
            &serde_json::to_vec(&manifest)?,
        )
    }

    /// Pushes an image index for `tag` pointing at an existing manifest (as linux/amd64)
    /// and an arm64 entry listed first (a `busybox` image whose config says arm64).
    pub fn push_index(
        &self,
        busybox: &Path,
        repo: &str,
        tag: &str,
        amd64_manifest: &str,
    ) -> Result<String> {
        let size_of = |d: &str| -> Result<usize> {
            Ok(reqwest::blocking::Client::new()
                .get(format!("http://{}/v2/{repo}/manifests/{d}", self.host()))
                .header("Accept", "application/vnd.oci.image.manifest.v1+json")
                .send()?
                .bytes()?
                .len())
        };
        let size = size_of(amd64_manifest)?;
        let arm = self.push_busybox_arch(
            busybox,
            repo,
            &format!("{tag}-arm64"),
            Compression::Gzip,
            "arm64",
        )?;
        let arm_size = size_of(&arm)?;
        let index = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm,
                 "size": arm_size, "platform": {"architecture": "arm64", "os": "linux"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                 "digest": amd64_manifest, "size": size,
                 "platform": {"architecture": "amd64", "os": "linux"}}
            ]
        });
        self.push_manifest(
            repo,
            tag,
            "application/vnd.oci.image.index.v1+json",
            &serde_json::to_vec(&index)?,
        )
    }
}

#[derive(Clone, Copy)]
pub enum Compression {
    Gzip,
    Zstd,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The push path against the real registry (Debian's docker-registry): a busybox image,
    /// a variant sharing its layer, and an index, read back over the registry API. Needs
    /// /usr/bin/docker-registry and a static busybox at /bin/busybox: it fails, loudly, where
    /// they are missing (`.ci/run` installs both).
    #[test]
    fn pushes_images_a_registry_serves_back() {
        let bb = Path::new("/bin/busybox");
        assert!(
            bb.is_file(),
            "{} is missing (apt-get install busybox-static)",
            bb.display()
        );
        let reg = Registry::start().unwrap();
        let d = reg
            .push_busybox(bb, "t/bb", "v1", Compression::Zstd)
            .unwrap();
        let v = reg
            .push_variant("t/bb", "v1", "t/other", "v2", "true")
            .unwrap();
        assert_ne!(d, v);
        let i = reg.push_index(bb, "t/bb", "multi", &d).unwrap();
        let get = |path: &str, accept: &str| {
            let r = reqwest::blocking::Client::new()
                .get(format!("http://{}/v2/{path}", reg.host()))
                .header("Accept", accept)
                .send()
                .unwrap();
            assert!(r.status().is_success(), "GET {path}: {}", r.status());
            r.bytes().unwrap().to_vec()
        };
        let oci = "application/vnd.oci.image.manifest.v1+json";
        let m: serde_json::Value = serde_json::from_slice(&get("t/bb/manifests/v1", oci)).unwrap();
        assert_eq!(
            m["layers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        let index = get(
            "t/bb/manifests/multi",
            "application/vnd.oci.image.index.v1+json",
        );
        assert_eq!(format!("sha256:{}", hex::encode(Sha256::digest(&index))), i);
        let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
        assert_eq!(index["manifests"][1]["digest"], d.as_str());
        assert_eq!(index["manifests"][0]["platform"]["architecture"], "arm64");
        let layer = m["layers"][0]["digest"].as_str().unwrap();
        let blob = get(&format!("t/other/blobs/{layer}"), "*/*");
        let tar = zstd::decode_all(&blob[..]).unwrap();
        let mut names = Vec::new();
        for e in tar::Archive::new(&tar[..]).entries().unwrap() {
            names.push(e.unwrap().path().unwrap().to_string_lossy().into_owned());
        }
        for n in [
            "bin/busybox",
            "bin/sh",
            "etc/passwd",
            "etc/axion-test-image",
        ] {
            assert!(
                names.iter().any(|x| x == n),
                "{n} not in the layer: {names:?}"
            );
        }
    }
}
