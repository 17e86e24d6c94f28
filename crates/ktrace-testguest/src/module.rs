//! Kernel modules for the initramfs: finding one in a kernel package's
//! listing, and reading what it needs (`.modinfo`) from the ELF file itself,
//! so no `modinfo` (kmod) is needed on the host.

use crate::deb::{self, Entry};

/// A kernel module file in a package listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ModuleMember<'a> {
    /// The regular file (symlinks and hard links followed).
    pub entry: &'a Entry,
    /// The path below `lib/modules/<release>/`, without a compression
    /// suffix: `kernel/drivers/block/brd.ko`. The same path names the debug
    /// file below `usr/lib/debug/lib/modules/<release>/`.
    pub rel: String,
    /// True when the member is `.ko.xz`.
    pub xz: bool,
}

/// The part of a member name below `lib/modules/<release>/`, when it is a
/// module (`.ko` or `.ko.xz`): `(kernel/drivers/block/brd.ko, xz)`.
fn module_rel(name: &str) -> Option<(String, bool)> {
    let (_, below) = name.split_once("lib/modules/")?;
    let (_release, rel) = below.split_once('/')?;
    if let Some(plain) = rel.strip_suffix(".xz") {
        return plain.ends_with(".ko").then(|| (plain.to_string(), true));
    }
    rel.ends_with(".ko").then(|| (rel.to_string(), false))
}

/// The module whose path below `lib/modules/<release>/` is `rel`
/// (`kernel/drivers/block/brd.ko`), plain or xz-compressed; found by the
/// path alone, whatever the release directory and its prefix (`./lib`,
/// `./usr/lib`) are.
pub(crate) fn find_by_path<'a>(entries: &'a [Entry], rel: &str) -> Option<ModuleMember<'a>> {
    find(entries, |r| r == rel)
}

/// The module named `name` (`-` and `_` alike, as the kernel treats them):
/// how a dependency from `.modinfo` is looked up.
pub(crate) fn find_by_name<'a>(entries: &'a [Entry], name: &str) -> Option<ModuleMember<'a>> {
    let want = normalize(name);
    find(entries, |rel| {
        rel.rsplit('/').next().and_then(|f| f.strip_suffix(".ko")).is_some_and(|n| normalize(n) == want)
    })
}

fn find<'a>(entries: &'a [Entry], matches: impl Fn(&str) -> bool) -> Option<ModuleMember<'a>> {
    entries.iter().find_map(|e| {
        let (rel, xz) = module_rel(&e.name)?;
        if !matches(&rel) {
            return None;
        }
        let entry = deb::resolve(entries, &e.name).ok()?;
        Some(ModuleMember { entry, rel, xz })
    })
}

/// A module name as the kernel lists it (`-` becomes `_`).
pub(crate) fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// What `.modinfo` says about a module.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ModInfo {
    /// `name=`: the module's name.
    pub name: String,
    /// `depends=`: the modules it needs loaded first.
    pub depends: Vec<String>,
    /// `vermagic=`: the kernel release and build options it was made for.
    pub vermagic: String,
}

/// Reads the `.modinfo` section of a module (ELF64, little-endian).
pub(crate) fn modinfo(elf: &[u8]) -> Result<ModInfo, String> {
    let section = section(elf, ".modinfo")?.ok_or("no .modinfo section")?;
    let mut info = ModInfo::default();
    for field in section.split(|&b| b == 0) {
        let field = String::from_utf8_lossy(field);
        let Some((key, value)) = field.split_once('=') else { continue };
        match key {
            "name" => info.name = value.to_string(),
            "depends" => info.depends = value.split(',').filter(|d| !d.is_empty()).map(str::to_string).collect(),
            "vermagic" => info.vermagic = value.to_string(),
            _ => {}
        }
    }
    if info.name.is_empty() {
        return Err(".modinfo names no module".into());
    }
    Ok(info)
}

/// The GNU build ID (`.note.gnu.build-id`) of an ELF file, when it has one.
pub(crate) fn build_id(elf: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let Some(note) = section(elf, ".note.gnu.build-id")? else { return Ok(None) };
    // namesz, descsz, type, "GNU\0", desc.
    let word = |at: usize| note.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
    let (Some(namesz), Some(descsz)) = (word(0), word(4)) else { return Err("short build-id note".into()) };
    let start = 12 + namesz.div_ceil(4) * 4;
    note.get(start..start + descsz).map(|d| Some(d.to_vec())).ok_or_else(|| "short build-id note".into())
}

/// The contents of the section `name`; `None` when there is none. A
/// `SHT_NOBITS` section (as `.modinfo` may be in a split debug file) has none.
fn section<'a>(elf: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, String> {
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return Err("not a little-endian ELF64 file".into());
    }
    let u16_at = |at: usize| elf.get(at..at + 2).map(|b| u16::from_le_bytes(b.try_into().unwrap()) as usize);
    let u32_at = |at: usize| elf.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
    let u64_at = |at: usize| elf.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
    let truncated = || "truncated ELF headers".to_string();
    let shoff = u64_at(0x28).ok_or_else(truncated)?;
    let shentsize = u16_at(0x3a).ok_or_else(truncated)?;
    let shnum = u16_at(0x3c).ok_or_else(truncated)?;
    let shstrndx = u16_at(0x3e).ok_or_else(truncated)?;
    let header = |i: usize| -> Option<(usize, u32, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((u32_at(h)?, u32_at(h + 4)? as u32, u64_at(h + 24)?, u64_at(h + 32)?))
    };
    let bytes = |offset: usize, size: usize| offset.checked_add(size).and_then(|end| elf.get(offset..end));
    let (_, _, stroff, strsize) = header(shstrndx).ok_or_else(truncated)?;
    let names = bytes(stroff, strsize).ok_or_else(truncated)?;
    for i in 0..shnum {
        let (name_off, kind, offset, size) = header(i).ok_or_else(truncated)?;
        let Some(this) = names.get(name_off..).and_then(|n| n.split(|&b| b == 0).next()) else { continue };
        if this == name.as_bytes() {
            const SHT_NOBITS: u32 = 8;
            if kind == SHT_NOBITS {
                return Ok(None);
            }
            return bytes(offset, size).map(Some).ok_or_else(truncated);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deb::{parse_listing, Kind};

    /// `dpkg-deb -c linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb`
    /// (a few lines): plain `.ko` under `./lib/modules`.
    const IMAGE_61: &str = "\
drwxr-xr-x root/root         0 2026-11-16 10:17 ./lib/modules/6.1.0-56-cloud-amd64/kernel/drivers/block/
-rw-r--r-- root/root     28017 2026-11-16 10:17 ./lib/modules/6.1.0-56-cloud-amd64/kernel/drivers/block/brd.ko
-rw-r--r-- root/root     61289 2026-11-16 10:17 ./lib/modules/6.1.0-56-cloud-amd64/kernel/drivers/block/loop.ko
-rw-r--r-- root/root     39772 2026-11-16 10:17 ./lib/modules/6.1.0-56-cloud-amd64/modules.order
-rw-r--r-- root/root   7966656 2026-11-16 10:17 ./boot/vmlinuz-6.1.0-56-cloud-amd64
";

    /// The same for 6.12 (and 7.x's `linux-modules-*`): `.ko.xz` under `./usr/lib/modules`.
    const IMAGE_612: &str = "\
-rw-r--r-- root/root      6296 2026-11-12 09:30 ./usr/lib/modules/6.12.117+deb13-cloud-amd64/kernel/drivers/block/brd.ko.xz
-rw-r--r-- root/root     12100 2026-11-12 09:30 ./usr/lib/modules/6.12.117+deb13-cloud-amd64/kernel/fs/fat/fat.ko.xz
-rw-r--r-- root/root      7404 2026-11-12 09:30 ./usr/lib/modules/6.12.117+deb13-cloud-amd64/kernel/fs/nls/nls_cp437.ko.xz
-rw-r--r-- root/root     40739 2026-11-12 09:30 ./usr/lib/modules/6.12.117+deb13-cloud-amd64/modules.order
";

    #[test]
    fn valid_plain_module_is_found_in_a_61_listing() {
        let e = parse_listing(IMAGE_61);
        let m = find_by_path(&e, "kernel/drivers/block/brd.ko").unwrap();
        assert_eq!(m.entry.name, "./lib/modules/6.1.0-56-cloud-amd64/kernel/drivers/block/brd.ko");
        assert_eq!((m.rel.as_str(), m.xz, m.entry.size), ("kernel/drivers/block/brd.ko", false, 28017));
        assert_eq!(find_by_name(&e, "loop").unwrap().entry.size, 61289);
    }

    #[test]
    fn valid_xz_module_is_found_in_a_612_listing() {
        let e = parse_listing(IMAGE_612);
        let m = find_by_path(&e, "kernel/drivers/block/brd.ko").unwrap();
        assert_eq!(m.entry.name, "./usr/lib/modules/6.12.117+deb13-cloud-amd64/kernel/drivers/block/brd.ko.xz");
        assert_eq!((m.rel.as_str(), m.xz, m.entry.size), ("kernel/drivers/block/brd.ko", true, 6296));
        // Dependencies are named the kernel's way: `-` and `_` alike.
        assert_eq!(find_by_name(&e, "nls-cp437").unwrap().rel, "kernel/fs/nls/nls_cp437.ko");
        assert_eq!(find_by_name(&e, "fat").unwrap().rel, "kernel/fs/fat/fat.ko");
    }

    #[test]
    fn valid_symlinked_module_resolves_to_the_file() {
        let text = "\
-rw-r--r-- root/root 100 2026-01-01 00:00 ./usr/lib/modules/7.0.0/kernel/drivers/block/brd.ko.xz
lrwxrwxrwx root/root   0 2026-01-01 00:00 ./lib/modules/7.0.0/kernel/drivers/block/brd.ko.xz -> ../../../../../../usr/lib/modules/7.0.0/kernel/drivers/block/brd.ko.xz
";
        let e = parse_listing(text);
        let m = find_by_path(&e, "kernel/drivers/block/brd.ko").unwrap();
        assert_eq!((m.entry.kind.clone(), m.entry.size), (Kind::File, 100));
    }

    #[test]
    fn invalid_listing_without_the_module_finds_nothing() {
        // 7.x's linux-image-* has no modules at all; others lack this one.
        let image_7 = "\
drwxr-xr-x root/root 0 2026-11-15 22:30 ./usr/share/doc/linux-image-7.3.4+deb13-cloud-amd64/
-rw-r--r-- root/root 9 2026-11-15 22:30 ./usr/share/doc/linux-image-7.3.4+deb13-cloud-amd64/changelog.Debian.gz
";
        assert!(find_by_path(&parse_listing(image_7), "kernel/drivers/block/brd.ko").is_none());
        let e = parse_listing(IMAGE_612);
        assert!(find_by_path(&e, "kernel/drivers/block/loop.ko").is_none());
        assert!(find_by_name(&e, "modules").is_none());
        // Not a module, not below lib/modules/<release>/, or only a directory.
        assert_eq!(module_rel("./lib/modules/6.1.0/modules.order"), None);
        assert_eq!(module_rel("./usr/share/brd.ko"), None);
        assert_eq!(module_rel("./lib/modules/6.1.0/kernel/x.ko.zst"), None);
        assert_eq!(module_rel("./lib/modules/6.1.0/kernel/drivers/"), None);
    }

    /// A minimal ELF64 with the given sections (name, type, contents).
    fn elf(sections: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut names = vec![0u8];
        let mut offsets = Vec::new();
        for (name, _, _) in sections {
            offsets.push(names.len());
            names.extend_from_slice(name.as_bytes());
            names.push(0);
        }
        let shstrtab_name = names.len();
        names.extend_from_slice(b".shstrtab\0");
        let mut out = vec![0u8; 64];
        out[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let mut data_offsets = Vec::new();
        for (_, _, data) in sections {
            data_offsets.push(out.len());
            out.extend_from_slice(data);
        }
        let names_offset = out.len();
        out.extend_from_slice(&names);
        let shoff = out.len();
        let mut header = |name: usize, kind: u32, offset: usize, size: usize| {
            let mut h = [0u8; 64];
            h[0..4].copy_from_slice(&(name as u32).to_le_bytes());
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[24..32].copy_from_slice(&(offset as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            out.extend_from_slice(&h);
        };
        header(0, 0, 0, 0);
        for (i, (_, kind, data)) in sections.iter().enumerate() {
            header(offsets[i], *kind, data_offsets[i], data.len());
        }
        header(shstrtab_name, 3, names_offset, names.len());
        out[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        out[0x3c..0x3e].copy_from_slice(&(sections.len() as u16 + 2).to_le_bytes());
        out[0x3e..0x40].copy_from_slice(&(sections.len() as u16 + 1).to_le_bytes());
        out
    }

    #[test]
    fn valid_modinfo_gives_name_depends_and_vermagic() {
        let info = b"license=GPL\0alias=block-major-1-*\0depends=\0retpoline=Y\0intree=Y\0name=brd\0\
            vermagic=6.1.0-56-cloud-amd64 SMP preempt mod_unload modversions \0";
        let brd = elf(&[(".text", 1, b"\xc3"), (".modinfo", 1, info)]);
        let m = modinfo(&brd).unwrap();
        assert_eq!(m.name, "brd");
        assert!(m.depends.is_empty());
        assert!(m.vermagic.starts_with("6.1.0-56-cloud-amd64 "));
        let vfat = elf(&[(".modinfo", 1, b"depends=fat,nls_base\0name=vfat\0")]);
        assert_eq!(modinfo(&vfat).unwrap().depends, ["fat", "nls_base"]);
    }

    #[test]
    fn valid_build_id_is_read_from_its_note() {
        let mut note = Vec::new();
        for w in [4u32, 3, 3] {
            note.extend_from_slice(&w.to_le_bytes());
        }
        note.extend_from_slice(b"GNU\0\xaa\xbb\xcc");
        let file = elf(&[(".note.gnu.build-id", 7, &note)]);
        assert_eq!(build_id(&file).unwrap(), Some(vec![0xaa, 0xbb, 0xcc]));
        assert_eq!(build_id(&elf(&[])).unwrap(), None);
    }

    #[test]
    fn invalid_modules_are_errors() {
        assert!(modinfo(b"not an ELF").is_err());
        assert!(modinfo(&elf(&[(".text", 1, b"\xc3")])).unwrap_err().contains("no .modinfo"));
        // In a split debug file .modinfo is NOBITS: no contents.
        assert!(modinfo(&elf(&[(".modinfo", 8, b"")])).is_err());
        assert!(modinfo(&elf(&[(".modinfo", 1, b"depends=\0")])).unwrap_err().contains("names no module"));
        let mut truncated = elf(&[(".modinfo", 1, b"name=x\0")]);
        truncated.truncate(100);
        assert!(modinfo(&truncated).is_err());
    }
}
