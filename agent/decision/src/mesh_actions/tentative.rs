//! A decision's changes to the mesh-action state, undone unless the decision is recorded.

use super::MeshActions;

/// What one decision changed here, undone when dropped unless [`commit`](Tentative::commit)ted.
#[must_use = "a tentative change is undone when dropped"]
pub struct Tentative<'a> {
    pub(super) actions: &'a MeshActions,
    pub(super) undo: Vec<Undo>,
}

pub(super) enum Undo {
    Fired {
        policy_id: u64,
        key: String,
        at_ms: u64,
    },
    Decided {
        action_id: String,
    },
    Acted {
        action_id: String,
    },
    Claimed {
        action_id: String,
    },
}

impl Tentative<'_> {
    /// The decision is recorded: keep what it changed, and gossip its mesh actions.
    pub fn commit(mut self) {
        let mut acted = Vec::new();
        let mut claimed = Vec::new();
        for undo in self.undo.drain(..) {
            match undo {
                Undo::Acted { action_id } => acted.push(action_id),
                Undo::Claimed { action_id } => claimed.push(action_id),
                Undo::Fired { .. } | Undo::Decided { .. } => {}
            }
        }
        if acted.is_empty() && claimed.is_empty() {
            return;
        }
        let mut state = self.actions.lock();
        for (entry, confirmed) in state.acted.iter_mut() {
            if acted.contains(&entry.action_id) {
                *confirmed = true;
            }
        }
        for (claim, confirmed) in state.claims.iter_mut() {
            if claimed.contains(&claim.action_id) {
                *confirmed = true;
            }
        }
        drop(state);
        self.actions.changed.notify_one();
    }
}

impl Drop for Tentative<'_> {
    fn drop(&mut self) {
        if self.undo.is_empty() {
            return;
        }
        let mut state = self.actions.lock();
        for undo in self.undo.drain(..).rev() {
            match undo {
                Undo::Fired {
                    policy_id,
                    key,
                    at_ms,
                } => state.throttle.forget(policy_id, &key, at_ms),
                Undo::Decided { action_id } => {
                    state.decided.remove(&action_id);
                }
                Undo::Acted { action_id } => {
                    state.acted.retain(|(a, _)| a.action_id != action_id);
                }
                Undo::Claimed { action_id } => {
                    state
                        .claims
                        .retain(|(c, confirmed)| *confirmed || c.action_id != action_id);
                }
            }
        }
    }
}
