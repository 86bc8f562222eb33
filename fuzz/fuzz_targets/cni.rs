//! CNI result files: a libcni cache entry (`/var/lib/cni/results/...`) or a podman/CNI
//! checkpoint; both formats go through `cni::parse`, which tells them apart by content.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = netguard::capture::cni::parse(std::path::Path::new("fuzz-input"), data);
});
