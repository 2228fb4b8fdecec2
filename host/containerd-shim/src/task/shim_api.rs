//! The shim binary's side of containerd's runtime v2 protocol: `start` (spawn the
//! sandbox's shim server, or name the running one), `delete` (clean up after a shim that
//! died) and the server's task service ([`Service`]).

use super::{resources, Inner, Service};
use crate::config::Config;
use crate::sandbox;
use crate::spec::Spec;
use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim as ShimApi};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::{Config as ShimConfig, DeleteResponse, Flags, StartOpts};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The shim binary's side of containerd's runtime v2 protocol (`start`, `delete`, serve).
pub struct Shim {
    exit: Arc<ExitSignal>,
    id: String,
    namespace: String,
}

#[async_trait]
impl ShimApi for Shim {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut ShimConfig) -> Self {
        Shim {
            exit: Arc::new(ExitSignal::default()),
            id: args.id.clone(),
            namespace: args.namespace.clone(),
        }
    }

    /// One shim (and so one VM) per sandbox: the containers of a pod name their sandbox in
    /// CRI's annotation, and containerd reuses the running shim whose socket that names.
    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let grouping = Spec::read(Path::new("."))
            .map(|s| s.sandbox_id(&opts.id).to_string())
            .unwrap_or_else(|_| opts.id.clone());
        let address = spawn(opts, &grouping, Vec::new()).await?;
        // The server removes its socket at exit by this file (the crate's convention).
        containerd_shim::asynchronous::util::write_str_to_file("address", &address).await?;
        Ok(address)
    }

    /// After a shim died: what it left of this container (its share entry and rootfs
    /// mounts; the VM when this was its sandbox's own container).
    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle = std::env::current_dir().unwrap_or_default();
        if let (Ok(spec), Ok(cfg)) = (Spec::read(&bundle), Config::load()) {
            let sb = spec.sandbox_id(&self.id).to_string();
            let dir = sandbox::dir(&cfg.state_dir, &self.namespace, &sb);
            sandbox::unpublish(&dir, &self.id);
            if sb == self.id {
                sandbox::kill_leftover(&dir);
                resources::remove_leftover(&dir);
            }
        }
        sandbox::unmount(&bundle.join("rootfs"));
        let mut r = DeleteResponse::new();
        r.set_exit_status(128 + libc::SIGKILL as u32);
        r.exited_at = MessageField::some(Timestamp::now());
        Ok(r)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        Service(Arc::new(Inner {
            namespace: self.namespace.clone(),
            exit: self.exit.clone(),
            publisher,
            config: Mutex::new(None),
            vm: tokio::sync::Mutex::new(None),
            containers: Mutex::new(HashMap::new()),
            limits: Mutex::new(Default::default()),
        }))
    }
}
