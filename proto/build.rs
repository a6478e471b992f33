//! Generates the tonic services from `proto/*.proto` with a vendored
//! `protoc`, so no system package is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: the build script runs no other threads yet.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::codec::GfsCodec")
        .compile_protos(
            &["proto/master.proto", "proto/chunkserver.proto"],
            &["proto"],
        )?;
    Ok(())
}
