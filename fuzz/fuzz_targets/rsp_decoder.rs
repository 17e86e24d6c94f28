#![no_main]
//! The decoder never panics and stays bounded, whatever the input and split.
use ktrace_rsp::codec::Decoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d = Decoder::new(512);
    let split = data.first().copied().unwrap_or(1).max(1) as usize;
    for chunk in data.chunks(split) {
        d.feed(chunk);
        while let Ok(Some(_)) = d.next_event() {}
        assert!(d.buffered() <= 512);
    }
});
