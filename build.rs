//! Compiles `proto/` with protox (no system `protoc`) and writes the encoded descriptor set to
//! `OUT_DIR` for gRPC reflection (`compile_fds` ignores `file_descriptor_set_path`); compiles the
//! small C file behind INCRBYFLOAT.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // INCRBYFLOAT's long-double arithmetic (see src/value/float.rs for why it is C).
    println!("cargo:rerun-if-changed=src/value/longdouble.c");
    cc::Build::new()
        .file("src/value/longdouble.c")
        .opt_level(2)
        .compile("tally_longdouble");

    let protos = ["proto/tally/v1/tally.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("tally_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
