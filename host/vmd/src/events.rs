//! The daemon's event bus (`GET /events`), after the engine's (packages/engine/src/events.rs):
//! what happens to containers, images and volumes is published here with dockerd's types,
//! actions and attributes, and each `/events` client gets the recent history (for `since`),
//! then the live events. The front end (docker-api's `events`) applies `since`/`until` and the
//! filters. One bus per [`crate::Daemon`] (not a global: a test process may run several).

use docker_api::events::EventMessage;
use docker_api::time::now_nanos;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use tokio::sync::{broadcast, mpsc};

/// How many past events `since` can reach (dockerd keeps 256).
const HISTORY: usize = 1024;

pub struct Bus {
    history: Mutex<VecDeque<EventMessage>>,
    live: broadcast::Sender<EventMessage>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus {
            history: Mutex::new(VecDeque::with_capacity(64)),
            live: broadcast::channel(1024).0,
        }
    }
}

impl Bus {
    /// One event now: `kind` is Docker's `Type` (container, image, volume), `action` its
    /// `Action`, `id` the actor's id.
    pub fn publish(&self, kind: &str, action: &str, id: &str, attrs: BTreeMap<String, String>) {
        self.send(EventMessage::new(kind, action, id, attrs, now_nanos()));
    }

    /// A container event with the container's name, image and labels (as dockerd adds them)
    /// and `extra` (`exitCode`, `signal`, `oldName`, `execID`, ...).
    pub fn container(
        &self,
        id: &str,
        name: &str,
        image: &str,
        labels: Option<&BTreeMap<String, String>>,
        action: &str,
        extra: &[(&str, String)],
    ) {
        let mut attrs = labels.cloned().unwrap_or_default();
        attrs.insert("image".into(), image.into());
        attrs.insert("name".into(), name.into());
        for (k, v) in extra {
            attrs.insert((*k).to_string(), v.clone());
        }
        self.publish("container", action, id, attrs);
    }

    fn send(&self, e: EventMessage) {
        // Under the history lock: a subscriber sees each event once, in the history it
        // copied or on its live receiver.
        let mut h = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(e.clone());
        let _ = self.live.send(e);
    }

    /// Events from `since` (history) then live ones, until the receiver is dropped.
    pub fn subscribe(&self, since: Option<i128>) -> mpsc::Receiver<EventMessage> {
        let (tx, rx) = mpsc::channel(256);
        let (past, mut live) = {
            let h = self.history.lock().unwrap_or_else(PoisonError::into_inner);
            let past: Vec<EventMessage> = match since {
                Some(s) => h.iter().filter(|e| e.time_nano >= s).cloned().collect(),
                None => Vec::new(),
            };
            (past, self.live.subscribe())
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
}

/// `[(k, v)]` as event attributes.
pub fn attrs<const N: usize>(kv: [(&str, String); N]) -> BTreeMap<String, String> {
    kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn history_then_live() {
        let bus = Bus::default();
        let t0 = now_nanos();
        bus.publish("volume", "create", "v", attrs([("driver", "local".into())]));
        let mut rx = bus.subscribe(Some(t0));
        bus.container("c1", "web", "busybox", None, "start", &[]);
        let a = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        let b = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((a.kind.as_str(), a.action.as_str()), ("volume", "create"));
        assert_eq!((b.kind.as_str(), b.action.as_str()), ("container", "start"));
        assert_eq!(b.actor.attributes["name"], "web");
        assert_eq!(b.from.as_deref(), Some("busybox"));
        // Without `since`: live events only.
        let mut live = bus.subscribe(None);
        bus.publish("image", "tag", "sha256:x", attrs([("name", "b:1".into())]));
        let e = tokio::time::timeout(Duration::from_secs(5), live.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.action, "tag");
    }
}
