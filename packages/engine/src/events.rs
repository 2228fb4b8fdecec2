//! The engine's event bus (`GET /events`): every part of the engine publishes what happens
//! with one call, and each `/events` client gets the recent history (for `since`) then the
//! live events.
//!
//! To publish, from anywhere in the engine:
//!
//! ```ignore
//! crate::events::publish("volume", "create", &name, [("driver", "local")]);
//! crate::events::publish("network", "connect", &net_id, [("container", id), ("name", net_name),
//! ("type", "bridge")]);
//! ```
//!
//! `kind` is Docker's event `Type` (container, image, volume, network, daemon), `action` its
//! `Action` (create, destroy, mount, unmount, connect, disconnect, remove, ...), `id` the
//! actor's id (a volume's name, a network's id) and the attributes Docker gives that kind
//! (a volume's `driver`; a network's `name` and `type`; for connect/disconnect the
//! `container` id). Container events go through [`container`], which adds the container's
//! name, image and labels as dockerd does.

use crate::containers::Record;
use docker_api::events::EventMessage;
use docker_api::time::now_nanos;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use tokio::sync::{broadcast, mpsc};

/// How many past events `since` can reach (dockerd keeps 256).
const HISTORY: usize = 1024;

struct Bus {
    history: Mutex<VecDeque<EventMessage>>,
    live: broadcast::Sender<EventMessage>,
}

fn bus() -> &'static Bus {
    static BUS: OnceLock<Bus> = OnceLock::new();
    BUS.get_or_init(|| Bus {
        history: Mutex::new(VecDeque::with_capacity(HISTORY)),
        live: broadcast::channel(1024).0,
    })
}

/// Publishes one event now (see the module's documentation for what to pass).
pub fn publish<K, V>(
    kind: &str,
    action: &str,
    id: &str,
    attributes: impl IntoIterator<Item = (K, V)>,
) where
    K: Into<String>,
    V: Into<String>,
{
    let attrs: BTreeMap<String, String> = attributes
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    send(EventMessage::new(kind, action, id, attrs, now_nanos()));
}

fn send(e: EventMessage) {
    let b = bus();
    // Under the history lock, so that a subscriber sees each event once: in the history it
    // copied or on its live receiver.
    let mut h = b.history.lock().unwrap_or_else(|p| p.into_inner());
    if h.len() == HISTORY {
        h.pop_front();
    }
    h.push_back(e.clone());
    let _ = b.live.send(e);
}

/// A container event: the container's name, image and labels, plus `extra` (`exitCode`,
/// `signal`, `oldName`, `execID`, ...).
pub fn container(r: &Record, action: &str, extra: &[(&str, String)]) {
    let mut attrs: BTreeMap<String, String> = r.config.labels.clone().unwrap_or_default();
    attrs.insert("image".into(), r.image.clone());
    attrs.insert("name".into(), r.name.clone());
    for (k, v) in extra {
        attrs.insert((*k).to_string(), v.clone());
    }
    send(EventMessage::new(
        "container",
        action,
        &r.id,
        attrs,
        now_nanos(),
    ));
}

/// Events from `since` (history) then live ones, until the receiver is dropped.
pub fn subscribe(since: Option<i128>) -> mpsc::Receiver<EventMessage> {
    let b = bus();
    let (tx, rx) = mpsc::channel(256);
    let (past, mut live) = {
        let h = b.history.lock().unwrap_or_else(|p| p.into_inner());
        let past: Vec<EventMessage> = match since {
            Some(s) => h.iter().filter(|e| e.time_nano >= s).cloned().collect(),
            None => Vec::new(),
        };
        (past, b.live.subscribe())
    };
    tokio::spawn(async move {
        for e in past {
            if tx.send(e).await.is_err() {
                return;
            }
        }
        loop {
            let e = tokio::select! {
                e = live.recv() => e,
                _ = tx.closed() => return,
            };
            match e {
                Ok(e) => {
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn history_then_live() {
        let t0 = now_nanos();
        publish("volume", "create", "test-bus-a", [("driver", "local")]);
        let mut rx = subscribe(Some(t0));
        publish("volume", "destroy", "test-bus-a", [("driver", "local")]);
        let mut got = Vec::new();
        while got.len() < 2 {
            let e = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
            // Other tests publish on the same bus.
            if e.actor.id == "test-bus-a" {
                got.push(e.action);
            }
        }
        assert_eq!(got, ["create", "destroy"]);
        let mut live = subscribe(None);
        publish("network", "create", "test-bus-b", [("name", "n")]);
        let e = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                let e = live.recv().await.unwrap();
                if e.actor.id == "test-bus-b" {
                    return e;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(e.kind, "network");
        assert_eq!(e.actor.attributes["name"], "n");
        assert!(e.status.is_none());
    }
}
