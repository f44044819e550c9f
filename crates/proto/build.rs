//! Compiles `vbase/**/*.proto` with protox (no `protoc` needed) and writes the file descriptor set
//! that the services serve through gRPC reflection.

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "vbase/ops/v1/ops.proto",
    "vbase/identity/v1/identity.proto",
    "vbase/workspace/v1/workspace.proto",
    "vbase/workspace/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::Compiler::new(["."])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?
        .file_descriptor_set();

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // tonic-prost-build's compile_fds does not write the set; reflection needs it.
    std::fs::write(out.join("vbase_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
