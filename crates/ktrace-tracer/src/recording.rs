//! `--in-guest` recording: the rings the trampoline's record routine fills
//! in borrowed guest memory, drained while the guest runs (from QEMU's RAM
//! on this host) or at short stops (through the stub), and the borrowed
//! memory given back at the end.

use ktrace_guestmem::HostMemory;
use ktrace_kernel::trampoline::{self, record, Record, Refusal, RingState, Rings};
use ktrace_kernel::{Kernel, KernelError, PhysicalMemory, Target};
use ktrace_rsp::Session;

use crate::TraceError;

/// The rings in the guest and what the host has read of them.
pub(crate) struct Recording {
    pub rings: Rings,
    /// The physical address of the first ring.
    phys: u64,
    /// What the borrowed memory held before (given back at the end).
    saved: Vec<u8>,
    /// Per ring: the next sequence number to read.
    tails: Vec<u64>,
    /// Per ring: the drops it counted, as last read.
    drops: Vec<u64>,
    /// Per ring, at the last read: records read, and slots reserved but
    /// not committed yet (a CPU still writing them).
    read: Vec<u64>,
    reserved: Vec<u64>,
    /// QEMU's RAM from this host, when it can be read (and written) there:
    /// the rings are drained without stopping the guest.
    live: Option<HostMemory>,
    /// The trampoline writing the rings, once installed.
    pub region: Option<ktrace_kernel::trampoline::Region>,
}

/// How the rings are read, for the summary.
pub(crate) fn drain_method(live: bool) -> &'static str {
    match live {
        true => "read from QEMU's RAM on this host while the guest runs",
        false => "read through the gdb stub at short stops",
    }
}

impl Recording {
    /// Borrows guest memory for one ring per CPU (proven unused, its
    /// bytes saved), empties the rings, and opens QEMU's RAM on this host
    /// when `qemu` is known and agrees with the stub. `Ok(Err(_))`: why
    /// the guest cannot record (the caller falls back to stopping at each
    /// match).
    pub(crate) async fn set_up(
        session: &mut Session,
        kernel: &Kernel,
        max_stack: u64,
        qemu: Option<u32>,
    ) -> Result<Result<Recording, Refusal>, TraceError> {
        let cpus = kernel.cpu_count() as u64;
        let slot = (record::SLOT_HEADER + max_stack).next_multiple_of(64);
        let want = cpus * (record::RING_HEADER + 2 * slot);
        let low = match trampoline::borrowable_low_memory(kernel, session, want).await {
            Ok(low) => low,
            Err(KernelError::Refused(r)) => return Ok(Err(r)),
            Err(e) => return Err(e.into()),
        };
        let Some(rings) = Rings::fit(low.virt, low.len, cpus, max_stack) else {
            return Ok(Err(Refusal::Borrow(format!("{} bytes hold no two slots a CPU", low.len))));
        };
        let used = rings.ring_bytes * rings.count;
        let saved = session.read_physical(low.phys, used as usize).await?;
        // Empty rings: no stale word can pass for a commit.
        let mut image = vec![0u8; used as usize];
        for cpu in 0..rings.count {
            let at = (cpu * rings.ring_bytes) as usize;
            let header = rings.empty_header();
            image[at..at + header.len()].copy_from_slice(&header);
        }
        kernel.memory(session).write_memory(rings.base, &image).await?;
        let mut rec = Recording {
            rings,
            phys: low.phys,
            saved,
            tails: vec![0; cpus as usize],
            drops: vec![0; cpus as usize],
            read: vec![0; cpus as usize],
            reserved: vec![0; cpus as usize],
            live: None,
            region: None,
        };
        if let Some(pid) = qemu {
            rec.live = rec.open_live(session, pid).await;
        }
        Ok(Ok(rec))
    }

    /// QEMU's RAM on this host, checked against the stub on the rings'
    /// first bytes; `None` (the stub drains) when it cannot be had or differs.
    async fn open_live(&self, session: &mut Session, pid: u32) -> Option<HostMemory> {
        let mut host = HostMemory::open(pid, None).map_err(|e| tracing::debug!("live rings: {e}")).ok()?;
        host.allow_writes().map_err(|e| tracing::debug!("live rings: {e}")).ok()?;
        let len = record::RING_HEADER as usize;
        let theirs = session.read_physical(self.phys, len).await.ok()?;
        let ours = host.read_physical(self.phys, len).await.ok()?;
        (theirs == ours).then_some(host)
    }

    /// The borrowed memory's kernel address and its first bytes.
    pub(crate) fn lent(&self) -> (u64, &[u8]) {
        (self.rings.base, &self.saved)
    }

    /// The physical address of the borrowed memory.
    pub(crate) fn phys(&self) -> u64 {
        self.phys
    }

    /// Whether the rings are drained from the host while the guest runs.
    pub(crate) fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// Drops counted by the guest so far.
    pub(crate) fn drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// The most records one ring gave at the last read.
    pub(crate) fn fullest(&self) -> u64 {
        self.read.iter().copied().max().unwrap_or(0)
    }

    /// Records reserved but not committed at the last read (at the end: a
    /// CPU was inside the routine when the sites were restored).
    pub(crate) fn unfinished(&self) -> u64 {
        self.reserved.iter().sum()
    }

    /// Reads every committed record from QEMU's RAM (the guest running).
    pub(crate) async fn drain_live(&mut self) -> Result<Vec<Record>, TraceError> {
        let Some(mut host) = self.live.take() else { return Ok(Vec::new()) };
        let out = self.drain(&mut host).await;
        self.live = Some(host);
        out.map_err(|e| TraceError::Recording(e.to_string()))
    }

    /// Reads every committed record through the stub (the guest stopped).
    pub(crate) async fn drain_stub(&mut self, session: &mut Session) -> Result<Vec<Record>, TraceError> {
        Ok(self.drain(session).await?)
    }

    async fn drain<M: PhysicalMemory>(&mut self, memory: &mut M) -> Result<Vec<Record>, M::Error> {
        let mut out = Vec::new();
        let slot_bytes = self.rings.slot_bytes;
        for cpu in 0..self.rings.count {
            let ring = self.phys + cpu * self.rings.ring_bytes;
            let header = memory.read_physical(ring, 24).await?;
            let Some(state) = RingState::decode(&header) else { continue };
            self.drops[cpu as usize] = state.drops;
            let start = self.tails[cpu as usize];
            let mut tail = start;
            // The reserved slots, in at most two runs (the ring wraps), one
            // read each.
            let mut left = state.head.saturating_sub(tail).min(self.rings.slots);
            'runs: while left > 0 {
                let index = tail % self.rings.slots;
                let run = left.min(self.rings.slots - index);
                let bytes = memory.read_physical(self.rings.slot(ring, tail), (run * slot_bytes) as usize).await?;
                for k in 0..run {
                    let at = (k * slot_bytes) as usize;
                    // Not committed yet (a CPU is still writing it): next time.
                    let Some(r) = Record::decode(tail, &bytes[at..at + slot_bytes as usize]) else { break 'runs };
                    out.push(r);
                    tail += 1;
                }
                left -= run;
            }
            self.read[cpu as usize] = tail - start;
            self.reserved[cpu as usize] = state.head.saturating_sub(tail);
            if tail != start {
                self.tails[cpu as usize] = tail;
                memory.write_physical(ring + 8, &tail.to_le_bytes()).await?;
            }
        }
        Ok(out)
    }

    /// Gives the borrowed memory its bytes back (once no CPU can reach the
    /// record routine).
    pub(crate) async fn give_back(&self, session: &mut Session, kernel: &Kernel) -> Result<(), TraceError> {
        Ok(kernel.memory(session).write_memory(self.rings.base, &self.saved).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrace_kernel::synthetic::SyntheticTarget;

    const PHYS: u64 = 0x10000;

    fn recording(cpus: u64) -> Recording {
        let rings = Rings::fit(0xffff_8880_0001_0000, 64 << 10, cpus, 512).expect("fits");
        Recording {
            rings,
            phys: PHYS,
            saved: Vec::new(),
            tails: vec![0; cpus as usize],
            drops: vec![0; cpus as usize],
            read: vec![0; cpus as usize],
            reserved: vec![0; cpus as usize],
            live: None,
            region: None,
        }
    }

    /// A slot as the record routine writes it, committed as `seq` when asked.
    fn slot(seq: u64, committed: bool, pid: i32, stack: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; record::SLOT_HEADER as usize + stack.len()];
        if committed {
            b[0..8].copy_from_slice(&(seq + 1).to_le_bytes());
        }
        b[36..40].copy_from_slice(&(stack.len() as u32).to_le_bytes());
        b[40..44].copy_from_slice(&pid.to_le_bytes());
        b[record::SLOT_HEADER as usize..].copy_from_slice(stack);
        b
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    #[test]
    fn drains_committed_records_in_order_and_moves_the_tail() {
        run(async {
            let mut rec = recording(2);
            let mut mem = SyntheticTarget::new(2);
            let r = rec.rings;
            for cpu in 0..2 {
                mem.write_phys(PHYS + cpu * r.ring_bytes, &r.empty_header());
            }
            // CPU 1: three reserved, the middle one not committed yet; 5 drops.
            let ring1 = PHYS + r.ring_bytes;
            mem.write_phys(ring1, &3u64.to_le_bytes()).write_phys(ring1 + 16, &5u64.to_le_bytes());
            mem.write_phys(r.slot(ring1, 0), &slot(0, true, 91, &[0xaa; 24]));
            mem.write_phys(r.slot(ring1, 1), &slot(1, false, 92, &[]));
            mem.write_phys(r.slot(ring1, 2), &slot(2, true, 93, &[]));
            let got = rec.drain(&mut mem).await.expect("drain");
            assert_eq!(
                got.iter().map(|r| (r.seq, r.pid)).collect::<Vec<_>>(),
                [(0, 91)],
                "stops at the unfinished one"
            );
            assert_eq!(got[0].stack, vec![0xaa; 24]);
            assert_eq!(rec.drops(), 5);
            assert_eq!((rec.fullest(), rec.unfinished()), (1, 2), "slots 1 and 2 wait behind the unfinished one");
            let tail = mem.read_physical(ring1 + 8, 8).await.unwrap();
            assert_eq!(u64::from_le_bytes(tail.try_into().unwrap()), 1, "the guest may reuse slot 0");
            // The routine finishes slot 1: both come now, in order.
            mem.write_phys(r.slot(ring1, 1), &slot(1, true, 92, &[]));
            let got = rec.drain(&mut mem).await.expect("drain");
            assert_eq!(got.iter().map(|r| r.pid).collect::<Vec<_>>(), [92, 93]);
            assert_eq!((rec.fullest(), rec.unfinished()), (2, 0));
            assert!(rec.drain(&mut mem).await.expect("drain").is_empty(), "nothing twice");
        });
    }

    #[test]
    fn a_stale_slot_from_an_earlier_lap_is_not_a_record() {
        run(async {
            let mut rec = recording(1);
            let mut mem = SyntheticTarget::new(1);
            let r = rec.rings;
            mem.write_phys(PHYS, &r.empty_header());
            // Head moved past a whole lap: slot 0 still holds seq 0's commit.
            let seq = r.slots;
            rec.tails[0] = seq;
            mem.write_phys(PHYS, &(seq + 1).to_le_bytes()).write_phys(PHYS + 8, &seq.to_le_bytes());
            mem.write_phys(r.slot(PHYS, 0), &slot(0, true, 91, &[]));
            assert!(rec.drain(&mut mem).await.expect("drain").is_empty(), "seq {seq} is not committed yet");
        });
    }
}
