//! What ktrace knows of x86-64 itself, in one place: instruction encodings
//! ([`insn`]), the page-table format ([`paging`]) and the kernel's
//! address-space layout as the guest reports it ([`AddressSpace`]) and the
//! registers a debugger shows ([`registers`]).

pub mod insn;
pub mod paging;
pub mod registers;
pub(crate) mod space;

pub use space::{thread_size, AddressSpace};
