//! Any bytes as a record file: reading, verifying, seal checks and command extraction must return
//! errors, never panic or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = recorder::verify(data) {
        let key = recorder::SealKey::from_seed(&[1u8; 32]).public();
        let _ = report.seal(&[key]);
    }
    if let Ok(reader) = recorder::Reader::new(data) {
        let _ = recorder::extract_commands(reader);
    }
});
