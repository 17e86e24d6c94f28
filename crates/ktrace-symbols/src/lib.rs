//! Answers questions about a Linux `vmlinux` file: symbols, addresses,
//! struct layouts, source lines, ORC unwind entries and the banner.
//!
//! Everything is lazy: [`Vmlinux::open`] only maps the file and reads the
//! section table. The symbol table is indexed on the first symbol query,
//! DWARF units are parsed one at a time when a type or line is asked for,
//! so that a 600 MB debug vmlinux answers typical questions in well under a
//! second while touching a few megabytes of it.
#![deny(missing_docs)]

mod addr;
mod banner;
mod btf;
mod cfi;
mod dwarf;
mod elf;
mod error;
#[cfg(test)]
mod fixture_tests;
pub mod hex;
mod keyword;
mod layout;
mod lines;
mod module_debug;
mod orc;
mod scopes;
mod symbols;
mod text;
mod type_shape;
mod types;
mod vmlinux;

pub use addr::KernelAddr;
pub use cfi::{CfaRule, CfiRow, RegRule, SavedRegisters, CALLEE_SAVED, DWARF_RBP, DWARF_RSP};
pub use elf::LoadSegment;
pub use error::SymbolError;
pub use layout::MemberLayout;
pub use lines::{short_source_path, SourceFrame};
pub use module_debug::ModuleDebug;
pub use orc::{OrcEntry, OrcFormat, OrcReg, OrcSelfCheck, OrcTable, OrcType, ORC_ENTRY_SIZE, ORC_HEADER_SIZE};
pub use scopes::{FrameVariable, LocationExpr, Scope, VariableLocation};
pub use symbols::{Symbol, SymbolKind, SymbolOffset};
pub use text::FillRun;
pub use types::{Field, TypeRef, TypeShape};
pub use vmlinux::Vmlinux;
