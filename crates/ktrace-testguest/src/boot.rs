//! Booting QEMU with a gdb stub and waiting for the testprogs.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{io_err, GuestError};
use crate::prepare::{cache_dir, GuestImage};
use crate::prereq::which;
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
        }
    }
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
    pub fn boot(image: &GuestImage, opts: &BootOptions) -> Result<Guest, GuestError> {
        if which("qemu-system-x86_64").is_none() {
            return Err(GuestError::MissingTool {
                tool: "qemu-system-x86_64".into(),
                install: "apt-get install -y qemu-system-x86".into(),
            });
        }
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
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-M", "pc", "-accel", if opts.kvm { "kvm" } else { "tcg" }])
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
            if console.contains("ktrace-guest ready") && crng_ready && pids.len() as u32 >= self.options.testprogs {
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

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn free_port() -> Result<u16, GuestError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err("127.0.0.1:0"))?;
    listener.local_addr().map(|a| a.port()).map_err(io_err("127.0.0.1:0"))
}
