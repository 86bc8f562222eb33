//! The ledger document (`state.json`): whatever the bytes, decoding ends in the content or a
//! problem; content that decodes encodes and decodes back to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use netguard::ledger::store::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(content) = decode(data) {
        let bytes = encode(&content).expect("decoded content encodes");
        assert_eq!(decode(&bytes).expect("encoded content decodes"), content);
    }
});
