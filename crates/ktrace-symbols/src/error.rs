//! The error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while answering a question about a vmlinux.
///
/// Every message says what was wrong and, where possible, what to do about it.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    /// The vmlinux file does not exist.
    #[error("vmlinux file {path} does not exist; pass the uncompressed kernel image with debug info (e.g. /usr/lib/debug/boot/vmlinux-$(uname -r) from the linux-image-*-dbg package)")]
    FileNotFound {
        /// The path that was tried.
        path: PathBuf,
    },
    /// The file could not be opened or mapped.
    #[error("cannot read vmlinux file {path}: {source}")]
    Io {
        /// The path that was tried.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an ELF file at all.
    #[error("{path} is not an ELF file ({reason}); a compressed bzImage/vmlinuz will not do, pass the uncompressed vmlinux (scripts/extract-vmlinux can produce one, but only the -dbg package has debug info)")]
    NotElf {
        /// The path that was tried.
        path: PathBuf,
        /// What the ELF parser said.
        reason: String,
    },
    /// The file is ELF but not an x86-64 kernel image.
    #[error("{path} is not an x86-64 vmlinux: {reason}")]
    NotVmlinux {
        /// The path that was tried.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// The file has no symbol table.
    #[error("{path} has no symbol table (.symtab); it was stripped — use the unstripped vmlinux from the kernel build tree or the -dbg package")]
    NoSymbols {
        /// The path that was tried.
        path: PathBuf,
    },
    /// No symbol of that name exists.
    #[error("unknown symbol `{name}`{}", suggest(suggestions))]
    UnknownSymbol {
        /// The name that was asked for.
        name: String,
        /// Names that exist and look similar (at most 5).
        suggestions: Vec<String>,
    },
    /// An address specification could not be parsed.
    #[error("cannot parse address `{spec}`: {reason}; expected `symbol`, `symbol+0x10`, `symbol+16` or `0xffffffff81000000`")]
    BadAddress {
        /// The specification that was given.
        spec: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The file has no DWARF debug info, which the question needs.
    #[error("{path} has no DWARF debug info, needed for {what}; use a vmlinux built with CONFIG_DEBUG_INFO (Debian/Ubuntu: the linux-image-*-dbg package)")]
    NoDebugInfo {
        /// The vmlinux path.
        path: PathBuf,
        /// What was being looked up.
        what: String,
    },
    /// No type of that name is defined in the debug info.
    #[error("no definition of type `{name}` in the debug info; check the spelling (e.g. `task_struct` or `struct task_struct`) and that this kernel version has it")]
    UnknownType {
        /// The type that was asked for.
        name: String,
    },
    /// The type exists but has no member of that name.
    #[error("`{type_name}` has no member `{member}`{}", suggest(available))]
    UnknownMember {
        /// The type that was searched.
        type_name: String,
        /// The missing member.
        member: String,
        /// Members that look similar, or the first members of the type.
        available: Vec<String>,
    },
    /// A member path tried to step into something that is not a struct or union.
    #[error("cannot look up `{member}` inside `{type_name}`: it is not a struct or union (member paths do not follow pointers; look up the pointed-to type separately)")]
    NotAStruct {
        /// The type that is not a struct/union.
        type_name: String,
        /// The member that was asked for inside it.
        member: String,
    },
    /// A member path was malformed.
    #[error("bad member path `{path}`; expected `type.member[.member...]`, e.g. `task_struct.pid`")]
    BadMemberPath {
        /// The path given.
        path: String,
    },
    /// No variable of that name has debug info.
    #[error("no debug info for variable `{name}`; check the spelling, or that the variable is not optimised away in this kernel")]
    UnknownVariable {
        /// The variable asked for.
        name: String,
    },
    /// No source file matching the request has line info.
    #[error("no source file matching `{file}` has line info in this vmlinux; use a path relative to the kernel tree, e.g. kernel/sched/core.c")]
    UnknownFile {
        /// The file asked for.
        file: String,
    },
    /// More than one source file matches a short file name.
    #[error("`{file}` is ambiguous; it matches {}: give more of the path", candidates.join(", "))]
    AmbiguousFile {
        /// The file asked for.
        file: String,
        /// The files it matches.
        candidates: Vec<String>,
    },
    /// The file exists but no code is attributed to the line.
    #[error("no code at {file}:{line}{}", nearby_lines(nearby))]
    NoCodeAtLine {
        /// The file.
        file: String,
        /// The line.
        line: u32,
        /// Nearby lines that do have code.
        nearby: Vec<u32>,
    },
    /// The ORC unwind tables are missing.
    #[error("{path} has no ORC unwind tables (.orc_unwind_ip/.orc_unwind); the kernel needs CONFIG_UNWINDER_ORC=y")]
    NoOrc {
        /// The vmlinux path.
        path: PathBuf,
    },
    /// The ORC tables exist but are inconsistent.
    #[error("ORC unwind tables are malformed: {reason}")]
    BadOrc {
        /// What is wrong.
        reason: String,
    },
    /// A table the build records (e.g. `__mcount_loc`) lies outside the file's contents.
    #[error("{what} is not in the file's sections")]
    NotInFile {
        /// The table and its address.
        what: String,
    },
    /// The `linux_banner` string is missing or unreadable.
    #[error("cannot read the kernel banner: {reason}")]
    NoBanner {
        /// What is wrong.
        reason: String,
    },
    /// A module debug file is not an x86-64 relocatable ELF object.
    #[error("{path} is not a kernel module debug file ({reason}); pass the directory of the `.ko` files with debug info (Debian: /usr/lib/debug/lib/modules/<release>/ from the linux-image-*-dbg package)")]
    NotModule {
        /// The path that was tried.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// A relocation of a module's debug section could not be applied.
    #[error("cannot relocate {section} of {path}: {reason}")]
    Relocation {
        /// The module debug file.
        path: PathBuf,
        /// The debug section.
        section: String,
        /// What was wrong.
        reason: String,
    },
    /// The debug info could not be parsed.
    #[error("malformed debug info while {context}: {message}; the vmlinux may be truncated or built by an unsupported toolchain")]
    Dwarf {
        /// What was being done.
        context: String,
        /// The parser's message.
        message: String,
    },
}

fn suggest(list: &[String]) -> String {
    if list.is_empty() {
        String::new()
    } else {
        format!("; did you mean: {}?", list.join(", "))
    }
}

fn nearby_lines(list: &[u32]) -> String {
    if list.is_empty() {
        String::new()
    } else {
        let l: Vec<String> = list.iter().map(|l| l.to_string()).collect();
        format!("; nearby lines with code: {}", l.join(", "))
    }
}

impl SymbolError {
    pub(crate) fn dwarf(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        SymbolError::Dwarf { context: context.into(), message: err.to_string() }
    }
}
