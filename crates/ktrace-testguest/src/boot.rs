//! Booting QEMU with a gdb stub and waiting for the testprogs.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::error::{io_err, GuestError};
use crate::prepare::{cache_dir, GuestImage};
use crate::qemu::{Qemu, QemuBuild};
use crate::series::KernelSeries;

/// How to boot the guest.
#[derive(Clone, Debug)]
pub struct BootOptions {
    /// The kernel series [`crate::test_guest`] prepares and boots (6.1 by
    /// default). [`Guest::boot`] boots the image it is given and records that
    /// image's series here.
    pub kernel: KernelSeries,
    /// Number of vCPUs.
    pub smp: u32,
    /// Boot with KASLR (the Debian default) or with `nokaslr`.
    pub kaslr: bool,
    /// The gdb stub port; a free one when `None`.
    pub port: Option<u16>,
    /// How many `testprog` processes init starts.
    pub testprogs: u32,
    /// Guest memory in MiB.
    pub memory_mb: u32,
    /// Use KVM (only when asked and `/dev/kvm` works); TCG otherwise.
    pub kvm: bool,
    /// Leave QEMU running after this process exits (for `cargo xtask guest boot`).
    pub daemon: bool,
    /// How long to wait for the testprogs to start.
    pub timeout: Duration,
    /// Also serve QMP on a unix socket ([`Guest::qmp_socket`]), to pause the
    /// VM and dump its memory.
    pub qmp: bool,
    /// The QEMU build that runs the guest; `None`: `$KTRACE_QEMU` (`7.2`
    /// or `10.0`) when set, else the kernel series' own
    /// ([`QemuBuild::for_series`]), so that tests that run several kernels run
    /// on both builds.
    pub qemu: Option<QemuBuild>,
    /// Boot with page-table isolation forced on (`pti=on`), as on Intel
    /// hosts affected by Meltdown.
    pub pti: bool,
    /// Boot on `-cpu max`, whose 5-level paging (LA57) the kernel uses, as
    /// on `-cpu host` of current servers.
    pub five_level: bool,
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            kernel: KernelSeries::default(),
            smp: 2,
            kaslr: true,
            port: None,
            testprogs: 1,
            memory_mb: 512,
            kvm: false,
            daemon: false,
            timeout: Duration::from_secs(240),
            qmp: false,
            qemu: None,
            pti: false,
            five_level: false,
        }
    }
}

/// One module of the guest as its init printed it from `/proc/modules`, as
/// root, on the console (`ktrace-guest module brd 16384 0 - Live 0xffffffffc0…`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleModule {
    /// The module's name: `brd`.
    pub name: String,
    /// The size of its core layout in bytes.
    pub size: u64,
    /// The address of its core layout (its `.text`): the real address, since
    /// root reads it.
    pub base: u64,
    /// `Live`, `Loading` or `Unloading`.
    pub state: String,
}

/// Parses the `ktrace-guest module …` lines of a console log. A line a
/// kernel message broke into, or that lacks a field, is skipped.
pub(crate) fn parse_console_modules(console: &str) -> Vec<ConsoleModule> {
    const PREFIX: &str = "ktrace-guest module ";
    console
        .lines()
        .filter_map(|line| {
            let rest = &line[line.find(PREFIX)? + PREFIX.len()..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let [name, size, _refcount, _deps, state, base, ..] = fields[..] else { return None };
            Some(ConsoleModule {
                name: name.to_string(),
                size: size.parse().ok()?,
                base: u64::from_str_radix(base.strip_prefix("0x")?, 16).ok()?,
                state: state.to_string(),
            })
        })
        .collect()
}

/// Parses the `ktrace-guest section MODULE SECTION 0xADDR` lines of a
/// console log (`/sys/module/*/sections/*`, read as root): the sections of
/// `module`, by name.
pub(crate) fn parse_console_sections(console: &str, module: &str) -> Vec<(String, u64)> {
    const PREFIX: &str = "ktrace-guest section ";
    console
        .lines()
        .filter_map(|line| {
            let rest = &line[line.find(PREFIX)? + PREFIX.len()..];
            let [m, section, addr] = rest.split_whitespace().collect::<Vec<_>>()[..] else { return None };
            let addr = u64::from_str_radix(addr.strip_prefix("0x")?, 16).ok()?;
            (m == module).then(|| (section.to_string(), addr))
        })
        .collect()
}

/// A running guest. Dropping it kills QEMU.
#[derive(Debug)]
pub struct Guest {
    child: Option<Child>,
    port: u16,
    image: GuestImage,
    log: PathBuf,
    testprog_pids: Vec<u32>,
    release: String,
    options: BootOptions,
    boot_time: Duration,
    qmp_socket: Option<PathBuf>,
}

impl Guest {
    /// Boots the guest and waits until every testprog has printed its pid.
    ///
    /// A guest kernel that dies while booting, before anything touched it,
    /// is booted again (at most twice more), saying so on stderr: under TCG
    /// on a loaded 2-core host, Debian's 7.x kernel was seen to oops on an
    /// `int3` of its own boot-time code patching (`urandom_read_iter`, the
    /// `crng_is_ready` static key) with no debugger attached.
    pub fn boot(image: &GuestImage, opts: &BootOptions) -> Result<Guest, GuestError> {
        let mut attempt = 1;
        loop {
            match Guest::boot_once(image, opts) {
                Err(GuestError::QemuExited { status, log, tail }) if attempt < 3 && died_of_an_oops(&tail) => {
                    eprintln!(
                        "ktrace-testguest: the {} guest died while booting (attempt {attempt}, console log at {}); booting it again:\n{tail}",
                        image.series,
                        log.display()
                    );
                    let _ = status;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn boot_once(image: &GuestImage, opts: &BootOptions) -> Result<Guest, GuestError> {
        let from_env = std::env::var("KTRACE_QEMU").ok().map(|v| v.parse::<QemuBuild>());
        let build = match (opts.qemu, from_env) {
            (Some(b), _) => b,
            (None, Some(Ok(b))) => b,
            (None, Some(Err(e))) => return Err(GuestError::Command { command: "KTRACE_QEMU".into(), detail: e }),
            (None, None) => QemuBuild::for_series(image.series),
        };
        let qemu = Qemu::prepare(build, &mut |line| eprintln!("ktrace-testguest: {line}"))?;
        let port = match opts.port {
            Some(p) => p,
            None => free_port()?,
        };
        let run_dir = cache_dir().join("run");
        fs::create_dir_all(&run_dir).map_err(io_err(&run_dir))?;
        let log = run_dir.join(format!("console-{port}.log"));
        let _ = fs::remove_file(&log);
        let stderr_path = run_dir.join(format!("qemu-{port}.stderr"));
        let stderr = fs::File::create(&stderr_path).map_err(io_err(&stderr_path))?;

        let mut append = format!("console=ttyS0 panic=-1 ktrace.testprogs={}", opts.testprogs);
        if !opts.kaslr {
            append.push_str(" nokaslr");
        }
        if opts.pti {
            append.push_str(" pti=on");
        }
        let mut cmd = qemu.command();
        // A CPU with RDRAND: the kernel's CRNG is ready at early boot, so it
        // patches its `crng_is_ready` static key long before user space. On
        // the default qemu64 CPU the CRNG became ready seconds after init had
        // started testprog, and the kernel (6.12 and 7.x under multi-threaded
        // TCG) was seen to oops on an int3 of that patching in
        // urandom_read_iter, which testprog was running on another vCPU.
        cmd.args(["-M", "pc", "-accel", if opts.kvm { "kvm" } else { "tcg" }])
            .args([
                "-cpu",
                if opts.kvm {
                    "host"
                } else if opts.five_level {
                    "max"
                } else {
                    "qemu64,+rdrand"
                },
            ])
            .args(["-m", &opts.memory_mb.to_string(), "-smp", &opts.smp.to_string()])
            .args(["-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-kernel")
            .arg(&image.bzimage)
            .arg("-initrd")
            .arg(&image.initramfs)
            .args(["-append", &append])
            .args(["-gdb", &format!("tcp:127.0.0.1:{port}")]);
        // Unique per boot: a socket of an earlier QEMU on the same port is never reused.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let qmp_socket = opts.qmp.then(|| run_dir.join(format!("qmp-{port}-{}-{nanos}.sock", std::process::id())));
        if let Some(sock) = &qmp_socket {
            let _ = fs::remove_file(sock);
            cmd.arg("-qmp").arg(format!("unix:{},server=on,wait=off", sock.display()));
        }
        cmd.arg("-serial")
            .arg(format!("file:{}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let daemon = opts.daemon;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if daemon {
                    libc::setsid();
                } else {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| GuestError::Command { command: "qemu-system-x86_64".into(), detail: e.to_string() })?;
        let mut guest = Guest {
            child: Some(child),
            port,
            image: image.clone(),
            log,
            testprog_pids: Vec::new(),
            release: String::new(),
            options: BootOptions { kernel: image.series, ..opts.clone() },
            boot_time: Duration::ZERO,
            qmp_socket,
        };
        guest.wait_ready(&stderr_path)?;
        guest.boot_time = started.elapsed();
        Ok(guest)
    }

    fn wait_ready(&mut self, stderr_path: &Path) -> Result<(), GuestError> {
        let start = Instant::now();
        loop {
            let console = self.console();
            let pids: Vec<u32> =
                console.lines().filter_map(|l| l.trim().strip_prefix("testprog pid ")?.trim().parse().ok()).collect();
            // testprog's first read of /dev/urandom blocks until the kernel's
            // CRNG is ready; before that it only waits in try_to_generate_entropy.
            let crng_ready = console.contains("crng init done");
            // Once the CRNG is ready the kernel patches its code (the static
            // key `crng_is_ready`, with int3 and IPIs): tests start only after
            // a heartbeat that follows the CRNG message (see `-cpu` above).
            let settled = console
                .find("crng init done")
                .is_some_and(|at| console[at..].lines().skip(1).any(|l| l.contains("ktrace-guest tick")));
            if console.contains("ktrace-guest ready")
                && crng_ready
                && settled
                && pids.len() as u32 >= self.options.testprogs
            {
                self.testprog_pids = pids;
                self.release = console
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("ktrace-guest release "))
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let stderr = fs::read_to_string(stderr_path).unwrap_or_default();
                return Err(GuestError::QemuExited {
                    status: format!("{status}; stderr: {}", stderr.trim()),
                    log: self.log.clone(),
                    tail: tail(&console, 15),
                });
            }
            if start.elapsed() > self.options.timeout {
                return Err(GuestError::BootTimeout {
                    secs: self.options.timeout.as_secs(),
                    log: self.log.clone(),
                    tail: tail(&console, 15),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The gdb stub port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The stub address as ktrace takes it (`127.0.0.1:PORT`).
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The debug vmlinux matching the guest kernel.
    pub fn vmlinux(&self) -> &Path {
        &self.image.vmlinux
    }

    /// The debug files of the guest's modules, laid out like Debian's
    /// `/usr/lib/debug/lib/modules/<release>/` (ktrace's `--modules DIR`).
    pub fn modules_debug_dir(&self) -> &Path {
        &self.image.modules_debug_dir
    }

    /// The modules loaded in the guest, as its init printed them from
    /// `/proc/modules` after loading [`GuestImage::modules`].
    pub fn modules_from_console(&self) -> Vec<ConsoleModule> {
        parse_console_modules(&self.console())
    }

    /// Where the sections of `module` were loaded, as its init printed
    /// them from `/sys/module/<module>/sections/`.
    pub fn module_sections_from_console(&self, module: &str) -> Vec<(String, u64)> {
        parse_console_sections(&self.console(), module)
    }

    /// The image this guest booted.
    pub fn image(&self) -> &GuestImage {
        &self.image
    }

    /// The kernel series it runs.
    pub fn kernel(&self) -> KernelSeries {
        self.image.series
    }

    /// How long it took from starting QEMU until the guest was ready.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The options it was booted with (`kernel` is the image's series).
    pub fn options(&self) -> &BootOptions {
        &self.options
    }

    /// The pid of the first testprog.
    pub fn testprog_pid(&self) -> u32 {
        self.testprog_pids[0]
    }

    /// The pids of all testprogs, as the guest printed them.
    pub fn testprog_pids(&self) -> &[u32] {
        &self.testprog_pids
    }

    /// `uname -r` as the guest printed it.
    pub fn release(&self) -> &str {
        &self.release
    }

    /// The pid of the QEMU process.
    pub fn qemu_pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The QMP socket, when booted with [`BootOptions::qmp`].
    pub fn qmp_socket(&self) -> Option<&Path> {
        self.qmp_socket.as_deref()
    }

    /// The path of the serial console log.
    pub fn console_path(&self) -> &Path {
        &self.log
    }

    /// Everything the guest printed on its serial console so far.
    pub fn console(&self) -> String {
        fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// Number of heartbeat lines init has printed (one per guest second).
    pub fn heartbeats(&self) -> usize {
        self.console().lines().filter(|l| l.contains("ktrace-guest tick")).count()
    }

    /// Waits until the guest prints a new heartbeat, proving it runs.
    /// Returns false if none came within `timeout`.
    pub fn is_running(&self, timeout: Duration) -> bool {
        let before = self.heartbeats();
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.heartbeats() > before {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Keeps QEMU running after this value is dropped; returns its pid.
    pub fn leak(mut self) -> u32 {
        self.child.take().map(|c| c.id()).unwrap_or(0)
    }

    /// Kills QEMU now.
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop();
        if let Some(sock) = &self.qmp_socket {
            let _ = fs::remove_file(sock);
        }
    }
}

/// Whether a console tail shows the guest kernel dying (oops or panic).
fn died_of_an_oops(tail: &str) -> bool {
    tail.contains("Oops") || tail.contains("Kernel panic") || tail.contains("end trace")
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn free_port() -> Result<u16, GuestError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err("127.0.0.1:0"))?;
    listener.local_addr().map(|a| a.port()).map_err(io_err("127.0.0.1:0"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_boot_time_oops_is_told_from_other_exits() {
        let tail = "[    5.378477] ---[ end trace 0000000000000000 ]---\n[    5.38] Kernel panic - not syncing: Fatal exception";
        assert!(super::died_of_an_oops(tail));
        assert!(!super::died_of_an_oops("qemu-system-x86_64: -kernel: No such file"));
    }

    use super::*;

    #[test]
    fn valid_console_module_lines_parse() {
        let console = "\
[    1.234567] brd: module loaded
ktrace-guest release 6.1.0-56-cloud-amd64
ktrace-guest module brd 16384 0 - Live 0xffffffffc0400000
ktrace-guest module vfat 24576 0 fat, Live 0xffffffffc0410000 (E)
ktrace-guest dd started
";
        let modules = parse_console_modules(console);
        assert_eq!(
            modules[0],
            ConsoleModule { name: "brd".into(), size: 16384, base: 0xffff_ffff_c040_0000, state: "Live".into() }
        );
        assert_eq!((modules[1].name.as_str(), modules[1].base), ("vfat", 0xffff_ffff_c041_0000));
        assert_eq!(modules.len(), 2);
        // A kernel message on the same line before it does not hide it.
        let mixed = "[    2.0] random: crng init donektrace-guest module brd 16384 0 - Live 0xffffffffc0400000\n";
        assert_eq!(parse_console_modules(mixed)[0].name, "brd");
    }

    #[test]
    fn invalid_console_module_lines_are_skipped() {
        let console = "\
ktrace-guest module brd 16384 0 - Live
ktrace-guest module brd 16384 0 - Live 0x[    3.1] oops
ktrace-guest module brd big 0 - Live 0xffffffffc0400000
ktrace-guest module brd 16384 0 - Live ffffffffc0400000
ktrace-guest modules 1
";
        assert_eq!(parse_console_modules(console), []);
        assert_eq!(parse_console_modules(""), []);
    }

    #[test]
    fn console_sections() {
        let console = "ktrace-guest section brd .text 0xffffffffc047d000\n\
                       ktrace-guest section loop .text 0xffffffffc0100000\n\
                       [    1.2] brd: ktrace-guest section brd .init.text 0xffffffffc0483000\n\
                       ktrace-guest section brd .data 0x\n";
        assert_eq!(
            parse_console_sections(console, "brd"),
            [(".text".to_string(), 0xffff_ffff_c047_d000), (".init.text".to_string(), 0xffff_ffff_c048_3000)]
        );
    }
}
