//! Command-line definitions and output; the work is done by the library.

mod agent;
mod cni;
mod install;
mod oci_hook;
mod ops;
mod output;
mod status;
mod trace;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use netguard::control::Operation;

/// Exit code for bad input or an environment netguard cannot run in.
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "netguard",
    version,
    about = "Keeps container network interfaces from silently vanishing or losing their names"
)]
struct Cli {
    /// How log lines look on stderr: text for people, json (one object per line) for collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Print every NIC netns move, rename, register and unregister as it happens.
    Trace(trace::TraceArgs),
    /// Run the agent: trace, remember, restore, answer `status`.
    Agent(agent::AgentArgs),
    /// Show every guarded NIC and link and how it stands.
    Status {
        #[command(flatten)]
        place: ops::Place,
        #[arg(long)]
        json: bool,
    },
    /// Guard the links of these netns (and their host sides) as they are now.
    Learn {
        /// A netns path (/run/netns/NAME, /proc/PID/ns/net); repeatable.
        #[arg(
            long = "netns",
            value_name = "PATH",
            required_unless_present = "container"
        )]
        netns: Vec<PathBuf>,
        /// The container (its ID or a unique prefix) whose links these are: they then follow it
        /// to its next netns at each start. Its netns by default: the one it runs in. Needs
        /// netguard's OCI hooks (`netguard install oci-hooks`) to have seen it start: by
        /// default they run for containers annotated io.netguard.guard=true.
        #[arg(long, value_name = "ID")]
        container: Option<String>,
        #[command(flatten)]
        place: ops::Place,
        #[arg(long)]
        json: bool,
    },
    /// Lend a host NIC to a container netns, recording its home name first.
    Lend {
        iface: String,
        #[arg(long, value_name = "PATH", required_unless_present = "container")]
        netns: Option<PathBuf>,
        /// A running container (its ID or a unique prefix; seen by netguard's OCI hooks): lent
        /// into its netns now and again into its new netns at each start; home when it stops.
        #[arg(long, value_name = "ID", conflicts_with_all = ["netns", "persistent"])]
        container: Option<String>,
        /// Its name inside (default: the same).
        #[arg(long)]
        name: Option<String>,
        /// Lend it again when the netns is re-created at the same path.
        #[arg(long)]
        persistent: bool,
        #[command(flatten)]
        place: ops::Place,
    },
    /// Bring a lent NIC home under its home name.
    Reclaim {
        iface: String,
        #[command(flatten)]
        place: ops::Place,
    },
    /// Guard pod interfaces from CNI results (a checkpoint or /var/lib/cni/results file, or a directory of them).
    ImportCni {
        path: PathBuf,
        #[command(flatten)]
        place: ops::Place,
    },
    /// Stop guarding a link, or with --nic a NIC.
    Forget {
        #[arg(required_unless_present = "nic", conflicts_with = "nic")]
        name: Option<String>,
        #[arg(long, value_name = "PATH", conflicts_with = "nic")]
        netns: Option<PathBuf>,
        /// A NIC (home name, current name or permanent MAC) instead of a link.
        #[arg(long, value_name = "NAME|MAC")]
        nic: Option<String>,
        #[command(flatten)]
        place: ops::Place,
    },
    /// Restore what is broken, once; exit 1 if anything stays broken.
    Restore {
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        place: ops::Place,
    },
    /// Called by the container runtime (oci-hooks(5)) with the container's state on stdin.
    OciHook(oci_hook::OciHookArgs),
    /// Print a per-device timeline from a recording made with `trace --record`.
    Report {
        /// The recording (JSON lines).
        file: PathBuf,
        /// One JSON object per device instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Install netguard into a container runtime (CNI plugin, OCI hooks).
    #[command(subcommand)]
    Install(install::Install),
    /// Undo `install`.
    #[command(subcommand)]
    Uninstall(install::Uninstall),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (netguard.1, netguard-SUBCOMMAND.1) into DIR.
    #[command(hide = true)]
    Manpages { dir: PathBuf },
}

/// The error and its causes on one line, each cause once (library errors already quote theirs).
fn one_line(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line += &format!(": {cause}");
        }
    }
    line
}

/// Logs to stderr at `default_level` unless RUST_LOG says otherwise.
fn init_logging(default_level: &str, format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr);
    match format {
        // Fields at the top level, as `status --json` has them.
        LogFormat::Json => logs.json().flatten_event(true).init(),
        // No colour codes in a log file or the journal.
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// Stops a privileged command early, with one line, when not root.
fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("netguard must run as root (it reads and changes network devices in every netns); run it with sudo");
    }
    Ok(())
}

pub fn main() -> ExitCode {
    // A runtime runs its CNI plugins with CNI_COMMAND set and no arguments.
    if std::env::var_os("CNI_COMMAND").is_some() {
        return cni::main();
    }
    let cli = Cli::parse();
    // The agent tells what it does; one-shot commands only warn.
    init_logging(
        if matches!(cli.command, Command::Agent(_)) {
            "info"
        } else {
            "warn"
        },
        cli.log_format,
    );
    let result = match cli.command {
        Command::Trace(args) => trace::run(args),
        Command::Agent(args) => agent::run(args),
        Command::Status { place, json } => status::run(&place, json),
        Command::Learn {
            netns,
            container: Some(container),
            ..
        } if netns.len() > 1 => Err(anyhow::anyhow!(
            "--container {container} takes at most one --netns: the container's"
        )),
        Command::Learn {
            netns,
            container: Some(container),
            place,
            json,
        } => {
            let netns = netns.into_iter().next();
            ops::run(&place, Operation::LearnContainer { netns, container }, json)
        }
        Command::Learn {
            netns,
            container: None,
            place,
            json,
        } => ops::run(&place, Operation::Learn { netns }, json),
        Command::OciHook(args) => oci_hook::run(args),
        Command::Lend {
            iface,
            netns,
            container,
            name,
            persistent,
            place,
        } => {
            // clap requires one of the two.
            let operation = match (container, netns) {
                (Some(container), _) => Operation::LendContainer {
                    iface,
                    container,
                    name,
                },
                (None, netns) => Operation::Lend {
                    iface,
                    netns: netns.unwrap_or_default(),
                    name,
                    persistent,
                },
            };
            ops::run(&place, operation, false)
        }
        Command::Reclaim { iface, place } => ops::run(&place, Operation::Reclaim { iface }, false),
        Command::ImportCni { path, place } => {
            ops::run(&place, Operation::ImportCni { path }, false)
        }
        Command::Forget {
            name,
            netns,
            nic,
            place,
        } => {
            // clap requires one of the two.
            let operation = match nic {
                Some(nic) => Operation::ForgetNic { nic },
                None => Operation::Forget {
                    name: name.unwrap_or_default(),
                    netns,
                },
            };
            ops::run(&place, operation, false)
        }
        Command::Restore {
            dry_run,
            json,
            place,
        } => ops::run(&place, Operation::Restore { dry_run }, json),
        Command::Report { file, json } => output::report(&file, json),
        Command::Install(what) => install::install(what),
        Command::Uninstall(what) => install::uninstall(what),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "netguard",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpages { dir } => manpages(&dir),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("netguard: {}", one_line(&err));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// One page for the command and one per subcommand, as `man netguard-agent` finds them.
fn manpages(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cli = Cli::command();
    let mut pages = vec![(cli.get_name().to_string(), cli.clone())];
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("netguard-{}", sub.get_name());
        let bin = format!("netguard {}", sub.get_name());
        pages.push((name.clone(), sub.clone().display_name(name).bin_name(bin)));
    }
    for (name, command) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(command)
            .render(&mut out)
            .with_context(|| format!("cannot render {name}.1"))?;
        std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
