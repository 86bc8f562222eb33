//! The agent's settings: a TOML file and the flags over it. The first byte picks which flags
//! are given; an interval flag takes the next 8 bytes as an f64 (NaN, infinities, huge); the
//! rest is the file's text, whose first line is also given as an `--exclude`.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use netguard::config::{FileConfig, Flags, Settings};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let mut flags = Flags::default();
    if pick & 1 != 0 && rest.len() >= 8 {
        let (secs, text) = rest.split_at(8);
        flags.interval = Some(f64::from_le_bytes(secs.try_into().expect("8 bytes")));
        rest = text;
    }
    let text = String::from_utf8_lossy(rest);
    if pick & 2 != 0 {
        flags
            .exclude
            .push(text.lines().next().unwrap_or_default().to_string());
    }
    let path = Path::new("/etc/netguard/fuzz.toml");
    if let Ok(file) = FileConfig::parse(path, &text) {
        let _ = Settings::resolve(file, path, flags);
    }
});
