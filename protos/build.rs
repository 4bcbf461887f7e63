use std::path::PathBuf;

const PROTOS: [&str; 3] = [
    "proto/sagaflow/events/v1/events.proto",
    "proto/sagaflow/participant/v1/participant.proto",
    "proto/sagaflow/orchestrator/v1/orchestrator.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // No system protoc is assumed: use the vendored one unless PROTOC names another.
    let mut config = tonic_prost_build::Config::new();
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    let protos: Vec<PathBuf> = PROTOS.iter().map(PathBuf::from).collect();
    let includes = vec![PathBuf::from("proto"), protoc_bin_vendored::include_path()?];
    tonic_prost_build::configure()
        .file_descriptor_set_path(
            PathBuf::from(std::env::var("OUT_DIR")?).join("sagaflow_descriptor.bin"),
        )
        .compile_with_config(config, &protos, &includes)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
