//! Generates the tonic/prost code from `proto/confab.proto` with the protoc
//! binary shipped inside the `protoc-bin-vendored` crate: nothing is
//! downloaded at build time.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    // Passed through by routers and stores and cloned into every batch and
    // tail: a reference-counted buffer, not a Vec.
    config.bytes([".confab.v1.Message.attachments_json", ".confab.v1.SendOp.attachments_json"]);
    tonic_prost_build::configure().compile_with_config(config, &["proto/confab.proto"], &["proto"])?;
    Ok(())
}
