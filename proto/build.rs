//! Compiles etcd's v3 API (`proto/`) with protox, a pure-Rust protobuf
//! compiler, so building keel never needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "mvccpb/kv.proto",
        "authpb/auth.proto",
        "etcdserverpb/rpc.proto",
        "v3lockpb/v3lock.proto",
        "v3electionpb/v3election.proto",
        "health/health.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        // Keys and values decode as `Bytes` slices of the request buffer: no copy.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
