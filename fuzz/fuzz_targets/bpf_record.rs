//! Ring buffer records from the eBPF probes (`struct ng_record`): any bytes decode into an
//! event or a decode error.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use netguard::event::Netns;
use netguard::trace::ebpf::record::{decode, WallClock};

fuzz_target!(|data: &[u8]| {
    static CLOCK: OnceLock<WallClock> = OnceLock::new();
    let clock = CLOCK.get_or_init(|| WallClock::now().expect("clocks"));
    let mut name = |inode| Netns {
        inode,
        names: vec![],
    };
    let _ = decode(data, clock, &mut name);
});
