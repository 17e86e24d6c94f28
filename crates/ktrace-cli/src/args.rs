//! The arguments several commands share, and what the CLI says when
//! connecting or matching the kernel fails.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use ktrace_rsp::{ClientConfig, RspError, StubAddr};
use ktrace_tracer::{ExprRole, Filter, GuestRelease, TraceError};

use crate::UsageError;

/// Options every command that reads a vmlinux takes.
#[derive(Args, Debug, Clone)]
pub struct VmlinuxArg {
    /// The vmlinux with debug info of the guest's kernel [default: the one
    /// among ./vmlinux, /usr/lib/debug/boot/vmlinux-*,
    /// /usr/lib/debug/lib/modules/*/vmlinux, /lib/modules/*/build/vmlinux
    /// and ktrace's cache whose banner and build id the guest has; ./vmlinux
    /// for `sym` and `layout`].
    #[arg(long, value_name = "PATH")]
    pub vmlinux: Option<PathBuf>,
}

/// Where the debug files of modules are, for commands that show module frames.
#[derive(Args, Debug, Clone, Default)]
pub struct ModulesArg {
    /// The directory of the modules' `.ko` files with debug info, for
    /// file:line and inlined frames in module code [default:
    /// /usr/lib/debug/lib/modules/<release>/, where the -dbg package puts them].
    #[arg(long = "modules", value_name = "DIR")]
    pub modules: Option<PathBuf>,
}

impl ModulesArg {
    /// The directory as ktrace-kernel takes it.
    pub fn dir(&self) -> ktrace_kernel::ModuleDebugDir {
        match &self.modules {
            Some(dir) => ktrace_kernel::ModuleDebugDir::Given(dir.clone()),
            None => ktrace_kernel::ModuleDebugDir::Default,
        }
    }
}

/// Where the stub is and which vmlinux to read it with.
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// The gdb stub: `:1234`, `host:port` or `unix:PATH` (not needed with `--core`).
    pub addr: Option<String>,
    #[command(flatten)]
    pub vmlinux: VmlinuxArg,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Timeout for each request to the stub, in seconds.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub timeout: f64,
    /// Leave the guest paused when done (close without detaching; QEMU's
    /// detach would resume it). ktrace's breakpoints are removed first.
    #[arg(long)]
    pub leave_stopped: bool,
}

impl TargetArgs {
    /// The stub address as given.
    pub fn addr(&self) -> Result<&str> {
        self.addr
            .as_deref()
            .ok_or_else(|| UsageError("give the gdb stub's address (:PORT, HOST:PORT or unix:PATH)".into()).into())
    }

    pub fn stub(&self) -> Result<StubAddr> {
        let addr = self.addr()?;
        addr.parse().map_err(|e| {
            UsageError(format!("{addr}: not a stub address (use :PORT, HOST:PORT or unix:PATH): {e}")).into()
        })
    }

    /// How to let go of the guest at the end.
    pub fn release(&self) -> GuestRelease {
        if self.leave_stopped {
            GuestRelease::LeaveStopped
        } else {
            GuestRelease::Resume
        }
    }

    pub fn client(&self) -> ClientConfig {
        client_config(self.timeout)
    }

    /// How the commands that read and release the guest connect.
    pub fn guest(&self) -> ktrace_kernel::GuestConfig {
        ktrace_kernel::GuestConfig {
            client: self.client(),
            release: self.release(),
            ..ktrace_kernel::GuestConfig::default()
        }
    }
}

/// The RSP client with a request timeout of `secs` (at least 50 ms).
pub fn client_config(secs: f64) -> ClientConfig {
    ClientConfig { timeout: Duration::from_secs_f64(secs.max(0.05)), ..ClientConfig::default() }
}

/// Turns an error from connecting or matching the kernel into a message that
/// says what to do (exit code 2), leaving run-time failures alone.
pub fn explain(addr: &str, err: TraceError) -> anyhow::Error {
    let usage = |text: String| UsageError(text).into();
    match err {
        TraceError::Rsp(e) => explain_rsp(addr, e),
        TraceError::GuestGone(_) => anyhow::Error::from(err),
        TraceError::NoBreakpoints => usage("no breakpoint given (--break LOCATION)".into()),
        TraceError::ModuleLocation { spec, reason } => {
            usage(format!("--break {spec}: {reason} (is the module loaded? --wait waits for it to load)"))
        }
        TraceError::CpuOutOfRange { cpu, count } => {
            usage(format!("--cpu {cpu}: the guest has {count} CPUs (0-{})", count.saturating_sub(1)))
        }
        TraceError::Expression { role, error } => usage(match role {
            ExprRole::Condition => format!("--if {error}"),
            _ => format!("--print {error}"),
        }),
        TraceError::NoTaskWithPid { pid } => {
            usage(format!("no task with pid {pid} in the guest (use --wait to wait for it)"))
        }
        TraceError::NoMatchingTask { filter } => {
            usage(format!("no task in the guest matches {} (use --wait to wait for one)", filter_flags(&filter)))
        }
        // Reading kernel data failed: not the user's doing (exit 1).
        TraceError::Kernel(e) if !e.is_usage() => anyhow::Error::from(e),
        other => UsageError(other.to_string()).into(),
    }
}

/// A filter as the flags that give it.
fn filter_flags(f: &Filter) -> String {
    // The task filters (a CPU filter needs no task).
    f.parts().filter(|(name, _)| *name != "cpu").map(|(name, v)| format!("--{name} {v}")).collect::<Vec<_>>().join(" ")
}

pub fn explain_rsp(addr: &str, err: RspError) -> anyhow::Error {
    match err {
        RspError::Io(ref io) if io.kind() == std::io::ErrorKind::ConnectionRefused => UsageError(format!(
            "nothing is listening at {addr}: start QEMU with -s (port 1234) or -gdb tcp::PORT, and check the port"
        ))
        .into(),
        RspError::Timeout { .. } => UsageError(format!(
            "{addr} did not answer like a gdb stub ({err}); is it QEMU's -gdb port, and is no other debugger attached? (QEMU serves one at a time and pauses the guest when it reaches a queued connection: a later ktrace command resumes it)"
        ))
        .into(),
        RspError::Protocol(_) => UsageError(format!(
            "{addr} does not speak the gdb remote protocol ({err}); is it QEMU's -gdb port?"
        ))
        .into(),
        other => anyhow::Error::from(other).context(format!("talking to the gdb stub at {addr}")),
    }
}

/// How long a `--duration` is: `10s`, `500ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (try 10s, 500ms, 2m)");
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len()));
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    if !(n >= 0.0 && n.is_finite()) {
        return Err(bad());
    }
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3 parsecs").is_err());
        assert!(parse_duration("-1s").unwrap_err().contains("not a duration"));
    }
}
