//! Generates the tonic/prost code from `proto/confab.proto` with the protoc
//! binary shipped inside the `protoc-bin-vendored` crate: nothing is
//! downloaded at build time.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure().compile_with_config(config, &["proto/confab.proto"], &["proto"])?;
    Ok(())
}
