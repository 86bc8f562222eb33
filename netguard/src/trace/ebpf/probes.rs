//! Which kernel functions each probe may attach to, and what this kernel offers.

use std::collections::HashSet;
use std::path::Path;

use super::ProbeMode;

/// One thing to observe, and the kernel functions that can show it, best first.
pub struct Probe {
    pub what: &'static str,
    pub candidates: &'static [Candidate],
    /// Without it the tracer is blind to a kind of event; without an optional one, events
    /// only carry a coarser cause (explicit instead of driver-unbind, ...).
    pub required: bool,
}

/// A kernel function and the programs (`netguard.bpf.c`) written for its arguments.
pub struct Candidate {
    pub function: &'static str,
    /// Program name without its family prefix (`kp_`/`krp_`, `fe_`/`fx_`).
    pub program: &'static str,
    /// Whether a return program belongs to it too.
    pub on_return: bool,
}

const fn candidate(function: &'static str, program: &'static str, on_return: bool) -> Candidate {
    Candidate {
        function,
        program,
        on_return,
    }
}

/// The move probe comes first so that a kernel refusing all of them is reported with the
/// most telling function. The cause probes are windows: while a thread is inside one, what
/// it unregisters or registers has that cause.
pub const PROBES: &[Probe] = &[
    Probe {
        what: "netns move",
        candidates: &[
            candidate("__dev_change_net_namespace", "move", true),
            candidate("dev_change_net_namespace", "move", true),
        ],
        required: true,
    },
    Probe {
        what: "netns teardown",
        candidates: &[
            candidate("default_device_exit_batch", "exit_batch", true),
            candidate("default_device_exit_net", "exit_net", true),
            candidate("default_device_exit", "exit_net", true),
        ],
        required: true,
    },
    Probe {
        what: "rename",
        candidates: &[
            candidate("netif_change_name", "rename", true),
            candidate("dev_change_name", "rename", true),
        ],
        required: true,
    },
    Probe {
        what: "unregister",
        candidates: &[
            candidate("unregister_netdevice_many_notify", "unreg_many", false),
            candidate("unregister_netdevice_many", "unreg_many", false),
            candidate("unregister_netdevice_queue", "unreg_queue", false),
        ],
        required: true,
    },
    Probe {
        what: "register",
        candidates: &[candidate("register_netdevice", "register", true)],
        required: true,
    },
    // The driver core's unbind, in vmlinux (so fentry works though drivers are modules): the
    // driver's remove callback unregisters the NIC inside it. The PCI bus's remove callback
    // stands in where the first is inlined.
    Probe {
        what: "driver unbind",
        candidates: &[
            candidate("device_release_driver_internal", "unbind", true),
            candidate("pci_device_remove", "unbind", true),
        ],
        required: false,
    },
    // The driver's probe callback registers the NIC inside it.
    Probe {
        what: "driver bind",
        candidates: &[
            candidate("really_probe", "bind", true),
            candidate("call_driver_probe", "bind", true),
            candidate("pci_device_probe", "bind", true),
        ],
        required: false,
    },
    // vlan, macvlan, ipvlan unregister their uppers inside the lower device's
    // NETDEV_UNREGISTER notification.
    Probe {
        what: "netdev notification",
        candidates: &[candidate("call_netdevice_notifiers_info", "notify", true)],
        required: false,
    },
];

impl ProbeMode {
    /// The section name, as in `fentry/FUNC` or `kprobe/FUNC`.
    pub fn entry_section(self) -> &'static str {
        match self {
            ProbeMode::Fentry => "fentry",
            ProbeMode::Kprobe => "kprobe",
        }
    }

    pub fn return_section(self) -> &'static str {
        match self {
            ProbeMode::Fentry => "fexit",
            ProbeMode::Kprobe => "kretprobe",
        }
    }

    pub fn entry_program(self, candidate: &Candidate) -> String {
        let prefix = match self {
            ProbeMode::Fentry => "fe",
            ProbeMode::Kprobe => "kp",
        };
        format!("{prefix}_{}", candidate.program)
    }

    pub fn return_program(self, candidate: &Candidate) -> String {
        let prefix = match self {
            ProbeMode::Fentry => "fx",
            ProbeMode::Kprobe => "krp",
        };
        format!("{prefix}_{}", candidate.program)
    }
}

/// The candidate functions /proc/kallsyms lists; `None` when it cannot be read (then every
/// candidate is tried and the kernel's answer decides).
pub fn kallsyms() -> Option<HashSet<&'static str>> {
    let text = std::fs::read_to_string("/proc/kallsyms").ok()?;
    let wanted: HashSet<&'static str> = PROBES
        .iter()
        .flat_map(|p| p.candidates.iter().map(|c| c.function))
        .collect();
    Some(
        text.lines()
            .filter_map(|line| line.split_whitespace().nth(2))
            .filter_map(|name| wanted.get(name).copied())
            .collect(),
    )
}

/// Where a kernel with kprobes shows them: the perf PMU, and the tracefs control file.
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";
const KPROBE_EVENTS: &[&str] = &[
    "/sys/kernel/tracing/kprobe_events",
    "/sys/kernel/debug/tracing/kprobe_events",
];

/// Whether this kernel can attach kprobes at all; `Err` names what is missing.
pub fn kprobe_support() -> Result<(), String> {
    if Path::new(KPROBE_PMU).exists() || KPROBE_EVENTS.iter().any(|p| Path::new(p).exists()) {
        return Ok(());
    }
    Err(format!("{} and {KPROBE_PMU} missing", KPROBE_EVENTS[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_names_fit_the_kernel_limit() {
        for probe in PROBES {
            assert!(!probe.candidates.is_empty(), "{}", probe.what);
            for c in probe.candidates {
                for mode in [ProbeMode::Fentry, ProbeMode::Kprobe] {
                    // BPF_OBJ_NAME_LEN is 16 with the NUL.
                    assert!(mode.entry_program(c).len() < 16, "{}", c.program);
                    assert!(mode.return_program(c).len() < 16, "{}", c.program);
                }
            }
        }
    }

    #[test]
    fn kallsyms_lists_only_candidates() {
        if let Some(found) = kallsyms() {
            let all: HashSet<&str> = PROBES
                .iter()
                .flat_map(|p| p.candidates.iter().map(|c| c.function))
                .collect();
            assert!(found.is_subset(&all), "{found:?}");
        }
    }
}
