//! Any bytes as a recording, exported to asciicast: the output must always be valid JSON lines.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(reader) = recorder::Reader::new(data) else { return };
    let events = recorder::terminal_events(reader, true);
    let mut out = Vec::new();
    recorder::export_asciicast(&events, &mut out).expect("writing to memory");
    let text = String::from_utf8(out).expect("asciicast output is UTF-8");
    for line in text.lines() {
        serde_json_check(line);
    }
});

fn serde_json_check(line: &str) {
    // Cheap structural check without another dependency: every line is an object or array.
    assert!((line.starts_with('{') && line.ends_with('}')) || (line.starts_with('[') && line.ends_with(']')), "bad line: {line}");
}
