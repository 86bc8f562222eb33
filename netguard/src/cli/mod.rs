//! Command-line definitions and output; the work is done by the library.

mod output;
mod trace;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for bad input or an environment netguard cannot run in.
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(name = "netguard", version, about = "Keeps container network interfaces from silently vanishing or losing their names")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every NIC netns move, rename, register and unregister as it happens.
    Trace(trace::TraceArgs),
    /// Print a per-device timeline from a recording made with `trace --record`.
    Report {
        /// The recording (JSON lines).
        file: PathBuf,
        /// One JSON object per device instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Trace(args) => trace::run(args),
        Command::Report { file, json } => output::report(&file, json),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("netguard: {err:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
