//! Debian kernel packages: resolve the newest of a series, download, extract, pick modules.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::shell;

/// Modules the suite loads (their dependencies are found in modules.dep).
const MODULES: &[&str] = &["e1000", "8021q", "macvlan", "veth", "bridge"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Series {
    V6_1,
    V6_12,
}

impl Series {
    pub fn label(self) -> &'static str {
        match self {
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
        }
    }

    /// apt package name pattern of this series' signed amd64 image.
    fn pattern(self) -> &'static str {
        match self {
            Series::V6_1 => r"^linux-image-6\.1\.0-[0-9]+-amd64$",
            Series::V6_12 => r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$",
        }
    }
}

/// An extracted kernel: its version string, image, and the module tree it came with.
pub struct Kernel {
    pub release: String,
    pub vmlinuz: PathBuf,
    pub root: PathBuf,
}

impl Kernel {
    fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }

    /// Module files (relative to the module dir) needed for [`MODULES`], dependencies included.
    pub fn needed_modules(&self) -> anyhow::Result<BTreeSet<String>> {
        let dep_file = self.modules_dir().join("modules.dep");
        let text = std::fs::read_to_string(&dep_file)
            .with_context(|| format!("cannot read {}", dep_file.display()))?;
        let mut deps: HashMap<String, (String, Vec<String>)> = HashMap::new();
        for line in text.lines() {
            let Some((module, rest)) = line.split_once(':') else {
                continue;
            };
            let name = module_name(module);
            deps.insert(
                name,
                (
                    module.to_string(),
                    rest.split_whitespace().map(str::to_string).collect(),
                ),
            );
        }
        let mut needed = BTreeSet::new();
        let mut queue: Vec<String> = MODULES.iter().map(|m| m.to_string()).collect();
        while let Some(name) = queue.pop() {
            let Some((path, requires)) = deps.get(&name) else {
                bail!(
                    "kernel {} has no module {name} in {}",
                    self.release,
                    dep_file.display()
                );
            };
            if needed.insert(path.clone()) {
                queue.extend(requires.iter().map(|r| module_name(r)));
            }
        }
        Ok(needed)
    }

    pub fn module_path(&self, relative: &str) -> PathBuf {
        self.modules_dir().join(relative)
    }
}

/// `kernel/net/8021q/8021q.ko.xz` -> `8021q` (modprobe treats - and _ alike).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// Finds the newest package of the series, downloads and extracts it (cached under `dir`).
pub fn prepare(series: Series, dir: &Path) -> anyhow::Result<Kernel> {
    let package = newest_package(series)?;
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs)?;
    let deb = find_deb(&debs, &package);
    let deb = match deb {
        Some(deb) => deb,
        None => {
            eprintln!("xtask: downloading {package}");
            shell::run(
                Command::new("apt-get")
                    .args(["download", "-q", &package])
                    .current_dir(&debs),
            )?;
            find_deb(&debs, &package).with_context(|| {
                format!(
                    "apt-get download {package} left no .deb in {}",
                    debs.display()
                )
            })?
        }
    };
    let root = dir.join("kernels").join(&package);
    if !root.join("boot").is_dir() {
        let partial = root.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)?;
        shell::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
        let _ = std::fs::remove_dir_all(&root);
        std::fs::rename(&partial, &root)?;
    }
    let release = std::fs::read_dir(root.join("lib/modules"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .with_context(|| format!("{package} has no lib/modules"))?;
    if !root
        .join("lib/modules")
        .join(&release)
        .join("modules.dep")
        .is_file()
    {
        // The package leaves modules.dep to its postinst.
        shell::run(Command::new("depmod").arg("-b").arg(&root).arg(&release))?;
    }
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!("{package} has no {}", vmlinuz.display());
    }
    Ok(Kernel {
        release,
        vmlinuz,
        root,
    })
}

fn find_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    let prefix = format!("{}_", package.replace('+', "%2b"));
    let alt = format!("{package}_");
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            (name.starts_with(&prefix) || name.starts_with(&alt)) && name.ends_with(".deb")
        })
}

fn newest_package(series: Series) -> anyhow::Result<String> {
    let mut listing = shell::output(Command::new("apt-cache").args([
        "search",
        "--names-only",
        series.pattern(),
    ]))?;
    if listing.trim().is_empty() {
        shell::run(Command::new("apt-get").args(["update", "-qq"]))?;
        listing = shell::output(Command::new("apt-cache").args([
            "search",
            "--names-only",
            series.pattern(),
        ]))?;
    }
    listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .max_by_key(|name| version_key(name))
        .with_context(|| {
            format!(
                "no Debian package matches {} (is apt's package list current?)",
                series.pattern()
            )
        })
}

/// Numeric components of a package name, for "newest" ordering (6.12.117 > 6.12.99).
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_drop_path_and_compression() {
        assert_eq!(module_name("kernel/net/8021q/8021q.ko.xz"), "8021q");
        assert_eq!(
            module_name("kernel/drivers/net/ethernet/intel/e1000/e1000.ko"),
            "e1000"
        );
    }

    #[test]
    fn newest_is_numeric_not_lexical() {
        assert!(
            version_key("linux-image-6.12.117+deb12-amd64")
                > version_key("linux-image-6.12.99+deb12-amd64")
        );
        assert!(
            version_key("linux-image-6.1.0-56-amd64") > version_key("linux-image-6.1.0-9-amd64")
        );
    }
}
