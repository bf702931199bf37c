//! Compiles `proto/` (at the workspace root) with protox (pure Rust, no `protoc` needed) and
//! generates tonic code. The message model's types (everything `message.proto` declares) are
//! generated once, in sluice-types (with `storage.proto`'s records), and used from there.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "../../proto/sluice/v1/message.proto",
        "../../proto/sluice/v1/storage.proto",
        "../../proto/sluice/v1/common.proto",
        "../../proto/sluice/v1/node.proto",
        "../../proto/sluice/v1/coord.proto",
        "../../proto/sluice/v1/query.proto",
        "../../proto/sluice/v1/worker.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["../../proto"])?;
    let mut config = tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(["."]);
    for file in ["sluice/v1/message.proto", "sluice/v1/storage.proto"] {
        let model = descriptors
            .file
            .iter()
            .find(|f| f.name() == file)
            .ok_or_else(|| format!("{file} is missing from the descriptors"))?;
        let names = model
            .message_type
            .iter()
            .map(|m| m.name())
            .chain(model.enum_type.iter().map(|e| e.name()));
        for name in names {
            config = config.extern_path(
                format!(".sluice.v1.{name}"),
                format!("::sluice_types::message::pb::{name}"),
            );
        }
    }
    config.compile_fds(descriptors)?;
    Ok(())
}
