//! A real registry on 127.0.0.1 (Debian's `docker-registry`) and images built from the
//! project's own busybox package, pushed over the registry HTTP API (OCI manifests, gzip or zstd
//! layers, and an image index) — for the tests and the bench; no other registry is reachable here.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
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
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
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

    /// Pushes a busybox image as `repo:tag`; returns the manifest digest.
    pub fn push_busybox(&self, repo: &str, tag: &str, compression: Compression) -> Result<String> {
        self.push_busybox_arch(repo, tag, compression, "amd64")
    }

    /// Like [`push_busybox`] with the config claiming `arch` (for index selection tests).
    pub fn push_busybox_arch(
        &self,
        repo: &str,
        tag: &str,
        compression: Compression,
        arch: &str,
    ) -> Result<String> {
        let tar = busybox_layer(&format!("{repo}:{tag} {arch}\n"))?;
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
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]}
        });
        let config = serde_json::to_vec(&config)?;
        let cd = self.push_blob(repo, &config)?;
        let ld = self.push_blob(repo, &layer)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
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
            bail!("push_variant: {repo}:{tag} has Cmd [{cmd:?}] already; pick another command so the images differ");
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
    /// and an arm64 entry listed first (whose config says arm64).
    pub fn push_index(&self, repo: &str, tag: &str, amd64_manifest: &str) -> Result<String> {
        let size_of = |d: &str| -> Result<usize> {
            Ok(reqwest::blocking::Client::new()
                .get(format!("http://{}/v2/{repo}/manifests/{d}", self.host()))
                .header("Accept", "application/vnd.oci.image.manifest.v1+json")
                .send()?
                .bytes()?
                .len())
        };
        let size = size_of(amd64_manifest)?;
        let arm =
            self.push_busybox_arch(repo, &format!("{tag}-arm64"), Compression::Gzip, "arm64")?;
        let arm_size = size_of(&arm)?;
        let index = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm, "size": arm_size, "platform": {"architecture": "arm64", "os": "linux"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd64_manifest, "size": size, "platform": {"architecture": "amd64", "os": "linux"}}
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

/// The project's own busybox: the `busybox` package's staged binary (static, musl), built
/// now unless the cache has it.
pub fn project_busybox() -> Result<PathBuf> {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(p) = PATH.get() {
        return Ok(p.clone());
    }
    let layout = crate::layout::Layout::discover();
    let recipes = crate::recipe::RecipeSet::load(&layout.recipes())?;
    let staged = crate::build::build_packages(
        &layout,
        &recipes,
        &["busybox".to_string()],
        &crate::build::BuildOptions::default(),
    )
    .context("building the project's busybox for the test images")?;
    let tree = staged
        .into_iter()
        .find(|s| s.name == "busybox")
        .context("the busybox package staged nothing")?
        .tree;
    let path = tree.join("bin/busybox");
    if !path.is_file() {
        bail!("the busybox package has no {}", path.display());
    }
    Ok(PATH.get_or_init(|| path).clone())
}

/// A root filesystem: the project's busybox ([`project_busybox`]) plus applet symlinks,
/// /etc/passwd, /tmp, and /etc/axion-test-image holding `marker` (so each test image has its
/// own layer).
pub fn busybox_layer(marker: &str) -> Result<Vec<u8>> {
    let bb = project_busybox()?;
    let data = std::fs::read(&bb).with_context(|| format!("reading {}", bb.display()))?;
    let list = Command::new(&bb)
        .arg("--list")
        .output()
        .with_context(|| format!("{} --list", bb.display()))?;
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, p: &str, mode: u32| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, p, std::io::empty())?;
        Ok(())
    };
    for (d, m) in [
        ("bin/", 0o755),
        ("etc/", 0o755),
        ("tmp/", 0o1777),
        ("root/", 0o700),
        ("home/", 0o755),
    ] {
        dir(&mut b, d, m)?;
    }
    let file = |b: &mut tar::Builder<Vec<u8>>, p: &str, mode: u32, content: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_mode(mode);
        h.set_size(content.len() as u64);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, p, content)?;
        Ok(())
    };
    file(&mut b, "bin/busybox", 0o755, &data)?;
    file(
        &mut b,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
    )?;
    file(&mut b, "etc/axion-test-image", 0o644, marker.as_bytes())?;
    file(&mut b, "etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_mtime(1_700_000_000);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    Ok(b.into_inner()?)
}
