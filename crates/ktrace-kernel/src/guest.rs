//! One guest scope over the gdb stub: connect, match the kernel, and let go
//! of the guest the same way on every exit.

use std::sync::Arc;

use ktrace_rsp::{ClientConfig, RspError, Session, StubAddr};
use ktrace_symbols::Vmlinux;

use crate::{Kernel, KernelError, MemoryError, ModuleDebugDir, StubMemoryError};

/// How to let go of the guest at the end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Release {
    /// Detach: QEMU removes every breakpoint and resumes the VM, also one
    /// that was paused before ktrace came.
    #[default]
    Resume,
    /// Close the connection without detaching: QEMU leaves the VM paused
    /// (breakpoints must have been removed first).
    LeaveStopped,
}

impl Release {
    /// Lets go of `session` this way.
    pub async fn release(self, session: Session) -> Result<(), RspError> {
        match self {
            Release::Resume => session.detach().await,
            Release::LeaveStopped => {
                session.disconnect();
                Ok(())
            }
        }
    }
}

/// How the kernel is read through the stub.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadThrough {
    /// ktrace's walk of the kernel's own page tables over QEMU's physical
    /// mode, where the stub has it ([`Kernel::attach_stub`]).
    #[default]
    KernelPageTables,
    /// The stub's own translation (the selected CPU's page tables, as GDB
    /// reads), for comparison ([`Kernel::attach`]).
    StubTranslation,
}

/// How [`Guest::connect`] connects and what it sets up.
#[derive(Clone, Debug, Default)]
pub struct GuestConfig {
    /// The RSP client settings (timeouts).
    pub client: ClientConfig,
    /// How the guest is let go of.
    pub release: Release,
    /// Where the modules' debug files are.
    pub module_debug: ModuleDebugDir,
    /// How the kernel is read.
    pub read_through: ReadThrough,
}

/// A stopped guest: the stub session and the kernel matched to the vmlinux.
pub struct Guest {
    /// The stub session (the guest is stopped).
    pub session: Session,
    /// The kernel, matched to the vmlinux.
    pub kernel: Kernel,
    release: Release,
}

impl Guest {
    /// Connects to the stub (which stops the guest) and matches the kernel.
    /// When the kernel does not match, the guest is let go of before the
    /// error is returned.
    pub async fn connect(
        addr: &StubAddr,
        vmlinux: Arc<Vmlinux>,
        cfg: &GuestConfig,
    ) -> Result<Guest, KernelError<StubMemoryError>> {
        let (mut session, _initial_stop) = Session::connect(addr, cfg.client.clone()).await.map_err(stub_error)?;
        let kernel = match cfg.read_through {
            ReadThrough::KernelPageTables => Kernel::attach_stub(&mut session, vmlinux).await,
            ReadThrough::StubTranslation => {
                Kernel::attach(&mut session, vmlinux).await.map_err(|e| e.map_target(MemoryError::Target))
            }
        };
        match kernel {
            Ok(kernel) => {
                Ok(Guest { session, kernel: kernel.with_module_debug(&cfg.module_debug), release: cfg.release })
            }
            Err(e) => {
                let _ = cfg.release.release(session).await;
                Err(e)
            }
        }
    }

    /// Connects, runs `body` on the stopped guest, and lets go of the guest
    /// whatever `body` returned. An error of `body` wins over one of the
    /// release.
    pub async fn scope<T, E>(
        addr: &StubAddr,
        vmlinux: Arc<Vmlinux>,
        cfg: &GuestConfig,
        body: impl AsyncFnOnce(&mut Guest) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<KernelError<StubMemoryError>> + From<RspError>,
    {
        let mut guest = Guest::connect(addr, vmlinux, cfg).await?;
        let result = body(&mut guest).await;
        let released = guest.release().await;
        let value = result?;
        released?;
        Ok(value)
    }

    /// Lets go of the guest as configured.
    pub async fn release(self) -> Result<(), RspError> {
        self.release.release(self.session).await
    }

    /// The session, the kernel and the way to release them, for a caller
    /// that moves the session through other states (resumed, stopped).
    pub fn into_parts(self) -> (Session, Kernel, Release) {
        (self.session, self.kernel, self.release)
    }
}

/// A stub error as the kernel crate carries it.
fn stub_error(e: RspError) -> KernelError<StubMemoryError> {
    KernelError::Target(MemoryError::Target(e))
}
