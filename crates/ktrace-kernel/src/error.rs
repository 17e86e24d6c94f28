use ktrace_symbols::SymbolError;

/// What can go wrong while reading the kernel's state through a
/// [`crate::Target`] whose errors are `E` (its `Target::Error`), so that a
/// caller sees the target's own error, not a boxed one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError<E> {
    /// The target (the debugger connection) failed.
    #[error("target: {0}")]
    Target(#[source] E),
    /// The vmlinux lacks something the kernel crate needs.
    #[error(transparent)]
    Symbols(#[from] SymbolError),
    /// The guest's `linux_banner` differs from the vmlinux's, at every slide tried.
    #[error(
        "this vmlinux does not match the running kernel\n  vmlinux: {file}\n  guest:   {guest}\n\
         use the vmlinux of the kernel the guest booted (the -dbg package of the same release)"
    )]
    BannerMismatch {
        /// The banner in the file.
        file: String,
        /// What the guest has (at link address, or the best found), or why it could not be read.
        guest: String,
    },
    /// Reading a kernel object from the guest failed.
    #[error(
        "cannot read {what} at 0x{addr:x}: target: {source}\n  \
         the guest has nothing mapped there: the vmlinux may not be the one the guest booted, or ktrace's view of this kernel's layout is wrong"
    )]
    Read {
        /// What was being read ("CPU 1's current task pointer").
        what: String,
        /// The guest address.
        addr: u64,
        /// Why the target could not read it.
        #[source]
        source: E,
    },
    /// A kernel data structure did not make sense.
    #[error("corrupt kernel data: {0}")]
    Corrupt(String),
    /// The in-guest filter cannot be installed safely.
    #[error("the in-guest filter cannot be used: {0}")]
    Refused(#[from] crate::trampoline::Refusal),
    /// No task with this pid or comm.
    #[error("no task {0} in the guest")]
    NoSuchTask(String),
}

impl<E> KernelError<E> {
    /// Says which object was being read at `addr` when a target read failed;
    /// other errors are returned unchanged.
    pub fn reading(self, what: impl Into<String>, addr: u64) -> KernelError<E> {
        match self {
            KernelError::Target(source) => KernelError::Read { what: what.into(), addr, source },
            other => other,
        }
    }

    /// The same error over another target error type.
    pub fn map_target<F>(self, f: impl FnOnce(E) -> F) -> KernelError<F> {
        match self {
            KernelError::Target(e) => KernelError::Target(f(e)),
            KernelError::Read { what, addr, source } => KernelError::Read { what, addr, source: f(source) },
            KernelError::Symbols(e) => KernelError::Symbols(e),
            KernelError::BannerMismatch { file, guest } => KernelError::BannerMismatch { file, guest },
            KernelError::Corrupt(s) => KernelError::Corrupt(s),
            KernelError::Refused(r) => KernelError::Refused(r),
            KernelError::NoSuchTask(s) => KernelError::NoSuchTask(s),
        }
    }

    /// Whether the error is about what the user gave (the vmlinux, a pid or
    /// name) rather than a failure while reading the guest.
    pub fn is_usage(&self) -> bool {
        matches!(self, KernelError::Symbols(_) | KernelError::BannerMismatch { .. } | KernelError::NoSuchTask(_))
    }
}
