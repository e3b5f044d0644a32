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
    // The descriptors themselves, for the JSON gateway's proto3 JSON.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    prost_build::Config::new()
        // Keys and values decode as `Bytes` slices of the request buffer: no copy.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
