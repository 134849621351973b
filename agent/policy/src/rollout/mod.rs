//! Rollouts: a change that reaches the mesh in steps instead of everywhere at once.
//!
//! A *shadow* version of an incident rule is evaluated beside the active version on every node,
//! recorded and counted, never acted on, until it is promoted. A *canary* change (of an incident
//! rule, a Rego module or a data document) is applied first on a few nodes chosen by rendezvous
//! hash ([`rank`]), and written everywhere after its bake time unless those nodes' failures rose;
//! otherwise it fails, and the canary nodes go back to the version everyone else runs.
//!
//! A rollout is a replicated document ([`model`]), so it reaches every node, and survives the
//! restart of any of them, like any change. The services read the open ones on every reload and
//! apply what they ask of this node ([`overlay`]); [`RolloutService`] writes them. Deciding when a
//! canary completes or fails needs the mesh's view, so it lives above, in `agent-rollout`.

mod model;
mod overlay;
pub mod rank;
mod service;

pub use model::{
    BundleCandidate, CanaryPlan, Candidate, Plan, PolicyCandidate, Rollout, State, Subject,
};
pub use overlay::{Overlays, RolloutReader, candidate_record};
pub use service::{
    CanarySettings, CandidateInput, KEEP_ENDED, KEEP_ENDED_MS, MAX_OPEN, RolloutError,
    RolloutService,
};
