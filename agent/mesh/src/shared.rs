//! Shared state: keys the layers above publish about this node in gossip (its incident summary,
//! its mesh-action claims), and the view of every member's. The mesh carries them and says who
//! is alive; what the values mean is the decision layer's business.
//!
//! Keys live under [`SHARED_PREFIX`] in chitchat, beside the policy revision. chitchat only sends
//! a key again when its value changed, so publishing an unchanged value costs nothing.

use std::sync::Arc;

use chitchat::{Chitchat, ChitchatId, ListenerHandle};
use tokio::sync::{Mutex, Notify};

/// The chitchat prefix of shared keys.
pub const SHARED_PREFIX: &str = "s.";

/// Every member this node knows, with its shared values.
#[derive(Debug, Clone, Default)]
pub struct SharedView {
    pub self_id: String,
    pub members: Vec<SharedMember>,
}

#[derive(Debug, Clone)]
pub struct SharedMember {
    pub node_id: String,
    /// Which run of the node (it grows at each restart).
    pub generation: u64,
    pub alive: bool,
    /// (key without the prefix, value).
    pub values: Vec<(String, String)>,
}

/// Reads the shared view out of chitchat's state.
pub(crate) fn view(chitchat: &Chitchat) -> SharedView {
    let me = chitchat.self_chitchat_id().clone();
    let live: Vec<ChitchatId> = chitchat.live_nodes().cloned().collect();
    let dead: Vec<ChitchatId> = chitchat.dead_nodes().cloned().collect();
    let member = |id: &ChitchatId, alive: bool| SharedMember {
        generation: id.generation_id,
        node_id: id.node_id.to_string(),
        alive,
        values: chitchat
            .node_state(id)
            .map(|state| {
                state
                    .iter_prefix(SHARED_PREFIX)
                    .filter(|(_, value)| !value.is_deleted())
                    .map(|(key, value)| {
                        (
                            key.strip_prefix(SHARED_PREFIX).unwrap_or(key).to_owned(),
                            value.value.clone(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    let mut members: Vec<SharedMember> = live.iter().map(|id| member(id, true)).collect();
    // A node that restarted shows under its new generation as alive; its old one is not a member.
    members.extend(
        dead.iter()
            .filter(|id| !live.iter().any(|l| l.node_id == id.node_id))
            .map(|id| member(id, false)),
    );
    // A restarted node may show under both generations for a while: keep the newest.
    members.sort_by(|a, b| {
        a.node_id
            .cmp(&b.node_id)
            .then(b.generation.cmp(&a.generation))
    });
    members.dedup_by(|later, first| later.node_id == first.node_id);
    SharedView {
        self_id: me.node_id.to_string(),
        members,
    }
}

/// Wakes watchers when a peer's shared value changes (at once, as the delta is applied) and when
/// the set of live members changes. Each watcher has a `Notify` of its own ([`subscribe`]), so
/// one never takes another's wake-up.
///
/// [`subscribe`]: SharedWatch::subscribe
pub(crate) struct SharedWatch {
    watchers: Watchers,
    _listener: ListenerHandle,
}

type Watchers = Arc<std::sync::Mutex<Vec<Arc<Notify>>>>;

impl SharedWatch {
    /// A new watcher's notifier.
    pub fn subscribe(&self) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.watchers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Arc::clone(&notify));
        notify
    }
}

fn wake(watchers: &Watchers) {
    for notify in watchers
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
    {
        notify.notify_one();
    }
}

pub(crate) async fn watch(
    chitchat: &Arc<Mutex<Chitchat>>,
) -> (SharedWatch, tokio::task::JoinHandle<()>) {
    let watchers: Watchers = Arc::default();
    let guard = chitchat.lock().await;
    let listener = {
        let watchers = Arc::clone(&watchers);
        // Runs under chitchat's state lock: only wake the watchers.
        guard.subscribe_event(SHARED_PREFIX, move |_| wake(&watchers))
    };
    let mut live = guard.live_nodes_watcher();
    drop(guard);
    let task = {
        let watchers = Arc::clone(&watchers);
        tokio::spawn(async move {
            while live.changed().await.is_ok() {
                wake(&watchers);
            }
        })
    };
    (
        SharedWatch {
            watchers,
            _listener: listener,
        },
        task,
    )
}
