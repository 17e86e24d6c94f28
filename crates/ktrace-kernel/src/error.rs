use ktrace_symbols::SymbolError;

/// What can go wrong while reading the kernel's state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// The debugger connection failed.
    #[error("target: {0}")]
    Target(#[source] Box<dyn std::error::Error + Send + Sync>),
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
    /// A kernel data structure did not make sense.
    #[error("corrupt kernel data: {0}")]
    Corrupt(String),
    /// No task with this pid or comm.
    #[error("no task {0} in the guest")]
    NoSuchTask(String),
}

impl KernelError {
    /// Wraps a target error.
    pub fn target<E: std::error::Error + Send + Sync + 'static>(err: E) -> KernelError {
        KernelError::Target(Box::new(err))
    }
}
