//! Compiles `proto/` (at the workspace root) with protox (pure Rust, no `protoc` needed) and
//! generates tonic code. The message model's types (`message.proto`) are generated once, in
//! sluice-types, and used from there.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "../../proto/sluice/v1/message.proto",
        "../../proto/sluice/v1/common.proto",
        "../../proto/sluice/v1/node.proto",
        "../../proto/sluice/v1/coord.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["../../proto"])?;
    let mut config = tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(["."]);
    for name in [
        "MessageType",
        "TimeTickHeader",
        "PartitionSegmentAssignment",
        "InsertHeader",
        "DeleteHeader",
        "FlushHeader",
        "CreateCollectionHeader",
        "DropCollectionHeader",
        "CreatePartitionHeader",
        "DropPartitionHeader",
        "ManualFlushHeader",
        "CreateSegmentHeader",
        "ImportHeader",
        "SchemaChangeHeader",
        "BeginTxnHeader",
        "CommitTxnHeader",
        "RollbackTxnHeader",
        "TxnHeader",
        "TxnContext",
        "ResourceKey",
        "BroadcastHeader",
    ] {
        config = config.extern_path(
            format!(".sluice.v1.{name}"),
            format!("::sluice_types::message::pb::{name}"),
        );
    }
    config.compile_fds(descriptors)?;
    Ok(())
}
