//! Whether a function's entry is an ftrace site ktrace may patch, and where.

use ktrace_symbols::{KernelAddr, Vmlinux};

use super::Refusal;

/// ftrace's 5-byte NOP (`nopl 0x0(%rax,%rax,1)`), which the kernel writes
/// over each `call __fentry__` at boot while the function is not traced.
pub const FTRACE_NOP: [u8; 5] = crate::x86::insn::NOP5;
/// `endbr64`, first in functions of kernels built with IBT.
use crate::x86::insn::ENDBR64;

/// Where the ftrace NOP of the function at `func` (runtime address) is.
///
/// `live` holds the function's first 16 bytes as the guest has them. For a
/// vmlinux function (`file`: the vmlinux, its sorted ftrace sites and the
/// function's link address), the site must be one the build recorded in
/// `__mcount_loc`, and every live byte before it must equal the file's
/// (the `endbr64` of IBT kernels): a FineIBT or otherwise rewritten preamble
/// is refused. For a module function only the live bytes are known: an
/// optional `endbr64`, then the NOP.
pub fn ftrace_site(
    name: &str,
    func: u64,
    live: &[u8],
    file: Option<(&Vmlinux, &[KernelAddr], KernelAddr)>,
) -> Result<u64, Refusal> {
    let refuse = |why: String| Refusal::Site { func: name.to_string(), why };
    let offset = match file {
        Some((vm, sites, link)) => {
            let i = sites.partition_point(|s| s.0 < link.0);
            let site = sites.get(i).filter(|s| s.0 < link.0 + 16).ok_or_else(|| {
                refuse(
                    "the vmlinux records no ftrace call at its entry (a notrace function, or not a function's start)"
                        .into(),
                )
            })?;
            let offset = (site.0 - link.0) as usize;
            let before = vm.section_bytes_at(link, offset).unwrap_or_default();
            if live.get(..offset) != Some(before) {
                return Err(refuse(format!(
                    "its preamble is {} in the guest but {} in the vmlinux (FineIBT or another tool rewrote it)",
                    hex(&live[..offset.min(live.len())]),
                    hex(before)
                )));
            }
            offset
        }
        None if live.starts_with(&ENDBR64) => ENDBR64.len(),
        None => 0,
    };
    match live.get(offset..offset + 5) {
        Some(b) if b == FTRACE_NOP => Ok(func + offset as u64),
        Some([0xe8, ..]) => Err(refuse(format!(
            "a call is at its ftrace site (+{offset}): ftrace, a kprobe or another tool is using it"
        ))),
        Some([0xcc, ..]) => Err(refuse(format!("an int3 is at its ftrace site (+{offset}): a kprobe or a debugger"))),
        Some(b) => Err(refuse(format!("its ftrace site (+{offset}) holds {}, not the ftrace NOP", hex(b)))),
        None => Err(refuse("short read of its entry".into())),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_functions_by_live_bytes() {
        let mut live = FTRACE_NOP.to_vec();
        live.extend([0x55; 11]);
        assert_eq!(ftrace_site("f", 0x1000, &live, None), Ok(0x1000));
        let mut ibt = ENDBR64.to_vec();
        ibt.extend(FTRACE_NOP);
        ibt.extend([0x55; 7]);
        assert_eq!(ftrace_site("f", 0x1000, &ibt, None), Ok(0x1004));
    }

    #[test]
    fn patched_sites_are_refused_with_the_reason() {
        let mut ftrace = ENDBR64.to_vec();
        ftrace.extend([0xe8, 1, 2, 3, 4]);
        let err = ftrace_site("f", 0x1000, &ftrace, None).unwrap_err().to_string();
        assert!(err.contains("ftrace, a kprobe"), "{err}");
        let kprobe = [0xcc, 0x1f, 0x44, 0, 0, 0x55];
        assert!(ftrace_site("f", 0, &kprobe, None).unwrap_err().to_string().contains("int3"));
        let plain = [0x55, 0x48, 0x89, 0xe5, 0x41, 0x57];
        assert!(ftrace_site("f", 0, &plain, None).unwrap_err().to_string().contains("55 48 89 e5 41"));
    }
}
