//! The `netguard` command: parses, calls the library, prints.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
