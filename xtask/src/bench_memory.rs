//! `cargo xtask bench memory`: the memory backends side by side on one
//! guest (6.1, 2 vCPUs, KASLR on, two testprogs, QMP).
//!
//! 1. Reads/s and bytes/s of each backend: the stub's `m` through the
//!    selected CPU's page tables, the stub in QEMU's physical mode, QEMU's
//!    RAM from the host, a memory dump. 8-byte reads (latency) and 64 KiB
//!    reads (throughput), each for a fixed time.
//! 2. The other testprog's speed (its `ioac.syscr` rate, read through QMP)
//!    untraced, during a loop of `ktrace ps --live`, during a loop of
//!    `ktrace ps` (which stops the guest while it reads).
//! 3. Matched hits/s of `attach --break _raw_spin_lock --pid P` with a full
//!    backtrace per hit, reading through the kernel's page tables over the
//!    physical mode (the default) and through the stub's own translation.
//!
//! Conditions take turns round by round; medians are reported.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ktrace_guestmem::{CoreDump, HostMemory};
use ktrace_kernel::{Kernel, PhysicalMemory};
use ktrace_rsp::{ClientConfig, Session};
use ktrace_symbols::Vmlinux;
use ktrace_testguest::Qmp;

use crate::bench::{median, parse_summary};

const BREAK: &str = "_raw_spin_lock";
const TARGET_LIVE_PROGRESS: f64 = 0.90;
const TARGET_BACKTRACE_COST: f64 = 0.10;

#[derive(Default)]
struct Throughput {
    small_reads: Vec<f64>,
    big_bytes: Vec<f64>,
}

pub fn run(rounds: usize, seconds: u64) -> Result<String> {
    let crate::bench_guest::BenchGuest { ktrace, image, guest } = crate::bench_guest::boot()?;
    let qmp_socket = guest.qmp_socket().context("QMP socket")?.to_path_buf();
    let mut qmp = Qmp::connect(&qmp_socket)?;
    let vm = Arc::new(Vmlinux::open(&image.vmlinux)?);
    let vmlinux = image.vmlinux.to_str().context("utf-8 path")?.to_string();
    let addr = guest.addr();
    let (traced, other) = (guest.testprog_pids()[0], guest.testprog_pids()[1]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    // Where to read: the kernel image (the banner onwards), by virtual and physical address.
    let (banner_virt, banner_phys, syscr) = rt.block_on(async {
        let (mut s, _) = Session::connect(&addr.parse()?, ClientConfig::default()).await?;
        let kernel = Kernel::attach_stub(&mut s, vm.clone()).await?;
        let virt = kernel.runtime(vm.symbol("linux_banner")?.addr);
        let t = kernel.translation().context("physical mode")?;
        let phys = t.translate(&mut s, virt).await?.phys_of(virt);
        let task = kernel.find_task_by_pid(&mut kernel.memory(&mut s), other as i32).await?.task.0;
        let syscr = task + vm.member("task_struct.ioac.syscr")?.offset;
        s.detach().await?;
        anyhow::Ok((virt, phys, syscr))
    })?;
    let pid = ktrace_guestmem::find_qemu(&addr)?;
    let dump = std::env::temp_dir().join(format!("ktrace-bench-{}.elf", std::process::id()));
    qmp.stop()?;
    qmp.dump_guest_memory(&dump)?;
    qmp.cont()?;

    let window = Duration::from_secs(seconds);
    let backends = ["stub `m` (virtual)", "stub, physical mode", "QEMU's RAM from the host", "memory dump"];
    let mut through: Vec<Throughput> = backends.iter().map(|_| Throughput::default()).collect();
    let progress_labels = [
        "untraced",
        "`ps --live`, back to back",
        "`ps`, back to back",
        "`ps --live` twice a second",
        "`ps` twice a second",
    ];
    let mut progress: Vec<Vec<f64>> = vec![Vec::new(); progress_labels.len()];
    let bt_labels = ["kernel's page tables, physical mode", "stub's own translation (`m`)"];
    let mut matched: Vec<Vec<f64>> = vec![Vec::new(); 2];
    let pid_arg = traced.to_string();
    let duration = format!("{seconds}s");
    for round in 0..rounds {
        // 1. Backends (the guest stopped for the stub's, running for the host's).
        for i in 0..backends.len() {
            let b = (i + round) % backends.len();
            let (small, big) = rt.block_on(async {
                match b {
                    0 | 1 => {
                        let (mut s, _) = Session::connect(&addr.parse()?, ClientConfig::default()).await?;
                        let at = if b == 1 { banner_phys } else { banner_virt };
                        let r = measure(&mut s, window, at, b == 1).await;
                        s.detach().await?;
                        r
                    }
                    2 => measure(&mut HostMemory::open(pid, None)?, window, banner_phys, true).await,
                    _ => measure(&mut CoreDump::open(&dump)?, window, banner_phys, true).await,
                }
            })?;
            eprintln!(
                "round {round}: {}: {small:.0} 8-byte reads/s, {:.1} MB/s in 64 KiB reads",
                backends[b],
                big / 1e6
            );
            through[b].small_reads.push(small);
            through[b].big_bytes.push(big);
        }
        // 2. The other testprog's speed.
        for i in 0..progress_labels.len() {
            let p = (i + round) % progress_labels.len();
            let (before, start) = (read_u64(&mut qmp, syscr)?, Instant::now());
            let mut runs = 0;
            while start.elapsed() < window {
                if p > 0 {
                    let began = Instant::now();
                    let mut cmd = Command::new(&ktrace);
                    cmd.args(["ps", &addr, "--vmlinux", &vmlinux]).stdout(Stdio::null());
                    if p % 2 == 1 {
                        cmd.arg("--live");
                    }
                    if !cmd.status()?.success() {
                        bail!("ktrace ps failed");
                    }
                    runs += 1;
                    if p >= 3 {
                        std::thread::sleep(Duration::from_millis(500).saturating_sub(began.elapsed()));
                    }
                } else {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let rate = read_u64(&mut qmp, syscr)?.saturating_sub(before) as f64 / start.elapsed().as_secs_f64();
            eprintln!("round {round}: {}: other process {rate:.0} loops/s ({runs} runs)", progress_labels[p]);
            progress[p].push(rate);
        }
        // 3. Backtraces per matched hit.
        for i in 0..bt_labels.len() {
            let m = (i + round) % bt_labels.len();
            let mut args = vec!["attach", &addr, "--vmlinux", &vmlinux, "--break", BREAK, "--pid", &pid_arg];
            args.extend(["--duration", &duration, "--quiet"]);
            if m == 1 {
                args.push("--stub-translation");
            }
            let out = Command::new(&ktrace).args(&args).stdout(Stdio::null()).output()?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() {
                bail!("ktrace attach failed: {stderr}");
            }
            let rate = stderr.lines().find_map(parse_summary).map(|(_, n, s)| n / s).context("no summary")?;
            eprintln!("round {round}: backtraces through the {}: {rate:.0} matched/s", bt_labels[m]);
            matched[m].push(rate);
        }
    }
    let _ = std::fs::remove_file(&dump);
    drop(guest);

    let med = |v: &[f64]| median(v.iter().copied()).unwrap_or(f64::NAN);
    let mut out = format!(
        "`cargo xtask bench memory`: 6.1 guest, 2 vCPUs, TCG, {rounds} rounds of {seconds} s, medians.\n\n\
         | backend | 8-byte reads/s | MB/s in 64 KiB reads |\n|---|---:|---:|\n"
    );
    for (b, t) in backends.iter().zip(&through) {
        out += &format!("| {b} | {:.0} | {:.1} |\n", med(&t.small_reads), med(&t.big_bytes) / 1e6);
    }
    let untraced = med(&progress[0]);
    out += "\n| while | other process, loops/s | of untraced |\n|---|---:|---:|\n";
    for (l, p) in progress_labels.iter().zip(&progress) {
        out += &format!("| {l} | {:.0} | {:.1} % |\n", med(p), 100.0 * med(p) / untraced);
    }
    let live = med(&progress[3]) / untraced;
    out += &format!(
        "\nBack to back, each `ps` is a process that takes ~40 ms of CPU: on two host cores it competes with QEMU's two vCPU threads. \
         Twice a second (like `watch -n 0.5`), `ps --live` keeps the guest at {:.1} % of its untraced speed (target ≥ {:.0} %: {}).\n",
        100.0 * live,
        100.0 * TARGET_LIVE_PROGRESS,
        if live >= TARGET_LIVE_PROGRESS { "met" } else { "NOT met" }
    );
    out += "\n| backtraces read through | matched hits/s, full backtrace each |\n|---|---:|\n";
    for (l, m) in bt_labels.iter().zip(&matched) {
        out += &format!("| {l} | {:.0} |\n", med(m));
    }
    let (phys, virt) = (med(&matched[0]), med(&matched[1]));
    let cost = 1.0 - phys / virt;
    out += &format!(
        "\nThe physical view costs {:.1} % of matched/s against `m` reads (target ≤ {:.0} %: {}).\n",
        100.0 * cost,
        100.0 * TARGET_BACKTRACE_COST,
        if cost <= TARGET_BACKTRACE_COST { "met" } else { "NOT met" }
    );
    Ok(out)
}

/// (8-byte reads/s, bytes/s in 64 KiB reads) at `at`, each over half of
/// `window`: physical reads, or the target's own virtual ones.
async fn measure<T: PhysicalMemory>(t: &mut T, window: Duration, at: u64, physical: bool) -> Result<(f64, f64)>
where
    T::Error: Into<anyhow::Error>,
{
    let half = window / 2;
    let mut rates = [0.0; 2];
    for (k, len) in [8usize, 64 << 10].into_iter().enumerate() {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < half {
            let r = if physical { t.read_physical(at, len).await } else { t.read_memory(at, len).await };
            r.map_err(Into::into)?;
            n += 1;
        }
        let per_s = n as f64 / start.elapsed().as_secs_f64();
        rates[k] = if k == 0 { per_s } else { per_s * len as f64 };
    }
    Ok((rates[0], rates[1]))
}

fn read_u64(qmp: &mut Qmp, addr: u64) -> Result<u64> {
    let bytes = qmp.read_virtual(addr, 8)?;
    Ok(u64::from_le_bytes(bytes[..8].try_into()?))
}
