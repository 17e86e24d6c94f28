//! Pipelined requests: several packets in one write, replies in order.
//!
//! [`Batch`] is the typed way: memory and register reads, each answered
//! with its own decoded result. [`Session::request_many`] sends raw packets.

use super::Session;
use crate::packets::{memory, registers};
use crate::RspError;

/// Reads that go to the stub together, in one pipelined round trip.
///
/// ```no_run
/// # async fn demo(session: &mut ktrace_rsp::Session) -> Result<(), ktrace_rsp::RspError> {
/// let mut batch = ktrace_rsp::Batch::new();
/// let pc = batch.read_register(16);
/// let word = batch.read_memory(0xffff_ffff_8100_0000, 8);
/// let mut replies = session.run_batch(&batch).await?;
/// let (pc, word) = (replies.register_u64(pc)?, replies.memory(word)?);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Batch {
    items: Vec<Item>,
}

#[derive(Debug, Clone, Copy)]
enum Item {
    Memory { addr: u64, len: usize, physical: bool },
    Register(u32),
    AllRegisters,
}

/// The handle of a memory read in a [`Batch`]; redeem it with [`BatchReplies::memory`].
#[derive(Debug)]
#[must_use]
pub struct MemoryRead(usize);

/// The handle of a register read in a [`Batch`]; redeem it with [`BatchReplies::register`].
#[derive(Debug)]
#[must_use]
pub struct RegisterRead(usize);

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Reads `len` bytes at `addr` (split into several `m` packets when
    /// longer than the session's memory chunk).
    pub fn read_memory(&mut self, addr: u64, len: usize) -> MemoryRead {
        self.items.push(Item::Memory { addr, len, physical: false });
        MemoryRead(self.items.len() - 1)
    }

    /// Reads `len` bytes of guest physical memory at `addr` (QEMU's
    /// `PhyMemMode`). A batch that reads both kinds switches the mode once.
    pub fn read_physical(&mut self, addr: u64, len: usize) -> MemoryRead {
        self.items.push(Item::Memory { addr, len, physical: true });
        MemoryRead(self.items.len() - 1)
    }

    /// Reads register `regnum` (`p`) of the thread that last stopped.
    pub fn read_register(&mut self, regnum: u32) -> RegisterRead {
        self.items.push(Item::Register(regnum));
        RegisterRead(self.items.len() - 1)
    }

    /// Reads every register (`g`) of the thread that last stopped, in the
    /// stub's `g` layout; redeem it with [`BatchReplies::register`].
    pub fn read_registers(&mut self) -> RegisterRead {
        self.items.push(Item::AllRegisters);
        RegisterRead(self.items.len() - 1)
    }

    /// The number of reads.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when there is nothing to read.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// The answers to a [`Batch`], one per read. A stub error (`E14` for
/// unmapped memory) belongs to its read; transport errors fail the batch.
#[derive(Debug)]
pub struct BatchReplies {
    items: Vec<Result<Vec<u8>, RspError>>,
}

impl BatchReplies {
    fn take(&mut self, n: usize) -> Result<Vec<u8>, RspError> {
        match self.items.get_mut(n) {
            Some(item) => std::mem::replace(item, Ok(Vec::new())),
            None => Err(RspError::NotInBatch(n)),
        }
    }

    /// The bytes of a memory read.
    pub fn memory(&mut self, read: MemoryRead) -> Result<Vec<u8>, RspError> {
        self.take(read.0)
    }

    /// A register's raw target-order bytes.
    pub fn register(&mut self, read: RegisterRead) -> Result<Vec<u8>, RspError> {
        self.take(read.0)
    }

    /// A register as a little-endian integer (at most 8 bytes are used).
    pub fn register_u64(&mut self, read: RegisterRead) -> Result<u64, RspError> {
        Ok(le_u64(&self.register(read)?))
    }
}

pub(crate) fn le_u64(bytes: &[u8]) -> u64 {
    bytes.iter().take(8).rev().fold(0u64, |a, &x| (a << 8) | x as u64)
}

/// A stub's answer to one item (kept with the item), or a failure of the
/// whole batch.
fn per_item(e: RspError) -> Result<RspError, RspError> {
    match e {
        RspError::Stub { .. }
        | RspError::StubMessage { .. }
        | RspError::UnexpectedReply { .. }
        | RspError::Unsupported { .. } => Ok(e),
        fatal => Err(fatal),
    }
}

impl Session {
    /// Sends every read of `batch` pipelined (at most `pipeline_depth` in
    /// flight) and decodes each reply.
    pub async fn run_batch(&mut self, batch: &Batch) -> Result<BatchReplies, RspError> {
        let wants = |physical: bool| {
            batch.items.iter().any(|i| matches!(i, Item::Memory { physical: p, .. } if *p == physical))
        };
        let mut items: Vec<Result<Vec<u8>, RspError>> = batch.items.iter().map(|_| Ok(Vec::new())).collect();
        // One pass per address space asked for, the one the stub is in
        // first: a batch of one space costs one round trip (plus the switch).
        let first = if wants(self.shared.physical) || !wants(!self.shared.physical) {
            self.shared.physical
        } else {
            !self.shared.physical
        };
        for (pass, physical) in [first, !first].into_iter().enumerate() {
            if pass == 1 && !wants(physical) {
                break;
            }
            if wants(physical) {
                self.set_physical(physical).await?;
            }
            self.run_pass(batch, pass == 0, physical, &mut items).await?;
        }
        Ok(BatchReplies { items })
    }

    /// Sends the memory reads of `batch` in one address space (and, in the
    /// first pass, its register reads).
    async fn run_pass(
        &mut self,
        batch: &Batch,
        with_registers: bool,
        space: bool,
        items: &mut [Result<Vec<u8>, RspError>],
    ) -> Result<(), RspError> {
        let chunk = self.chunk();
        let mut pkts = Vec::new();
        let mut owner = Vec::new();
        for (n, item) in batch.items.iter().enumerate() {
            match *item {
                Item::Memory { physical, .. } if physical != space => {}
                Item::Register(_) | Item::AllRegisters if !with_registers => {}
                Item::Memory { addr, len, .. } => {
                    let mut off = 0;
                    while off < len {
                        let l = chunk.min(len - off);
                        pkts.push(memory::read_request(addr.wrapping_add(off as u64), l));
                        owner.push(n);
                        off += l;
                    }
                }
                Item::Register(regnum) => {
                    pkts.push(registers::read_one_request(regnum));
                    owner.push(n);
                }
                Item::AllRegisters => {
                    pkts.push(registers::READ_ALL.to_vec());
                    owner.push(n);
                }
            }
        }
        if pkts.is_empty() {
            return Ok(());
        }
        let depth = self.shared.cfg.pipeline_depth;
        let replies = self.shared.conn.pipeline(&pkts, depth).await?;
        for (r, n) in replies.iter().zip(owner) {
            let Ok(buf) = &mut items[n] else { continue };
            let decoded = match batch.items[n] {
                Item::Memory { .. } => memory::parse_read(r),
                Item::Register(_) => registers::parse_registers("p", r),
                Item::AllRegisters => registers::parse_registers("g", r),
            };
            match decoded {
                Ok(d) => buf.extend(d),
                Err(e) => items[n] = Err(per_item(e)?),
            }
        }
        Ok(())
    }

    /// Sends every request in one write and returns the raw replies in
    /// order, uninterpreted (stub errors come back as reply payloads). Prefer
    /// [`Session::run_batch`], which encodes and decodes.
    pub async fn request_many(&mut self, payloads: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, RspError> {
        self.shared.conn.pipeline(payloads, payloads.len().max(1)).await
    }
}

impl Session {
    /// Closes the connection WITHOUT detaching, like GDB's `disconnect`.
    ///
    /// QEMU then leaves the VM paused, with any inserted breakpoints in
    /// place, until the next client connects. This is how another debugger
    /// can look at exactly the same stop; it is never the right way to end a
    /// trace (use [`Session::detach`]).
    pub fn disconnect(mut self) {
        self.shared.detach_on_drop = false;
    }
}
