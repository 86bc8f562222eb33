//! eBPF backends: a CO-RE object built by clang from `netguard-ebpf/`, loaded by aya as
//! fentry/fexit or kprobe/kretprobe programs, events read from a BPF ring buffer.

mod probes;
pub mod record;

use std::collections::HashSet;
use std::path::Path;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::{FEntry, FExit, KProbe, ProgramError};
use aya::{Btf, Ebpf, EbpfLoader};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;

use crate::event::{Event, EventKind};
use crate::netns::Resolver;
use crate::trace::{Running, TraceOptions};
use probes::{Candidate, Probe, PROBES};
use record::WallClock;

/// Which program type to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeMode {
    Fentry,
    Kprobe,
}

/// The kernel side, compiled by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netguard.bpf.o"));

/// Ring buffer size: room for ~26k records, a burst far beyond a node's worth of NICs.
const RING_BYTES: u32 = 4 << 20;
/// Events decoded but not yet taken by the consumer.
const CHANNEL_CAPACITY: usize = 65536;
const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

/// Why an eBPF backend cannot run here; the text is what the operator reads.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("this kernel has no BTF ({BTF_PATH} missing: CONFIG_DEBUG_INFO_BTF unset), so the CO-RE probes cannot be relocated")]
    NoBtf,
    #[error("cannot read the kernel's BTF from {BTF_PATH}: {0}")]
    Btf(String),
    #[error("this kernel has no kprobe support (CONFIG_KPROBES unset: {0})")]
    NoKprobes(String),
    #[error("cannot get random bytes for the device key: {0}")]
    Random(std::io::Error),
    #[error("cannot load the eBPF object: {0}")]
    Object(String),
    #[error("the eBPF object has no {0} (it does not match this netguard)")]
    Missing(String),
    #[error("no kernel function for the {probe} probe: none of {candidates} is in this kernel")]
    NoCandidate {
        probe: &'static str,
        candidates: String,
    },
    #[error("the kernel refused BPF_PROG_LOAD for {section}/{function} ({errno}){detail}")]
    ProgLoad {
        section: &'static str,
        function: &'static str,
        errno: String,
        detail: String,
    },
    #[error("cannot attach {section}/{function}: {reason}")]
    Attach {
        section: &'static str,
        function: &'static str,
        reason: String,
    },
    #[error("cannot read the ring buffer: {0}")]
    RingBuf(String),
    #[error("cannot read the clocks: {0}")]
    Clock(std::io::Error),
}

/// Loads and attaches every probe; `Err` is the reason in plain words.
pub async fn start(
    mode: ProbeMode,
    _options: &TraceOptions,
    resolver: Resolver,
) -> Result<Running, String> {
    start_typed(mode, resolver).map_err(|err| err.to_string())
}

fn start_typed(mode: ProbeMode, resolver: Resolver) -> Result<Running, EbpfError> {
    if !Path::new(BTF_PATH).exists() {
        return Err(EbpfError::NoBtf);
    }
    let btf = Btf::from_sys_fs().map_err(|err| EbpfError::Btf(err.to_string()))?;
    if mode == ProbeMode::Kprobe {
        probes::kprobe_support().map_err(EbpfError::NoKprobes)?;
    }
    raise_memlock();
    let key = random_key()?;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .map_max_entries("events", RING_BYTES)
        .override_global("device_hash_key", &key, true)
        .load(OBJECT)
        .map_err(|err| EbpfError::Object(error_chain(&err)))?;

    let kallsyms = probes::kallsyms();
    for probe in PROBES {
        match attach_probe(&mut ebpf, mode, probe, &btf, kallsyms.as_ref()) {
            Ok(function) => {
                tracing::info!("{} probe: {}/{function}", probe.what, mode.entry_section())
            }
            Err(err) if !probe.required => tracing::warn!(
                "{} probe unavailable, its cause is reported as explicit: {err}",
                probe.what
            ),
            Err(err) => return Err(err),
        }
    }

    let dropped: PerCpuArray<MapData, u64> = take_map(&mut ebpf, "dropped")?;
    let ring: RingBuf<MapData> = take_map(&mut ebpf, "events")?;
    // SAFETY: the RingBuf owns the map's fd and keeps it open until the AsyncFd drops it.
    let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|err| EbpfError::RingBuf(err.to_string()))?;
    let clock = WallClock::now().map_err(EbpfError::Clock)?;
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let reader = tokio::spawn(read_events(ring, tx, clock, resolver));
    Ok(Running {
        events: rx,
        dropped: Box::new(move || sum_dropped(&dropped)),
        keep_alive: Box::new(KeepAlive {
            _reader: AbortOnDrop(reader.abort_handle()),
            _ebpf: ebpf,
        }),
    })
}

/// Stops the reader, then detaches and unloads everything (field order is drop order).
struct KeepAlive {
    _reader: AbortOnDrop,
    _ebpf: Ebpf,
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones (and this host,
/// which lacks CAP_SYS_RESOURCE) use memcg, so failing to raise it is no reason to stop.
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            "cannot raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn random_key() -> Result<[u64; 2], EbpfError> {
    let mut key = [0u64; 2];
    let len = std::mem::size_of_val(&key);
    // SAFETY: getrandom writes at most `len` bytes into `key`, which has that many.
    let n = unsafe { libc::getrandom(key.as_mut_ptr().cast(), len, 0) };
    if usize::try_from(n).ok() != Some(len) {
        return Err(EbpfError::Random(std::io::Error::last_os_error()));
    }
    Ok(key)
}

fn take_map<T>(ebpf: &mut Ebpf, name: &str) -> Result<T, EbpfError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| EbpfError::Missing(format!("map {name}")))?;
    T::try_from(map).map_err(|err| EbpfError::Object(format!("map {name}: {}", error_chain(&err))))
}

fn sum_dropped(map: &PerCpuArray<MapData, u64>) -> u64 {
    match map.get(&0, 0) {
        Ok(per_cpu) => per_cpu.iter().sum(),
        Err(err) => {
            tracing::debug!("cannot read the drop counter: {err}");
            0
        }
    }
}

/// Attaches the first candidate of `probe` that exists and that the kernel accepts; returns
/// its function. When none does, the first refusal is the reason given.
fn attach_probe(
    ebpf: &mut Ebpf,
    mode: ProbeMode,
    probe: &Probe,
    btf: &Btf,
    kallsyms: Option<&HashSet<&'static str>>,
) -> Result<&'static str, EbpfError> {
    let mut first_error = None;
    for candidate in probe.candidates {
        // fentry looks its function up in BTF when loading; kprobes need it in kallsyms.
        if mode == ProbeMode::Kprobe && kallsyms.is_some_and(|k| !k.contains(candidate.function)) {
            tracing::debug!(
                "{} probe: {} is not in this kernel",
                probe.what,
                candidate.function
            );
            continue;
        }
        match attach_candidate(ebpf, mode, candidate, btf) {
            Ok(()) => return Ok(candidate.function),
            Err(Refused::Absent) => {
                tracing::debug!(
                    "{} probe: {} is not in this kernel's BTF",
                    probe.what,
                    candidate.function
                );
            }
            Err(Refused::By(err)) => {
                tracing::debug!("{} probe: {err}", probe.what);
                unload(ebpf, mode, candidate);
                first_error.get_or_insert(err);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| EbpfError::NoCandidate {
        probe: probe.what,
        candidates: probe
            .candidates
            .iter()
            .map(|c| c.function)
            .collect::<Vec<_>>()
            .join(", "),
    }))
}

/// Why one candidate function could not be used.
enum Refused {
    /// The kernel has no such function: try the next one, nothing to report.
    Absent,
    By(EbpfError),
}

impl From<EbpfError> for Refused {
    fn from(err: EbpfError) -> Self {
        Refused::By(err)
    }
}

fn attach_candidate(
    ebpf: &mut Ebpf,
    mode: ProbeMode,
    candidate: &Candidate,
    btf: &Btf,
) -> Result<(), Refused> {
    let function = candidate.function;
    for on_return in [false, true] {
        if on_return && !candidate.on_return {
            continue;
        }
        let (section, name) = if on_return {
            (mode.return_section(), mode.return_program(candidate))
        } else {
            (mode.entry_section(), mode.entry_program(candidate))
        };
        let program = ebpf
            .program_mut(&name)
            .ok_or_else(|| EbpfError::Missing(format!("program {name}")))?;
        let wrong_type = |_| EbpfError::Missing(format!("{section} program {name}"));
        let load_error = |err: ProgramError| match err {
            ProgramError::Btf(_) => Refused::Absent,
            other => Refused::By(load_error(section, function, other)),
        };
        let attach_error = |err: ProgramError| EbpfError::Attach {
            section,
            function,
            reason: error_chain(&err),
        };
        match (mode, on_return) {
            (ProbeMode::Fentry, false) => {
                let p: &mut FEntry = program.try_into().map_err(wrong_type)?;
                p.load(function, btf).map_err(load_error)?;
                p.attach().map_err(attach_error)?;
            }
            (ProbeMode::Fentry, true) => {
                let p: &mut FExit = program.try_into().map_err(wrong_type)?;
                p.load(function, btf).map_err(load_error)?;
                p.attach().map_err(attach_error)?;
            }
            (ProbeMode::Kprobe, _) => {
                // kprobe programs do not depend on their function: one load serves every candidate.
                let p: &mut KProbe = program.try_into().map_err(wrong_type)?;
                if p.fd().is_err() {
                    p.load().map_err(load_error)?;
                }
                p.attach(function, 0).map_err(attach_error)?;
            }
        }
    }
    Ok(())
}

/// Undoes a half-attached candidate so the next one starts clean (fentry programs are
/// loaded for one function, so they must be unloaded to be loaded for another).
fn unload(ebpf: &mut Ebpf, mode: ProbeMode, candidate: &Candidate) {
    for name in [
        mode.entry_program(candidate),
        mode.return_program(candidate),
    ] {
        let unloaded = match ebpf.program_mut(&name) {
            Some(aya::programs::Program::FEntry(p)) => p.unload(),
            Some(aya::programs::Program::FExit(p)) => p.unload(),
            Some(aya::programs::Program::KProbe(p)) => p.unload(),
            _ => continue,
        };
        if let Err(err) = unloaded {
            tracing::trace!("unloading {name}: {err}");
        }
    }
}

fn load_error(section: &'static str, function: &'static str, err: ProgramError) -> EbpfError {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => refused(section, function, &io_error, &verifier_log.to_string()),
        other => EbpfError::ProgLoad {
            section,
            function,
            errno: error_chain(&other),
            detail: String::new(),
        },
    }
}

/// A BPF_PROG_LOAD refusal: the errno by name, and the verifier's last lines (they say what
/// it rejected; the rest is its trace).
fn refused(
    section: &'static str,
    function: &'static str,
    io_error: &std::io::Error,
    log: &str,
) -> EbpfError {
    let errno = io_error
        .raw_os_error()
        .map_or_else(|| io_error.to_string(), errno_name);
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    let detail = if tail.is_empty() {
        String::new()
    } else {
        format!(": verifier says: {tail}")
    };
    EbpfError::ProgLoad {
        section,
        function,
        errno,
        detail,
    }
}

fn errno_name(code: i32) -> String {
    let name = match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        524 => "ENOTSUPP",
        other => {
            return format!(
                "errno {other}: {}",
                std::io::Error::from_raw_os_error(other)
            )
        }
    };
    name.to_string()
}

/// An error and its sources on one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let more = inner.to_string();
        if !text.contains(&more) {
            text += &format!(": {more}");
        }
        source = inner.source();
    }
    text
}

/// Moves records from the ring buffer into `tx` until the receiver is gone.
async fn read_events(
    mut ring: AsyncFd<RingBuf<MapData>>,
    tx: mpsc::Sender<Event>,
    clock: WallClock,
    resolver: Resolver,
) {
    // An unknown netns means a /proc scan: off the runtime.
    let mut name_netns = |inode| crate::blocking::off_runtime(|| resolver.describe_fresh(inode));
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(guard) => guard,
            Err(err) => {
                tracing::error!("eBPF ring buffer: {err}; no more events");
                return;
            }
        };
        loop {
            let decoded = match guard.get_inner_mut().next() {
                Some(item) => record::decode(&item, &clock, &mut name_netns),
                None => break,
            };
            match decoded {
                Ok(event) => {
                    // The kernel reuses a dead netns's inode number soon: forget its names.
                    if event.kind == EventKind::TeardownEnd {
                        if let Some(place) = &event.from {
                            resolver.forget(place.netns.inode);
                        }
                    }
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
                Err(err) => tracing::warn!("eBPF ring buffer: {err}"),
            }
        }
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_are_named_like_the_kernel_headers() {
        assert_eq!(errno_name(libc::EPERM), "EPERM");
        assert_eq!(errno_name(524), "ENOTSUPP");
        assert!(
            errno_name(libc::EXDEV).starts_with("errno 18: "),
            "{}",
            errno_name(libc::EXDEV)
        );
    }

    #[test]
    fn a_refused_load_names_section_function_and_errno() {
        let eperm = std::io::Error::from_raw_os_error(libc::EPERM);
        let err = refused("fentry", "__dev_change_net_namespace", &eperm, "");
        assert_eq!(
            err.to_string(),
            "the kernel refused BPF_PROG_LOAD for fentry/__dev_change_net_namespace (EPERM)"
        );
        let einval = std::io::Error::from_raw_os_error(libc::EINVAL);
        let log =
            "0: R1=ctx()\n1: (79) r6 = *(u64 *)(r1 +0)\n\ninvalid bpf_context access off=0 size=8\nprocessed 2 insns\n";
        let err = refused("kprobe", "register_netdevice", &einval, log);
        assert_eq!(
            err.to_string(),
            "the kernel refused BPF_PROG_LOAD for kprobe/register_netdevice (EINVAL): verifier says: \
             1: (79) r6 = *(u64 *)(r1 +0) | invalid bpf_context access off=0 size=8 | processed 2 insns"
        );
    }

    /// Every program the candidate table names is in the object with the right type, and
    /// (where the kernel lets kprobe programs load, as on the 6.18 host) passes the verifier.
    #[test]
    fn the_object_has_every_program_and_kprobes_pass_the_verifier() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("skipped: no kernel BTF");
            return;
        };
        let mut ebpf = match EbpfLoader::new()
            .btf(Some(&btf))
            .map_max_entries("events", 1 << 16)
            .load(OBJECT)
        {
            Ok(ebpf) => ebpf,
            Err(err) if unsafe { libc::geteuid() } != 0 => {
                eprintln!("skipped: creating maps needs root ({err})");
                return;
            }
            Err(err) => panic!("{}", error_chain(&err)),
        };
        for probe in PROBES {
            for c in probe.candidates {
                for (mode, name) in [
                    (ProbeMode::Fentry, ProbeMode::Fentry.entry_program(c)),
                    (ProbeMode::Kprobe, ProbeMode::Kprobe.entry_program(c)),
                ]
                .into_iter()
                .chain(
                    c.on_return
                        .then(|| {
                            [
                                (ProbeMode::Fentry, ProbeMode::Fentry.return_program(c)),
                                (ProbeMode::Kprobe, ProbeMode::Kprobe.return_program(c)),
                            ]
                        })
                        .into_iter()
                        .flatten(),
                ) {
                    let program = ebpf
                        .program_mut(&name)
                        .unwrap_or_else(|| panic!("no program {name}"));
                    match (mode, program) {
                        (
                            ProbeMode::Fentry,
                            aya::programs::Program::FEntry(_) | aya::programs::Program::FExit(_),
                        ) => {}
                        (ProbeMode::Kprobe, aya::programs::Program::KProbe(p)) => {
                            if p.fd().is_ok() {
                                continue;
                            }
                            match p.load() {
                                Ok(()) => {}
                                Err(ProgramError::LoadError {
                                    io_error,
                                    verifier_log,
                                }) if verifier_log.to_string().trim().is_empty() => {
                                    eprintln!(
                                        "{name}: kprobe programs do not load here ({io_error})"
                                    );
                                }
                                Err(err) => panic!("{name}: {}", error_chain(&err)),
                            }
                        }
                        (_, other) => panic!("{name} has the wrong type: {:?}", other.prog_type()),
                    }
                }
            }
        }
    }
}
