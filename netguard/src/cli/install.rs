//! `netguard install` / `netguard uninstall`: the CNI plugin and the OCI hooks.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use netguard::install::{self, HookScope, Placement};

/// Where the CNI conflists and plugins are.
#[derive(Args)]
pub struct CniPlaces {
    /// A conflist (repeatable; default: every *.conflist in --conf-dir).
    #[arg(long, value_name = "FILE")]
    conflist: Vec<PathBuf>,
    #[arg(long, value_name = "DIR", default_value = install::DEFAULT_CNI_CONF_DIR)]
    conf_dir: PathBuf,
    #[arg(long, value_name = "DIR", default_value = install::DEFAULT_CNI_BIN_DIR)]
    bin_dir: PathBuf,
}

#[derive(Subcommand)]
pub enum Install {
    /// Add netguard at the end of CNI conflists' plugin chains (each backed up to
    /// FILE.netguard-backup) and put the binary into the CNI bin dir as `netguard`.
    Cni {
        #[command(flatten)]
        places: CniPlaces,
        /// Copy the binary instead of linking it (from a container into the host's bin dir).
        #[arg(long)]
        copy: bool,
    },
    /// Write oci-hooks(5) files that run `netguard oci-hook` at createRuntime and poststop of
    /// the containers annotated io.netguard.guard=true (those `learn --container` and `lend
    /// --container` can bind to).
    OciHooks {
        #[arg(long, value_name = "DIR", default_value = install::DEFAULT_HOOKS_DIR)]
        dir: PathBuf,
        /// Run the hooks for every container, not only the annotated ones (each start then
        /// pays for a hook process).
        #[arg(long)]
        every_container: bool,
    },
}

#[derive(Subcommand)]
pub enum Uninstall {
    /// Take netguard out of the conflists (default: every one in --conf-dir naming it), then
    /// remove it from the CNI bin dir.
    Cni {
        #[command(flatten)]
        places: CniPlaces,
    },
    /// Remove the OCI hook files `install oci-hooks` wrote.
    OciHooks {
        #[arg(long, value_name = "DIR", default_value = install::DEFAULT_HOOKS_DIR)]
        dir: PathBuf,
    },
}

/// What the plugin link and the hooks point at, by its real path: `netguard-shim` where the
/// build or the package puts it beside this binary, else this binary itself (which does the
/// same, slower per container start); with a line saying which.
fn runtime_binary() -> anyhow::Result<(PathBuf, String)> {
    let exe = std::env::current_exe().context("cannot find the netguard binary")?;
    let exe =
        std::fs::canonicalize(&exe).with_context(|| format!("cannot resolve {}", exe.display()))?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let shim = install::SHIM_BESIDE
        .iter()
        .find_map(|rel| std::fs::canonicalize(dir.join(rel)).ok());
    Ok(match shim {
        Some(shim) => {
            let note = format!("runtimes run {}", shim.display());
            (shim, note)
        }
        None => {
            let note = format!(
                "no netguard-shim beside {}: runtimes run netguard itself, which costs each \
                 container start more",
                exe.display()
            );
            (exe, note)
        }
    })
}

fn print(done: Vec<String>) -> anyhow::Result<ExitCode> {
    for line in done {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn install(what: Install) -> anyhow::Result<ExitCode> {
    match what {
        Install::Cni {
            places:
                CniPlaces {
                    mut conflist,
                    conf_dir,
                    bin_dir,
                },
            copy,
        } => {
            if conflist.is_empty() {
                conflist = install::conflists_in(&conf_dir)?;
                if conflist.is_empty() {
                    return Err(install::InstallError::NoConflist { dir: conf_dir }.into());
                }
            }
            let placement = if copy {
                Placement::Copy
            } else {
                Placement::Link
            };
            let (binary, note) = runtime_binary()?;
            let mut done = install::install_cni(&conflist, &bin_dir, &binary, placement)?;
            done.push(note);
            print(done)
        }
        Install::OciHooks {
            dir,
            every_container,
        } => {
            let scope = if every_container {
                HookScope::Every
            } else {
                HookScope::Annotated
            };
            let (binary, note) = runtime_binary()?;
            let mut done = install::install_oci_hooks(&dir, &binary, scope)?;
            done.push(note);
            print(done)
        }
    }
}

pub fn uninstall(what: Uninstall) -> anyhow::Result<ExitCode> {
    match what {
        Uninstall::Cni {
            places:
                CniPlaces {
                    conflist,
                    conf_dir,
                    bin_dir,
                },
        } => print(install::uninstall_cni(&conflist, &conf_dir, &bin_dir)?),
        Uninstall::OciHooks { dir } => print(install::uninstall_oci_hooks(&dir)?),
    }
}
