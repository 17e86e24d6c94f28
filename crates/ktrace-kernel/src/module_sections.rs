//! Where each section of a loaded module went: `mod->sect_attrs`, the
//! table behind `/sys/module/<name>/sections/`. A module's debug file
//! needs it to place its DWARF.
//!
//! Every layout has `struct module_sect_attrs { struct attribute_group grp;
//! … attrs[]; }` whose `grp.bin_attrs` is a NULL-terminated array of
//! pointers to one `struct bin_attribute` per section, named by
//! `attr.name`. The address is beside it in `struct module_sect_attr {
//! struct bin_attribute battr; unsigned long address; }` (up to Linux
//! 6.13), or in `bin_attribute.private` where that struct is gone.

use std::collections::HashMap;

use crate::module::{ModuleInfo, SectAttrsLayout};
use crate::task::le_u64;
use crate::{KernelError, Target};

/// The most sections read from one module.
const MAX_SECTIONS: usize = 4096;
/// The longest section name read.
const MAX_NAME: usize = 256;

/// Reads a module's sections: name → runtime address (empty when the
/// module has no section table).
pub async fn read_module_sections<T: Target>(
    target: &mut T,
    layout: &SectAttrsLayout,
    info: &ModuleInfo,
) -> Result<HashMap<String, u64>, KernelError<T::Error>> {
    let reading = |what: &str, addr: u64| {
        let what = format!("{}'s {what}", info.name);
        move |e: KernelError<T::Error>| e.reading(what, addr)
    };
    let at = info.module + layout.sect_attrs;
    let attrs = target.read_u64(at).await.map_err(reading("section table pointer", at))?;
    if attrs == 0 {
        return Ok(HashMap::new());
    }
    let at = attrs + layout.bin_attrs;
    let array = target.read_u64(at).await.map_err(reading("section attribute array", at))?;
    // The pointers up to the NULL that ends them, read a few at a time
    // (never across a 128-byte boundary, so never into an unmapped page).
    let mut battrs = Vec::new();
    'array: loop {
        let at = array + 8 * battrs.len() as u64;
        let len = (128 - at % 128) as usize;
        let chunk = target
            .read_memory(at, len)
            .await
            .map_err(KernelError::Target)
            .map_err(reading("section attribute array", at))?;
        for p in chunk.chunks_exact(8).map(le_u64) {
            if p == 0 {
                break 'array;
            }
            battrs.push(p);
        }
        if battrs.len() > MAX_SECTIONS {
            return Err(KernelError::Corrupt(format!("module {} has more than {MAX_SECTIONS} sections", info.name)));
        }
    }
    let reqs: Vec<(u64, usize)> =
        battrs.iter().flat_map(|&b| [(b + layout.name, 8), (b.wrapping_add(layout.address), 8)]).collect();
    let words = target.read_memory_many(&reqs).await.map_err(KernelError::Target)?;
    let mut out = HashMap::new();
    for (pair, battr) in words.chunks_exact(2).zip(&battrs) {
        let (Some(name_at), Some(addr)) = (&pair[0], &pair[1]) else {
            return Err(KernelError::Corrupt(format!(
                "module {}'s section attribute 0x{battr:x} is unreadable",
                info.name
            )));
        };
        let name = read_c_string(target, le_u64(name_at)).await?;
        out.insert(name, le_u64(addr));
    }
    Ok(out)
}

/// A NUL-terminated string, read in pieces that do not cross a 64-byte
/// boundary (so none reaches into an unmapped page).
async fn read_c_string<T: Target>(target: &mut T, at: u64) -> Result<String, KernelError<T::Error>> {
    let mut bytes = Vec::new();
    while bytes.len() < MAX_NAME {
        let from = at + bytes.len() as u64;
        let len = (64 - from % 64) as usize;
        let piece = target
            .read_memory(from, len)
            .await
            .map_err(KernelError::Target)
            .map_err(|e| e.reading("a module section name", from))?;
        if let Some(end) = piece.iter().position(|&b| b == 0) {
            bytes.extend_from_slice(&piece[..end]);
            return Ok(String::from_utf8_lossy(&bytes).into_owned());
        }
        bytes.extend_from_slice(&piece);
    }
    Err(KernelError::Corrupt(format!("a module section name at 0x{at:x} is longer than {MAX_NAME} bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::SyntheticTarget;

    const MODULE: u64 = 0xffff_ffff_c000_8000;
    const ATTRS: u64 = 0xffff_8880_0100_0000;
    const NAMES: u64 = 0xffff_8880_0200_0000;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    fn info() -> ModuleInfo {
        ModuleInfo { module: MODULE, name: "brd".into(), state: "Live".into(), base: 0, size: 0, regions: vec![] }
    }

    /// A section table with `sections` laid out as `stride`-byte elements
    /// after a 0x30-byte header, the address `address` bytes into each.
    fn table(t: &mut SyntheticTarget, layout: &SectAttrsLayout, stride: u64, sections: &[(&str, u64)]) {
        t.map(MODULE, &[0u8; 0x400]).write_u64(MODULE + layout.sect_attrs, ATTRS);
        let array = ATTRS + 0x30 + stride * sections.len() as u64;
        t.map(ATTRS, &vec![0u8; 0x1000]).write_u64(ATTRS + layout.bin_attrs, array);
        t.map(NAMES, &[0u8; 0x400]);
        let mut name_at = NAMES + 60; // names straddle 64-byte pieces
        for (i, (name, addr)) in sections.iter().enumerate() {
            let battr = ATTRS + 0x30 + stride * i as u64;
            t.write_u64(array + 8 * i as u64, battr);
            t.write_u64(battr + layout.name, name_at).write_u64(battr.wrapping_add(layout.address), *addr);
            t.write(name_at, name.as_bytes());
            name_at += name.len() as u64 + 1;
        }
    }

    const SECTIONS: &[(&str, u64)] = &[
        (".text", 0xffff_ffff_c000_1000),
        (".init.text", 0xffff_ffff_c002_0000),
        (".text.unlikely", 0xffff_ffff_c000_1800),
        (".gnu.linkonce.this_module", 0xffff_ffff_c000_8000),
    ];

    #[test]
    fn address_beside_the_bin_attribute() {
        // module_sect_attr { bin_attribute battr (0x40 bytes); unsigned long address; }
        let layout = SectAttrsLayout { sect_attrs: 0x248, bin_attrs: 0x20, name: 0, address: 0x40 };
        let mut t = SyntheticTarget::new(1);
        table(&mut t, &layout, 0x48, SECTIONS);
        let got = block_on(read_module_sections(&mut t, &layout, &info())).expect("sections");
        assert_eq!(got, SECTIONS.iter().map(|(n, a)| (n.to_string(), *a)).collect());
    }

    #[test]
    fn address_in_the_bin_attribute() {
        // bin_attribute attrs[] with the address in `private`.
        let layout = SectAttrsLayout { sect_attrs: 0x3b0, bin_attrs: 0x28, name: 0, address: 0x18 };
        let mut t = SyntheticTarget::new(1);
        table(&mut t, &layout, 0x48, SECTIONS);
        let got = block_on(read_module_sections(&mut t, &layout, &info())).expect("sections");
        assert_eq!(got.len(), 4);
        assert_eq!(got[".init.text"], 0xffff_ffff_c002_0000);
    }

    #[test]
    fn no_table_and_broken_tables() {
        let layout = SectAttrsLayout { sect_attrs: 0x3b0, bin_attrs: 0x28, name: 0, address: 0x18 };
        let mut t = SyntheticTarget::new(1);
        t.map(MODULE, &[0u8; 0x400]);
        assert!(block_on(read_module_sections(&mut t, &layout, &info())).expect("none").is_empty());
        // A pointer to nothing mapped.
        table(&mut t, &layout, 0x48, SECTIONS);
        t.write_u64(ATTRS + 0x30 + 0x48 * 4, 0xdead_0000);
        let err = block_on(read_module_sections(&mut t, &layout, &info())).expect_err("unreadable").to_string();
        assert!(err.contains("unreadable"), "{err}");
    }
}
