//! The kernel log: the lockless printk ring buffer (`prb`, Linux 5.10 and
//! later), read like `dmesg`. Offsets come from the vmlinux's DWARF.
//!
//! The ring is a descriptor ring (each descriptor: a state word and where
//! its text lies in the data ring) beside an array of `printk_info`
//! (sequence number, timestamp, text length). A descriptor's state is the
//! top two bits of its `state_var` (committed or finalized: readable); its
//! text block starts with the descriptor id (a `long`), then the text. A
//! block whose `begin` is past its `next` wrapped to the data ring's start.
//! Read while the kernel runs, a record can be overwritten between the
//! reads: each record's state is read again after its text, and one that
//! changed is dropped and counted.

use ktrace_symbols::Vmlinux;
use serde::Serialize;

use crate::{KernelError, Target};

/// At most this many descriptors are read (a ring of 2^count_bits).
const MAX_RECORDS: u64 = 1 << 17;
/// Descriptors read per request.
const CHUNK: u64 = 256;

/// One log record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogRecord {
    /// The record's sequence number.
    pub seq: u64,
    /// Nanoseconds since boot (the local clock).
    pub ts_nsec: u64,
    /// The log level (0 emergency … 7 debug).
    pub level: u8,
    /// Who logged it, as `printk_info.caller_id` says: `T<pid>` for a task,
    /// `C<cpu>` outside task context (what `CONFIG_PRINTK_CALLER` prints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// The text.
    pub text: String,
}

impl LogRecord {
    /// The record as `dmesg` (and the console) show it: `[    1.234567] text`,
    /// each line of a multi-line record with the same prefix.
    pub fn line(&self) -> String {
        let prefix = format!("[{:5}.{:06}] ", self.ts_nsec / 1_000_000_000, self.ts_nsec % 1_000_000_000 / 1000);
        self.text.split('\n').map(|l| format!("{prefix}{l}")).collect::<Vec<_>>().join("\n")
    }
}

/// The log, and how complete it is.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KernelLog {
    /// The records, by sequence number.
    pub records: Vec<LogRecord>,
    /// Records that changed while they were read (only a running guest).
    pub torn: usize,
}

struct Offsets {
    count_bits: u64,
    descs: u64,
    infos: u64,
    head_id: u64,
    tail_id: u64,
    data_size_bits: u64,
    data: u64,
    desc_size: u64,
    desc_state: u64,
    desc_begin: u64,
    desc_next: u64,
    info_size: u64,
    info_seq: u64,
    info_ts: u64,
    info_text_len: u64,
    info_level: u64,
    info_caller: Option<u64>,
}

impl Offsets {
    fn from_vmlinux<E>(vm: &Vmlinux) -> Result<Offsets, KernelError<E>> {
        let m = |p: &str| vm.member(p).map(|l| l.offset).map_err(KernelError::from);
        Ok(Offsets {
            count_bits: m("printk_ringbuffer.desc_ring.count_bits")?,
            descs: m("printk_ringbuffer.desc_ring.descs")?,
            infos: m("printk_ringbuffer.desc_ring.infos")?,
            head_id: m("printk_ringbuffer.desc_ring.head_id")?,
            tail_id: m("printk_ringbuffer.desc_ring.tail_id")?,
            data_size_bits: m("printk_ringbuffer.text_data_ring.size_bits")?,
            data: m("printk_ringbuffer.text_data_ring.data")?,
            desc_size: vm.type_size("prb_desc")?,
            desc_state: m("prb_desc.state_var")?,
            desc_begin: m("prb_desc.text_blk_lpos.begin")?,
            desc_next: m("prb_desc.text_blk_lpos.next")?,
            info_size: vm.type_size("printk_info")?,
            info_seq: m("printk_info.seq")?,
            info_ts: m("printk_info.ts_nsec")?,
            info_text_len: m("printk_info.text_len")?,
            // `u8 flags:5; u8 level:3;` share the byte after `facility`.
            info_level: m("printk_info.level")?,
            info_caller: vm.member("printk_info.caller_id").ok().map(|l| l.offset),
        })
    }
}

/// The state of a descriptor: bits 62..63 of `state_var`.
const DESC_FLAGS_SHIFT: u32 = 62;
const DESC_ID_MASK: u64 = (1 << DESC_FLAGS_SHIFT) - 1;
const DESC_COMMITTED: u64 = 1;
const DESC_FINALIZED: u64 = 2;

fn u64_at(b: &[u8], at: u64) -> u64 {
    b.get(at as usize..at as usize + 8).map_or(0, |s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

/// `caller_id`: the top bit set means a CPU number, clear a task's pid.
fn caller_name(id: u32) -> String {
    match id & 0x8000_0000 {
        0 => format!("T{id}"),
        _ => format!("C{}", id & 0x7fff_ffff),
    }
}

/// Reads the whole log.
pub(crate) async fn read_log<T: Target>(
    target: &mut T,
    vm: &Vmlinux,
    slide: u64,
) -> Result<KernelLog, KernelError<T::Error>> {
    let o = Offsets::from_vmlinux(vm)?;
    let prb_ptr = vm.symbol("prb")?.addr.0.wrapping_add(slide);
    let prb = target.read_u64(prb_ptr).await.map_err(|e| e.reading("prb", prb_ptr))?;
    let header_len = (o.data + 8).max(o.tail_id + 8).max(o.head_id + 8) as usize;
    let h = target
        .read_memory(prb, header_len)
        .await
        .map_err(KernelError::Target)
        .map_err(|e| e.reading("the printk ring buffer", prb))?;
    let count_bits =
        u32::from_le_bytes(h[o.count_bits as usize..o.count_bits as usize + 4].try_into().expect("4 bytes"));
    let data_bits =
        u32::from_le_bytes(h[o.data_size_bits as usize..o.data_size_bits as usize + 4].try_into().expect("4 bytes"));
    if count_bits > 30 || data_bits > 40 {
        return Err(KernelError::Corrupt(format!("printk ring of 2^{count_bits} records, 2^{data_bits} bytes")));
    }
    let count = (1u64 << count_bits).min(MAX_RECORDS);
    let (descs, infos, data) = (u64_at(&h, o.descs), u64_at(&h, o.infos), u64_at(&h, o.data));
    let data_mask = (1u64 << data_bits) - 1;
    let data_len = 1usize << data_bits;
    // Every descriptor and info, in large reads, then the whole data ring.
    let mut desc_bytes = Vec::with_capacity((count * o.desc_size) as usize);
    let mut info_bytes = Vec::with_capacity((count * o.info_size) as usize);
    for start in (0..count).step_by(CHUNK as usize) {
        let n = CHUNK.min(count - start);
        let reqs = [
            (descs + start * o.desc_size, (n * o.desc_size) as usize),
            (infos + start * o.info_size, (n * o.info_size) as usize),
        ];
        let r = target.read_memory_many(&reqs).await.map_err(KernelError::Target)?;
        let [Some(d), Some(i)] = [r[0].clone(), r[1].clone()] else {
            return Err(KernelError::Corrupt(format!("printk descriptors {start}..{} cannot be read", start + n)));
        };
        desc_bytes.extend(d);
        info_bytes.extend(i);
    }
    let text = target
        .read_memory(data, data_len)
        .await
        .map_err(KernelError::Target)
        .map_err(|e| e.reading("the printk text ring", data))?;
    let mut records = Vec::new();
    let mut candidates = Vec::new();
    for idx in 0..count {
        let d = &desc_bytes[(idx * o.desc_size) as usize..((idx + 1) * o.desc_size) as usize];
        let state_var = u64_at(d, o.desc_state);
        let state = state_var >> DESC_FLAGS_SHIFT;
        if state != DESC_COMMITTED && state != DESC_FINALIZED {
            continue;
        }
        let i = &info_bytes[(idx * o.info_size) as usize..((idx + 1) * o.info_size) as usize];
        let text_len = u16::from_le_bytes([i[o.info_text_len as usize], i[o.info_text_len as usize + 1]]) as u64;
        let mut begin = u64_at(d, o.desc_begin) & data_mask;
        let next = u64_at(d, o.desc_next) & data_mask;
        let body = if u64_at(d, o.desc_begin) & 1 == 1 {
            String::new() // a record without text
        } else {
            if begin > next {
                begin = 0;
            }
            let start = begin + 8;
            // The block starts with its descriptor's id.
            let id_in_block = u64_at(&text, begin);
            if id_in_block & DESC_ID_MASK != state_var & DESC_ID_MASK {
                continue; // overwritten since the descriptor was read
            }
            let len = text_len.min(next.saturating_sub(start));
            String::from_utf8_lossy(&text[start as usize..(start + len) as usize]).into_owned()
        };
        let level = i[o.info_level as usize] >> 5;
        candidates.push((idx, state_var));
        let caller = o.info_caller.and_then(|at| i.get(at as usize..at as usize + 4)).map(|b| {
            let id = u32::from_le_bytes(b.try_into().expect("4 bytes"));
            caller_name(id)
        });
        records.push(LogRecord {
            seq: u64_at(i, o.info_seq),
            ts_nsec: u64_at(i, o.info_ts),
            level,
            caller,
            text: body,
        });
    }
    // Records whose descriptor changed while the text was read are torn.
    let mut torn = 0;
    let reqs: Vec<(u64, usize)> =
        candidates.iter().map(|&(idx, _)| (descs + idx * o.desc_size + o.desc_state, 8)).collect();
    let mut keep = vec![true; records.len()];
    for (k, chunk) in reqs.chunks(CHUNK as usize).enumerate() {
        let again = target.read_memory_many(chunk).await.map_err(KernelError::Target)?;
        for (j, now) in again.into_iter().enumerate() {
            let n = k * CHUNK as usize + j;
            let same = now.is_some_and(|b| u64_at(&b, 0) & DESC_ID_MASK == candidates[n].1 & DESC_ID_MASK);
            if !same {
                keep[n] = false;
                torn += 1;
            }
        }
    }
    let mut records: Vec<LogRecord> = records.into_iter().zip(keep).filter_map(|(r, k)| k.then_some(r)).collect();
    records.sort_by_key(|r| r.seq);
    Ok(KernelLog { records, torn })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_lines_look_like_dmesg() {
        let r = LogRecord { seq: 0, ts_nsec: 1_234_567_891, level: 6, caller: None, text: "Linux version 6.1".into() };
        assert_eq!(r.line(), "[    1.234567] Linux version 6.1");
        let r = LogRecord { seq: 1, ts_nsec: 0, level: 5, caller: Some("T1".into()), text: "x\ny".into() };
        assert_eq!(r.line(), "[    0.000000] x\n[    0.000000] y");
    }

    #[test]
    fn callers_are_tasks_or_cpus() {
        assert_eq!(caller_name(1), "T1");
        assert_eq!(caller_name(0x8000_0003), "C3");
    }
}
