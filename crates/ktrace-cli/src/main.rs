//! `ktrace`: trace a Linux kernel running in QEMU from the outside, over the gdb stub.

/// `println!` that returns a write error (a closed pipe) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// `print!` that returns a write error instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)?
    }};
}

mod args;
mod attach;
mod debuginfod;
mod format;
mod guard;
mod inspect;
mod locate;
mod printcmd;
#[cfg(test)]
mod snapshot_tests;
mod source;
mod symcmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Trace a Linux kernel in a QEMU guest from the outside, over QEMU's gdb stub.
#[derive(Parser, Debug)]
#[command(name = "ktrace", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log level for diagnostics on stderr (e.g. `debug`, `ktrace_rsp::wire=trace` for every packet).
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Trace breakpoint hits, filtered by task and CPU, with backtraces.
    Attach(attach::AttachArgs),
    /// Stop the guest once, print every CPU's backtrace and current task, resume.
    Bt(inspect::BtArgs),
    /// List every task (like `ps`/`lx-ps`).
    Ps(inspect::ReadArgs),
    /// Kernel release, KASLR slide, CPUs and what each runs.
    Info(inspect::ReadArgs),
    /// List the loaded kernel modules: name, size, state, base (like `lsmod`/`lx-lsmod`).
    Lsmod(inspect::ReadArgs),
    /// The kernel log, from the printk ring buffer (like `dmesg`/`lx-dmesg`).
    Dmesg(inspect::DmesgArgs),
    /// Evaluate C expressions once (`current->comm`, `$cr3`,
    /// `this_cpu(runqueues).nr_running`) as GDB's `print` does: in the
    /// stopped guest, live (`--live`, no registers) or in a dump (`--core`).
    Print(printcmd::PrintArgs),
    /// Remove what a killed `ktrace attach --in-guest` left in the guest: put
    /// the ftrace NOPs back and erase its trampoline.
    Restore(args::TargetArgs),
    /// Look up symbols by name or address in the vmlinux.
    Sym(symcmd::SymArgs),
    /// Print offsets and sizes of struct members (`task_struct.pid`).
    Layout(symcmd::LayoutArgs),
    /// The guardian of a running `attach` (started by it; not for users).
    #[command(name = "__guard", hide = true)]
    Guard { stub: String, socket: std::path::PathBuf, journal: std::path::PathBuf, timeout_ms: u64 },
}

/// An error caused by what the user asked for (exit code 2), as opposed to a
/// failure while running (exit code 1).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = cli.log.clone().unwrap_or_else(|| std::env::var("KTRACE_LOG").unwrap_or_else(|_| "warn".into()));
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ktrace: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Attach(args) => attach::run(args).await,
            Command::Bt(args) => inspect::bt(args).await,
            Command::Ps(args) => inspect::ps(args).await,
            Command::Info(args) => inspect::info(args).await,
            Command::Lsmod(args) => inspect::lsmod(args).await,
            Command::Dmesg(args) => inspect::dmesg(args).await,
            Command::Print(args) => printcmd::print(args).await,
            Command::Restore(args) => inspect::restore(args).await,
            Command::Sym(args) => symcmd::sym(args).await,
            Command::Layout(args) => symcmd::layout(args),
            Command::Guard { stub, socket, journal, timeout_ms } => {
                guard::serve(&stub, &socket, &journal, timeout_ms).map(|()| ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        // stdout closed (`| head`): done, quietly, as head expects. Every
        // command has released the guest before it writes.
        Err(err) if is_closed_stdout(&err) => ExitCode::SUCCESS,
        Err(err) => {
            let usage = err.downcast_ref::<UsageError>().is_some();
            eprintln!("ktrace: {}", format::error_chain(&err));
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

/// True when `err` is a write to a closed stdout.
fn is_closed_stdout(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}
