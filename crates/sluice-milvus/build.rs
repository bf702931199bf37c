//! Compiles `proto/milvus/` (the Milvus API subset, generated from pymilvus's descriptors by
//! `scripts/milvus_proto_subset.py`) with protox and generates the tonic server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "../../proto/milvus/common.proto",
        "../../proto/milvus/schema.proto",
        "../../proto/milvus/msg.proto",
        "../../proto/milvus/milvus.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["../../proto"])?;
    tonic_build::configure()
        .build_server(true)
        .build_client(false)
        .compile_fds(descriptors)?;
    Ok(())
}
