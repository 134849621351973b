//! The mesh: membership and failure detection (chitchat) over QUIC with mutual TLS, and policy
//! rollout by pulling signed changes from peers that are ahead.
//!
//! A [`Mesh`] is started from the `[mesh]` section ([`MeshConfig`]). Its parts, bottom up: the
//! QUIC links between nodes ([`Net`], `transport`), chitchat's socket over them (`gossip`, with
//! its `codec`), the pull protocol (`sync`), and the members view (`members`).
//!
//! Architecture invariant: gossip feeds the store. This crate reads and writes only the
//! [`Store`](agent_store::Store); after a merge it calls the `on_merged` callback the daemon gives
//! it, which reloads the policy services, so the mesh never reaches up into the services above
//! the store. It depends on no policy, decision or API crate.

mod codec;
mod config;
mod error;
mod faults;
mod gossip;
mod identity;
mod links;
pub mod members;
mod metrics;
mod node;
pub mod shared;
pub mod sync;
#[cfg(test)]
mod tests;
mod tls;
mod transport;

pub use config::MeshConfig;
pub use error::MeshError;
pub use identity::Identity;
pub use links::{Links, QuicLinks, RequestHandler};
pub use members::{Member, MemberState, RevisionView};
pub use metrics::MeshMetrics;
pub use node::{Mesh, MeshSummary, OnMerged, StateCounts};
pub use shared::{SharedMember, SharedView};
pub use tls::TlsError;
pub use transport::{Net, NetError, REQUEST_TIMEOUT};
