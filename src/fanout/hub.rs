//! Per-collection wake-up signals. Each subscriber holds a `watch` receiver: O(1) memory per
//! subscriber whatever the write rate, because a signal carries only the newest transaction
//! id seen, never documents. Subscribers re-read the table from their checkpoint when woken.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

/// The wake-up hub shared by the listener, local pushes and every subscriber.
#[derive(Debug, Clone, Default)]
pub struct Hub {
    channels: Arc<HashMap<String, watch::Sender<i64>>>,
}

impl Hub {
    /// One channel per declared collection.
    pub fn new<'a>(collections: impl IntoIterator<Item = &'a str>) -> Hub {
        let channels = collections
            .into_iter()
            .map(|name| (name.to_owned(), watch::channel(0).0))
            .collect();
        Hub {
            channels: Arc::new(channels),
        }
    }

    /// A receiver for `collection`'s signals; `None` for an undeclared collection.
    pub fn subscribe(&self, collection: &str) -> Option<watch::Receiver<i64>> {
        self.channels.get(collection).map(watch::Sender::subscribe)
    }

    /// Records that transaction `tx` committed writes to `collection` and wakes its subscribers.
    /// Unknown collections (another process with a newer configuration) are ignored.
    pub fn notify(&self, collection: &str, tx: i64) {
        if let Some(sender) = self.channels.get(collection) {
            sender.send_if_modified(|latest| {
                *latest = (*latest).max(tx);
                true
            });
        }
    }

    /// The newest transaction signalled for `collection` (0 when none or undeclared).
    pub fn latest(&self, collection: &str) -> i64 {
        self.channels.get(collection).map_or(0, |s| *s.borrow())
    }

    /// Wakes every subscriber of every collection: after the listener reconnects, since
    /// notifications sent while it was away are lost.
    pub fn wake_all(&self) {
        for sender in self.channels.values() {
            sender.send_modify(|_| {});
        }
    }

    /// Number of live subscribers (receivers) across collections.
    pub fn receivers(&self) -> usize {
        self.channels
            .values()
            .map(watch::Sender::receiver_count)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notify_and_wake_all_reach_subscribers() {
        let hub = Hub::new(["a", "b"]);
        let mut a = hub.subscribe("a").unwrap();
        let b = hub.subscribe("b").unwrap();
        assert!(hub.subscribe("c").is_none());
        hub.notify("a", 7);
        hub.notify("a", 3);
        a.changed().await.unwrap();
        assert_eq!(*a.borrow_and_update(), 7);
        assert!(!b.has_changed().unwrap());
        hub.wake_all();
        assert!(a.has_changed().unwrap() && b.has_changed().unwrap());
    }
}
