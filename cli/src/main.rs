//! `sagaflow`: see the crate docs and docs/cli.md.

fn main() -> std::process::ExitCode {
    sagaflow_cli::main()
}
