//! `containerd-shim-axion-v1`: containerd's runtime `io.containerd.axion.v1`, where every
//! sandbox (a Kubernetes pod, or one `ctr run` container) runs in its own VM, cloned from
//! axion-vmd's saved template (crates/vm-clone), and every container of the sandbox is a
//! container of the guest engine in that VM.
//!
//! containerd runs the binary three ways (the runtime v2 protocol, handled by the
//! `containerd-shim` crate of containerd's rust-extensions): `start` (spawn the sandbox's
//! shim server, or name the running one), the server itself (the task service, [`task`]),
//! and `delete` (clean up after a shim that died). One more, `containerd-shim-axion-v1
//! prepare`, builds the template now rather than at the first container. Settings:
//! [`config`]; how a container's rootfs reaches its VM: [`sandbox`]; what of the OCI spec
//! is honoured: [`spec`]; the sandbox's cgroup limits, `update` and `stats`:
//! `task::resources`; docs/containerd.md is the user guide.

mod config;
mod sandbox;
mod spec;
mod stdio;
mod task;

/// The runtime's name in containerd's configuration.
const RUNTIME: &str = "io.containerd.axion.v1";

fn main() {
    if std::env::args().nth(1).as_deref() == Some("prepare") {
        if let Err(e) = prepare() {
            eprintln!("containerd-shim-axion-v1: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("containerd-shim-axion-v1: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    // QEMU and qemu-img are the shim's children, waited for by their own handles: the
    // crate's reaper would take their exit statuses from them.
    let opts = containerd_shim::Config {
        no_reaper: true,
        ..Default::default()
    };
    rt.block_on(containerd_shim::asynchronous::run::<task::Shim>(
        RUNTIME,
        Some(opts),
    ));
}

/// `prepare`: the template for the settings, built when missing.
fn prepare() -> anyhow::Result<()> {
    let cfg = config::Config::load()?;
    let t = sandbox::template(&cfg)?;
    println!("template ready in {}", t.dir.display());
    Ok(())
}
