//! `cargo xtask guest prepare|boot|stop`.

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ktrace_testguest::{cache_dir, prepare, BootOptions, Guest, GuestImage, KernelSeries};

const USAGE: &str = "usage: cargo xtask guest prepare [--kernel 6.1|6.12|7|all] \
                     | boot [--kernel 6.1|6.12|7] [--smp N] [--kaslr|--nokaslr] [--port P] [--testprogs N] [--kvm] [--qemu 7.2|10.0] [--pti] [--five-level] [--qmp] \
                     | stop";

pub fn run(args: &[&str]) -> Result<()> {
    match args {
        ["prepare", rest @ ..] => {
            let kernels = match rest {
                [] | ["--kernel", "all"] => KernelSeries::ALL.to_vec(),
                ["--kernel", k] => vec![k.parse()?],
                _ => bail!("{USAGE}"),
            };
            for series in kernels {
                let image = prepare_series_verbose(series)?;
                println!("{series:<5} release  {}", image.release());
                println!("      kernel   {}", image.bzimage.display());
                println!("      vmlinux  {}", image.vmlinux.display());
                println!("      initrd   {}", image.initramfs.display());
                println!(
                    "      modules  {} (debug files: {})",
                    image.modules.join(" "),
                    image.modules_debug_dir.display()
                );
            }
            Ok(())
        }
        ["boot", rest @ ..] => boot(rest),
        ["stop"] => stop(),
        _ => bail!("{USAGE}"),
    }
}

/// Prepares the default (6.1) guest, saying what it does.
pub fn prepare_verbose() -> Result<GuestImage> {
    prepare_series_verbose(KernelSeries::default())
}

/// Prepares the guest of `series`, saying what it does.
pub fn prepare_series_verbose(series: KernelSeries) -> Result<GuestImage> {
    prepare(series, &mut |step| eprintln!("guest {series}: {step}"))
        .with_context(|| format!("preparing the {series} test guest"))
}

fn boot(args: &[&str]) -> Result<()> {
    let mut opts = BootOptions { daemon: true, ..BootOptions::default() };
    let mut it = args.iter();
    while let Some(&arg) = it.next() {
        let mut value = || it.next().copied().with_context(|| format!("{arg} needs a value"));
        match arg {
            "--kernel" => opts.kernel = value()?.parse()?,
            "--smp" => opts.smp = value()?.parse().context("--smp")?,
            "--port" => opts.port = Some(value()?.parse().context("--port")?),
            "--testprogs" => opts.testprogs = value()?.parse().context("--testprogs")?,
            "--kaslr" => opts.kaslr = true,
            "--qemu" => opts.qemu = Some(value()?.parse().map_err(anyhow::Error::msg)?),
            "--pti" => opts.pti = true,
            "--five-level" => opts.five_level = true,
            "--qmp" => opts.qmp = true,
            "--nokaslr" => opts.kaslr = false,
            "--kvm" => {
                if !kvm_works() {
                    bail!("--kvm: /dev/kvm is not usable here; boot without it (TCG)");
                }
                opts.kvm = true;
            }
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    let image = prepare_series_verbose(opts.kernel)?;
    let guest = Guest::boot(&image, &opts)?;
    let (release, boot_time) = (guest.release().to_string(), guest.boot_time());
    let (port, pids, vmlinux, log) = (
        guest.port(),
        guest.testprog_pids().to_vec(),
        guest.vmlinux().to_path_buf(),
        guest.console_path().to_path_buf(),
    );
    let qemu = guest.leak();
    let registry = registry();
    let mut text = fs::read_to_string(&registry).unwrap_or_default();
    text.push_str(&format!("{qemu} {port}\n"));
    fs::write(&registry, text)?;
    println!("kernel        {} ({release}), ready in {:.1} s", opts.kernel, boot_time.as_secs_f64());
    println!("qemu pid      {qemu}");
    println!("gdb port      {port}");
    println!("testprog pid  {}", pids.iter().map(u32::to_string).collect::<Vec<_>>().join(" "));
    println!("vmlinux       {}", vmlinux.display());
    println!("console log   {}", log.display());
    println!(
        "\ntry: ktrace attach :{port} --vmlinux {} --break _raw_spin_lock --pid {} --count 5",
        vmlinux.display(),
        pids[0]
    );
    Ok(())
}

fn stop() -> Result<()> {
    let registry = registry();
    let text = fs::read_to_string(&registry).unwrap_or_default();
    let mut stopped = 0;
    for line in text.lines() {
        let Some(pid) = line.split_whitespace().next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains("qemu-system") {
            continue;
        }
        // SAFETY: plain kill(2) on a pid we started and just checked.
        unsafe { libc_kill(pid) };
        for _ in 0..100 {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        println!("stopped qemu pid {pid}");
        stopped += 1;
    }
    let _ = fs::remove_file(&registry);
    if stopped == 0 {
        println!("no guest was running");
    }
    Ok(())
}

unsafe fn libc_kill(pid: i32) {
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: the caller checked that pid is one of our QEMUs.
    unsafe { kill(pid, 9) };
}

fn registry() -> PathBuf {
    let dir = cache_dir().join("run");
    let _ = fs::create_dir_all(&dir);
    dir.join("guests.txt")
}

fn kvm_works() -> bool {
    fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}
