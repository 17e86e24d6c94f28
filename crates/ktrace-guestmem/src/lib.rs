//! Guest physical memory read without a debugger, behind
//! [`ktrace_kernel::PhysicalMemory`]:
//!
//! - [`HostMemory`]: the RAM of a running QEMU, read from the host with
//!   `/proc/PID/mem` while the guest runs. The guest-physical → QEMU-address
//!   map comes from QMP (`info mtree -f` and `gpa2hva`) when a QMP socket is
//!   given, else from `/proc/PID/maps`. Read-only.
//! - [`CoreDump`]: a QEMU `dump-guest-memory` ELF file, its `PT_LOAD`
//!   segments by physical address and each CPU's registers from its
//!   `NT_PRSTATUS` notes.
//!
//! [`find_qemu`] finds the QEMU process behind a gdb stub address without
//! connecting to it (a connection would stop the guest).
//!
//! Knows nothing of Linux and nothing of RSP.

#![deny(missing_docs)]

mod core_dump;
mod error;
mod host;
mod maps;
mod qmp;
mod socket;

pub use core_dump::CoreDump;
pub use error::GuestMemError;
pub use host::{HostMemory, RamRange};
pub use socket::find_qemu;
