//! `netguard-bench`: netguard's benchmarks, each on a world of network namespaces it builds
//! and removes (see `docs/benchmarks.md`). Run through `cargo xtask bench [--quick]`, which
//! builds the release binaries first.

mod agent;
mod baseline;
mod floor;
mod mass;
mod netns;
mod podman;
mod reaction;
mod report;
mod scale;
mod shift;
mod stats;
mod watch;
mod world;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use netguard::inventory::NetnsConn;
use netguard::ledger::Locator;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(
    name = "netguard-bench",
    about = "netguard's benchmarks (as root, in namespaces they create)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Smaller sizes and fewer rounds: minutes, for development.
    #[arg(long)]
    quick: bool,
    /// Mass-restore sizes instead of the default ones (e.g. `--sizes 10,100`).
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Timed rounds per size instead of the default.
    #[arg(long)]
    rounds: Option<usize>,
    /// Only these benchmarks.
    #[arg(long, value_delimiter = ',')]
    parts: Vec<Part>,
    /// Only these mass-restore contenders (e.g. `--only floor` under a profiler).
    #[arg(long, value_delimiter = ',')]
    only: Vec<mass::Contender>,
    /// Reaction-latency trials instead of the default.
    #[arg(long)]
    trials: Option<usize>,
    /// Also write the results as JSON here (and keep a failed agent's log beside it,
    /// else in the current directory).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Guarded links (and netns) in the scale part.
    #[arg(long, default_value_t = 1000)]
    scale_links: usize,
    /// Timed starts (and ADDs) per side in the podman part (default 150; 10 with --quick): runs
    /// of 50 of the same build differed by up to ten percent of a start on a shared machine.
    #[arg(long)]
    podman_starts: Option<usize>,
    /// Leave this part of netguard out of the podman part's guarded side (repeatable; the
    /// agent always runs), to see what each part costs a start.
    #[arg(long, value_enum, value_name = "PART")]
    podman_without: Vec<podman::Component>,
    /// Annotate the podman part's guarded container for netguard's OCI hooks, so they run at
    /// its starts (by default they are installed and the container is one they skip).
    #[arg(long)]
    podman_annotated: bool,
    /// Put both sides of the podman part on the chain `podman network create` writes (bridge,
    /// portmap, firewall, tuning), as a podman host's containers are, rather than bridge alone.
    #[arg(long)]
    podman_chain: bool,
    /// The netguard binary (default: the one next to this one).
    #[arg(long)]
    netguard: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    Mass,
    Reaction,
    Scale,
    /// What netguard adds to a podman container start and to the CNI ADD of its chain.
    Podman,
}

#[derive(Subcommand)]
enum Command {
    /// Build a world of `n` guarded containers and keep it until Ctrl-C, for profiling a
    /// contender by hand (prints where everything is).
    Hold {
        #[arg(long)]
        n: usize,
    },
    /// The floor contender (run by the benchmark itself): re-create the links of the world
    /// `--world` with the restorer's requests, unchecked.
    Floor {
        #[arg(long)]
        world: String,
        #[arg(long)]
        n: usize,
        /// The netns standing in for the host.
        #[arg(long)]
        host: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let result = runtime.block_on(async {
        // Dropping the work on a signal drops the worlds it holds, which removes their
        // namespaces, and kills child processes.
        tokio::select! {
            result = work(cli) => result,
            name = stop_signal() => Err(anyhow::anyhow!("interrupted by {name}; namespaces removed")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netguard-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn stop_signal() -> &'static str {
    let mut streams = [
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::hangup(), "SIGHUP"),
    ]
    .map(|(kind, name)| (signal(kind).expect("installing a signal handler"), name));
    let [a, b, c] = &mut streams;
    tokio::select! {
        _ = a.0.recv() => a.1,
        _ = b.0.recv() => b.1,
        _ = c.0.recv() => c.1,
    }
}

async fn work(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Floor { world, n, host }) => {
            let host = NetnsConn::open(Locator::Host, &host).await?;
            floor::restore(&host, &world::containers(&world, n)).await
        }
        Some(Command::Hold { n }) => {
            anyhow::ensure!(n > 0, "--n: at least one container");
            let world = world::World::build(n).await?;
            println!("host netns:  {}", world.host_path.display());
            println!(
                "containers:  {} .. {}",
                world.containers[0].path.display(),
                world.containers[n - 1].path.display()
            );
            println!("ledger:      {}", world.state_dir.display());
            println!("held until Ctrl-C");
            std::future::pending().await
        }
        None => run(cli.run).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "the benchmarks need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    );
    let netguard = match args.netguard {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("netguard"),
    };
    anyhow::ensure!(
        netguard.is_file(),
        "no netguard binary at {}: build it (cargo build --release -p netguard) or run `cargo xtask bench`",
        netguard.display()
    );
    for name in netns::remove_stale() {
        eprintln!("removed netns {name} left by an earlier run");
    }
    let failed_log = args
        .json
        .as_deref()
        .and_then(Path::parent)
        .unwrap_or(Path::new(""))
        .join("failed-agent.log");
    let wants = |part| args.parts.is_empty() || args.parts.contains(&part);
    let mut results = report::Results::new(args.quick);
    if wants(Part::Mass) {
        // (size, timed rounds): the big sizes are costly, mostly through the baseline.
        let plan: Vec<(usize, usize)> = match (args.quick, args.sizes.is_empty()) {
            (_, false) => args.sizes.iter().map(|&n| (n, 3)).collect(),
            (true, true) => vec![(10, 5), (100, 3), (500, 3)],
            (false, true) => vec![(10, 9), (100, 7), (500, 5), (1000, 5)],
        };
        let contenders = match args.only.is_empty() {
            true => vec![
                mass::Contender::Netguard,
                mass::Contender::Agent,
                mass::Contender::Baseline,
                mass::Contender::Floor,
            ],
            false => args.only.clone(),
        };
        for (n, rounds) in plan {
            let rounds = args.rounds.unwrap_or(rounds);
            results
                .mass_restore
                .push(mass::run(&netguard, &failed_log, n, rounds, &contenders).await?);
        }
    }
    if wants(Part::Reaction) {
        let trials = args.trials.unwrap_or(if args.quick { 40 } else { 200 });
        results.reaction = Some(reaction::run(&netguard, trials).await?);
    }
    if wants(Part::Scale) {
        let (window, repeats) = if args.quick {
            (Duration::from_secs(10), 5)
        } else {
            (Duration::from_secs(30), 20)
        };
        results.scale =
            Some(scale::run(&netguard, &failed_log, args.scale_links, window, repeats).await?);
    }
    if wants(Part::Podman) {
        let starts = args
            .podman_starts
            .unwrap_or(if args.quick { 10 } else { 150 });
        let netguard = netguard.clone();
        let setup = podman::Setup {
            starts,
            without: args.podman_without.clone(),
            annotated: args.podman_annotated,
            podman_chain: args.podman_chain,
        };
        results.podman =
            Some(tokio::task::spawn_blocking(move || podman::run(&netguard, setup)).await??);
    }
    print!("{}", results.table());
    if let Some(path) = &args.json {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}
