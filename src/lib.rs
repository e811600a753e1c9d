//! Syncline: RxDB-style document replication (pull by checkpoint, push with conflict detection,
//! live change stream) as a gRPC service on PostgreSQL.
//!
//! Layers, outermost first: [`api`] (tonic handlers) → [`protocol`] (the replication rules) →
//! [`store`] (the storage trait and its PostgreSQL implementation); `protocol::fanout` wakes
//! streams.
//! [`server`] wires them together from a [`config::Config`], for `main` and the tests alike.

pub mod api;
pub mod auth;
pub mod blobs;
pub mod bulk;
pub mod config;
pub mod crypto;
pub mod health;
pub mod horizon;
pub mod protocol;
pub mod purge;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod transport;
pub mod web;

/// Code generated from `proto/syncline/v1/replication.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("syncline.v1");

    /// Encoded file descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("syncline_descriptor");
}
