//! Node identity in a mesh: the node id, the mesh CA and node certificates (`mesh-agent certs`),
//! signing the changes this node authors, and checking other nodes' certificates and signatures.
//!
//! A node's id is its certificate's DNS subject alternative name (`certs issue` writes the node id
//! there), so "this certificate belongs to node X" is checked the way TLS checks a host name.
//!
//! Architecture invariant: identity is files and cryptography only. It knows no store, no network
//! and no config file; the mesh and the store are given a [`Signer`] and a [`Verifier`].

pub mod certs;
mod identity;
mod node_id;

pub use identity::{CA_FILE, IdentityError, Signer, TlsFiles, Verifier};
pub use node_id::validate_node_id;
