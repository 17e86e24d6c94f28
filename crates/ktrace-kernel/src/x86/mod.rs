//! What ktrace knows of x86-64 itself, in one place: instruction encodings
//! ([`insn`]), the page-table format ([`paging`]) and the kernel's
//! address-space layout as the guest reports it ([`AddressSpace`]).

pub mod insn;
pub mod paging;
pub(crate) mod space;

pub use space::AddressSpace;
