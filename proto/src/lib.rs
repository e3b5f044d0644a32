//! keel's wire types. Only this crate defines types that cross a process or
//! actor boundary:
//!
//! * etcd's v3 gRPC API as prost messages (`etcdserverpb`, `mvccpb`, `authpb`,
//!   `v3lockpb`, `v3electionpb`, `grpc_health_v1`), generated from the `.proto`
//!   files in `proto/`;
//! * [`command`]: the rkyv-archived commands that travel through the raft log,
//!   the WAL and the apply actor without re-encoding.

pub mod batch;
pub mod command;
pub mod method;

#[allow(clippy::all, missing_docs)]
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
}

#[allow(clippy::all, missing_docs)]
pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
}

#[allow(clippy::all, missing_docs)]
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

#[allow(clippy::all, missing_docs)]
pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
}

#[allow(clippy::all, missing_docs)]
pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
}

#[allow(clippy::all, missing_docs)]
pub mod grpc_health_v1 {
    include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.rs"));
}

/// The descriptors of every message and service above (the JSON gateway
/// converts between proto3 JSON and protobuf with them).
pub fn descriptor_pool() -> &'static prost_reflect::DescriptorPool {
    static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        prost_reflect::DescriptorPool::decode(
            &include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"))[..],
        )
        .expect("the build wrote valid descriptors")
    })
}
