//! One containerd with the axion shim, set up as a node would be, for the e2e test
//! (tests/e2e/containerd_shim.rs) and the bench (`cargo xtask bench --containerd-only`,
//! through the `containerd-bench` binary): the shim built from the workspace, its settings
//! and template (`prepare`) in a temporary directory, and Debian's containerd started with
//! its own root, state, socket and config there (never the host's own containerd), the
//! shim on its PATH, its CRI plugin on with the runtime handler `axion`, and the project's
//! busybox imported (as a plain image, and as the pods' sandbox image in CRI's namespace).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use test_support::docker::run_with_timeout;
use xtask::image::Bootable;
use xtask::profile::Format;

pub const RUNTIME: &str = "io.containerd.axion.v1";
/// containerd's CRI plugin keeps its containers and images in this namespace.
pub const CRI_NS: &str = "k8s.io";
/// The namespace of the plain `ctr` containers.
pub const CTR_NS: &str = "axion-test";
/// The pods' sandbox image (CRI's `sandbox_image`, a pause image elsewhere): busybox,
/// imported, so nothing is pulled; the shim runs nothing of it.
pub const PAUSE: &str = "localhost/axion-pause:1";

/// Why this host cannot run the setup (None: it can).
pub fn missing() -> Option<&'static str> {
    if !crate::have_qemu() {
        return Some("qemu-system-x86_64 is not installed");
    }
    if !(Path::new("/usr/bin/containerd").exists() && Path::new("/usr/bin/ctr").exists()) {
        return Some("containerd is not installed (Debian: apt-get install containerd)");
    }
    let qemu_img = Command::new("qemu-img").arg("--version").output();
    if !qemu_img.is_ok_and(|o| o.status.success()) {
        return Some("qemu-img (qemu-utils) is not installed");
    }
    // /proc/self belongs to the process's effective user.
    if !std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        return Some("containerd and the shim's mounts need root");
    }
    None
}

/// Builds the shim binary; its directory (for containerd's PATH).
pub fn shim_bin() -> Result<PathBuf> {
    let root = crate::layout().root;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "-p", "containerd-shim-axion"])
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!(
            "cargo build -p containerd-shim-axion: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let dir = target.join("debug");
    anyhow::ensure!(dir.join("containerd-shim-axion-v1").is_file());
    Ok(dir)
}

/// The shim's side: its binary, settings and template, in a temporary directory.
pub struct Node {
    /// Short (under /tmp): the shim's QEMU sockets live under the state directory.
    pub dir: tempfile::TempDir,
    /// The shim's `state_dir` (template, sandboxes).
    pub state: PathBuf,
    pub shim_config: PathBuf,
    /// The directory of the shim's binary.
    pub bin: PathBuf,
    /// Seconds `containerd-shim-axion-v1 prepare` took (template boot + save).
    pub template_secs: f64,
}

impl Node {
    /// The qemu profile's image (built when stale), the shim, its settings, and the
    /// template built first (what a node does once), so no container waits for a boot.
    pub fn prepare() -> Result<Node> {
        let Bootable::Kernel { kernel, initrd } = crate::image("qemu", Format::Initramfs)? else {
            bail!("the initramfs format is not a kernel and an initramfs");
        };
        let Bootable::Disk { path: disk, .. } = crate::image("qemu", Format::Qcow2)? else {
            bail!("the qcow2 format is not a disk");
        };
        let bin = shim_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("ctrd-")
            .tempdir_in("/tmp")?;
        let state = dir.path().join("axion");
        let shim_config = dir.path().join("shim.toml");
        std::fs::write(
            &shim_config,
            format!(
                "state_dir = \"{}\"\nkernel = \"{}\"\ninitrd = \"{}\"\ndisk = \"{}\"\n\
                 memory_mib = 512\ncpus = 1\naccel = \"tcg\"\n",
                state.display(),
                kernel.display(),
                initrd.display(),
                disk.display()
            ),
        )?;
        let t = Instant::now();
        let mut prep = Command::new(bin.join("containerd-shim-axion-v1"));
        prep.arg("prepare").env("AXION_SHIM_CONFIG", &shim_config);
        let o = run_with_timeout(prep, Duration::from_secs(600))?;
        if !o.status.success() {
            bail!("prepare: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(Node {
            dir,
            state,
            shim_config,
            bin,
            template_secs: t.elapsed().as_secs_f64(),
        })
    }
}

/// A containerd of the node's own; killed when dropped.
pub struct Containerd {
    child: Child,
    pub sock: PathBuf,
    pub log: PathBuf,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Containerd {
    /// Starts containerd in `node`'s directory and waits until it answers.
    pub fn start(node: &Node) -> Result<Containerd> {
        let dir = node.dir.path();
        let sock = dir.join("c.sock");
        let config = dir.join("config.toml");
        // A runtimes table of its own replaces containerd's built-in `runc` entry, and the
        // CRI plugin does not load when its default runtime is missing: axion is the
        // default here. No CNI plugin is installed: the pods use the node's network.
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
                 [debug]\n  level = \"info\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n\
                   sandbox_image = \"{PAUSE}\"\n\
                   disable_apparmor = true\n\
                   stream_server_address = \"127.0.0.1\"\n\
                   stream_server_port = \"0\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
                   bin_dir = \"{cni}/bin\"\n\
                   conf_dir = \"{cni}/conf\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
                   default_runtime_name = \"axion\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.axion]\n\
                   runtime_type = \"{RUNTIME}\"\n",
                cni = dir.join("cni").display(),
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = sock.display(),
            ),
        )?;
        let log = dir.join("containerd.log");
        let path = format!(
            "{}:{}",
            node.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new("/usr/bin/containerd")
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env("AXION_SHIM_CONFIG", &node.shim_config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?)
            .spawn()
            .context("starting containerd")?;
        let c = Containerd { child, sock, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c
            .run(&["version"], Duration::from_secs(10))
            .is_ok_and(|o| o.status.success())
        {
            if Instant::now() > deadline {
                bail!(
                    "containerd did not answer within 30 s: {}",
                    crate::tail(&c.log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(c)
    }

    /// `ctr` against this containerd in `namespace`.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&self.sock).args(["-n", namespace]);
        c.args(args);
        c
    }

    /// `ctr` in [`CTR_NS`], whatever its exit status.
    pub fn run(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        run_with_timeout(self.ctr(CTR_NS, args), timeout).with_context(|| format!("ctr {args:?}"))
    }

    /// `ctr` in [`CTR_NS`], which must succeed; its stdout.
    pub fn ok(&self, args: &[&str], timeout: Duration) -> Result<String> {
        self.ok_in(CTR_NS, args, timeout)
    }

    pub fn ok_in(&self, namespace: &str, args: &[&str], timeout: Duration) -> Result<String> {
        let o = run_with_timeout(self.ctr(namespace, args), timeout)
            .with_context(|| format!("ctr -n {namespace} {args:?}"))?;
        if !o.status.success() {
            bail!(
                "ctr {args:?}: {}\nstdout: {}\nstderr: {}\ncontainerd log: {}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                crate::tail(&self.log, 30)
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Imports the project's busybox (a `docker save` archive) into [`CTR_NS`]; its name.
    pub fn import_busybox(&self, dir: &Path) -> Result<String> {
        let bb = std::fs::read(crate::busybox())?;
        let tar = dir.join("busybox.tar");
        std::fs::write(&tar, crate::busybox_images::image_tar(&bb)?)?;
        self.ok(
            &["image", "import", &tar.display().to_string()],
            Duration::from_secs(120),
        )?;
        let images = self.ok(&["image", "ls", "-q"], Duration::from_secs(30))?;
        Ok(images
            .lines()
            .find(|l| l.ends_with("busybox:latest"))
            .with_context(|| format!("no busybox:latest after the import: {images}"))?
            .to_string())
    }

    /// Imports busybox as [`PAUSE`] into CRI's namespace.
    pub fn import_pause(&self, dir: &Path) -> Result<()> {
        let bb = std::fs::read(crate::busybox())?;
        let tar = dir.join("pause.tar");
        std::fs::write(
            &tar,
            crate::busybox_images::image_tar_as(&bb, PAUSE, &["sleep", "1000000"])?,
        )?;
        self.ok_in(
            CRI_NS,
            &["image", "import", &tar.display().to_string()],
            Duration::from_secs(120),
        )?;
        Ok(())
    }
}

/// Waits until the CRI sees [`PAUSE`] (it learns of an import from containerd's events).
pub fn wait_for_pause(cri: &test_support::cri::Cri) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let images = cri.image_refs()?;
        if images.iter().any(|i| i == PAUSE) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the CRI does not see {PAUSE}: {images:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
