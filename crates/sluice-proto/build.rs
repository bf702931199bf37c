//! Compiles `proto/` with protox (pure Rust, no `protoc` needed) and generates tonic code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/sluice/v1/common.proto",
        "proto/sluice/v1/node.proto",
        "proto/sluice/v1/coord.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
