//! Per-collection wake-up signals. Each subscriber holds a `watch` receiver: O(1) memory per
//! subscriber whatever the write rate, because a signal carries only the newest transaction
//! id seen, never documents. Subscribers re-read the table from their checkpoint when woken.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::watch;

/// The wake-up hub shared by the listener, local pushes and every subscriber.
#[derive(Debug, Clone, Default)]
pub struct Hub {
    channels: Arc<HashMap<String, Channel>>,
}

#[derive(Debug)]
struct Channel {
    signal: watch::Sender<i64>,
    /// The highest signalled transaction a reader already waited for in vain: a remembered
    /// position keeps readers waiting once, never again.
    waited_out: AtomicI64,
}

impl Hub {
    /// One channel per declared collection.
    pub fn new<'a>(collections: impl IntoIterator<Item = &'a str>) -> Hub {
        let channels = collections
            .into_iter()
            .map(|name| {
                let channel = Channel {
                    signal: watch::channel(0).0,
                    waited_out: AtomicI64::new(0),
                };
                (name.to_owned(), channel)
            })
            .collect();
        Hub {
            channels: Arc::new(channels),
        }
    }

    /// A receiver for `collection`'s signals; `None` for an undeclared collection.
    pub fn subscribe(&self, collection: &str) -> Option<watch::Receiver<i64>> {
        self.channels.get(collection).map(|c| c.signal.subscribe())
    }

    /// Records that transaction `tx` committed writes to `collection` and wakes its subscribers.
    /// Unknown collections (another process with a newer configuration) are ignored.
    pub fn notify(&self, collection: &str, tx: i64) {
        if let Some(channel) = self.channels.get(collection) {
            channel.signal.send_if_modified(|latest| {
                *latest = (*latest).max(tx);
                true
            });
        }
    }

    /// The newest transaction signalled for `collection` (0 when none or undeclared).
    pub fn latest(&self, collection: &str) -> i64 {
        self.channels
            .get(collection)
            .map_or(0, |c| *c.signal.borrow())
    }

    /// The newest signalled transaction that a reader should still wait for, or `None` when a
    /// reader already waited for it (or a newer one) in vain.
    pub fn pending(&self, collection: &str) -> Option<i64> {
        let channel = self.channels.get(collection)?;
        let latest = *channel.signal.borrow();
        (latest > channel.waited_out.load(Ordering::Relaxed)).then_some(latest)
    }

    /// Records that a reader waited for `tx` as long as it may: later readers do not wait for
    /// it again (it may belong to a long transaction, or to a cluster we failed over from).
    pub fn waited_out(&self, collection: &str, tx: i64) {
        if let Some(channel) = self.channels.get(collection) {
            channel.waited_out.fetch_max(tx, Ordering::Relaxed);
        }
    }

    /// Forgets signals at or above `xmax`, a transaction counter read from the database:
    /// after a failover or restore to a cluster whose counter is behind, remembered
    /// positions name transactions that do not exist there.
    pub fn forget_from(&self, xmax: i64) {
        for channel in self.channels.values() {
            channel.signal.send_if_modified(|latest| {
                let forget = *latest >= xmax;
                if forget {
                    *latest = 0;
                }
                forget
            });
            let _ = channel
                .waited_out
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                    (w >= xmax).then_some(0)
                });
        }
    }

    /// Wakes every subscriber of every collection: after the listener reconnects, since
    /// notifications sent while it was away are lost.
    pub fn wake_all(&self) {
        for channel in self.channels.values() {
            channel.signal.send_modify(|_| {});
        }
    }

    /// Number of live subscribers (receivers) across collections.
    pub fn receivers(&self) -> usize {
        self.channels
            .values()
            .map(|c| c.signal.receiver_count())
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

    #[test]
    fn a_position_waited_out_is_not_pending_until_a_newer_one_arrives() {
        let hub = Hub::new(["a"]);
        assert_eq!(hub.pending("a"), None);
        hub.notify("a", 9);
        assert_eq!(hub.pending("a"), Some(9));
        hub.waited_out("a", 9);
        assert_eq!(hub.pending("a"), None);
        hub.notify("a", 10);
        assert_eq!(hub.pending("a"), Some(10));
    }

    #[test]
    fn forgetting_drops_positions_the_cluster_cannot_have() {
        let hub = Hub::new(["a", "b"]);
        hub.notify("a", 9_000_000);
        hub.notify("b", 40);
        hub.waited_out("a", 9_000_000);
        hub.forget_from(100);
        assert_eq!(hub.latest("a"), 0);
        hub.notify("a", 150);
        assert_eq!(hub.pending("a"), Some(150));
        assert_eq!(hub.latest("b"), 40);
    }
}
