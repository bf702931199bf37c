//! Generates the typed headers, the transaction context and the broadcast header from
//! `proto/sluice/v1/message.proto`, and the recovery storage's records from `storage.proto` (the
//! wire contract's single source for them) with protox and
//! prost-build: pure Rust, no `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "../../proto/sluice/v1/message.proto",
        "../../proto/sluice/v1/storage.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["../../proto"])?;
    prost_build::Config::new()
        // Small value types that are copied and compared freely.
        .type_attribute(".sluice.v1.TxnContext", "#[derive(Eq, Hash)]")
        .type_attribute(".sluice.v1.ResourceKey", "#[derive(Eq, Hash)]")
        .type_attribute(".sluice.v1.FieldSchema", "#[derive(Eq)]")
        .type_attribute(".sluice.v1.CollectionSchema", "#[derive(Eq)]")
        .type_attribute(".sluice.v1.FunctionSchema", "#[derive(Eq)]")
        .compile_fds(descriptors)?;
    Ok(())
}
