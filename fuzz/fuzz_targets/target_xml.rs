#![no_main]
//! `RegisterMap::from_xml` never panics and stays bounded, whatever the root
//! document and whatever the stub sends for included documents.
//!
//! Input layout: documents separated by NUL bytes. The first is the root; the
//! fetcher answers the n-th include with document `n % (count - 1) + 1`, or with
//! the root itself (so self-inclusion is reachable) when there is only one, or
//! with an error when the href is empty.
use ktrace_rsp::{RegisterMap, RspError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let docs: Vec<&str> = text.split('\0').collect();
    let root = docs[0];
    let mut fetched = 0usize;
    let mut total = 0usize;
    let result = RegisterMap::from_xml(root, |href| {
        if href.is_empty() {
            return Err(RspError::Closed);
        }
        fetched += 1;
        let doc = if docs.len() > 1 {
            docs[fetched % (docs.len() - 1) + 1]
        } else {
            root
        };
        total += doc.len();
        Ok(doc.to_string())
    });
    assert!(fetched <= ktrace_rsp::target_xml::MAX_INCLUDES + 1);
    assert!(total <= ktrace_rsp::target_xml::MAX_EXPANDED_BYTES + data.len());
    if let Ok(map) = result {
        // Offsets are consistent with sizes and regnums are sorted.
        let regs = map.registers();
        for w in regs.windows(2) {
            assert!(w[0].regnum <= w[1].regnum);
            assert!(w[1].offset >= w[0].offset);
        }
    }
});
