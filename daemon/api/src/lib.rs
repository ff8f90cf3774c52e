//! The era.v1 wire contract. Conversions to domain types live at the edges
//! (erad's server module and the CLI), not here.

#![allow(clippy::all, rust_2018_idioms)]

/// Generated messages and services for `era.v1`.
pub mod v1 {
    tonic::include_proto!("era.v1");

    /// The encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/era_v1_descriptor.bin"));
}
