//! The VBase protobuf contract (`crates/proto/vbase/...`) and its generated tonic clients and servers.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// `vbase.identity.v1`: users.
pub mod identity {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("vbase.identity.v1");
    }
}

/// `vbase.ops.v1`: what both services record about deliveries (quarantine, sync counts,
/// reconcile runs, Clerk instances), and the two services that serve it.
pub mod ops {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("vbase.ops.v1");
    }
}

/// `vbase.workspace.v1`: workspaces, members, channels.
pub mod workspace {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("vbase.workspace.v1");
    }
}

/// Encoded `FileDescriptorSet` of every VBase proto and its imports, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/vbase_descriptor.bin"));

/// Converts a `SystemTime`-like pair into a protobuf timestamp.
pub fn timestamp_from_millis(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}
