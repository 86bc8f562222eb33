//! eBPF backends: a CO-RE object built by clang from `netguard-ebpf/`, loaded by aya as
//! fentry/fexit or kprobe/kretprobe programs, events read from a BPF ring buffer.

use crate::netns::Resolver;
use crate::trace::{Running, TraceOptions};

/// Which program type to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeMode {
    Fentry,
    Kprobe,
}

/// Loads and attaches every probe; `Err` is the reason in plain words.
pub async fn start(_mode: ProbeMode, _options: &TraceOptions, _resolver: Resolver) -> Result<Running, String> {
    Err("not built yet".to_string())
}
