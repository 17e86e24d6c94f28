//! `ktrace sym` and `ktrace layout`: questions the vmlinux answers alone.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use ktrace_kernel::{Guest, GuestConfig, Modules, PercpuSection};
use ktrace_rsp::StubAddr;
use ktrace_symbols::{KernelAddr, SourceFrame, Vmlinux};
use ktrace_tracer::TraceError;
use serde_json::json;

use crate::args::{client_config, explain, ModulesArg, VmlinuxArg};
use crate::UsageError;

/// `ktrace sym`.
#[derive(Args, Debug)]
pub struct SymArgs {
    #[command(flatten)]
    vmlinux: VmlinuxArg,
    /// Symbol names (`_raw_spin_lock`, `do_sys_open+0x10`) or addresses (`0xffffffff81a185a0`).
    #[arg(required = true)]
    names: Vec<String>,
    /// One JSON object per answer.
    #[arg(long)]
    json: bool,
    /// Also look in the modules loaded in this guest (`:1234`): names the
    /// vmlinux lacks (`brd_submit_bio`, `brd:brd_submit_bio`) and module
    /// addresses (runtime addresses, as backtraces show them).
    #[arg(long, value_name = "ADDR")]
    guest: Option<String>,
    /// Timeout for each request to the `--guest` stub, in seconds.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    timeout: f64,
    #[command(flatten)]
    modules: ModulesArg,
}

/// `ktrace layout`.
#[derive(Args, Debug)]
pub struct LayoutArgs {
    #[command(flatten)]
    vmlinux: VmlinuxArg,
    /// Member paths (`task_struct.pid`, `pcpu_hot.current_task`) or type names (`task_struct`).
    #[arg(required = true)]
    paths: Vec<String>,
    /// One JSON object per answer.
    #[arg(long)]
    json: bool,
}

/// The vmlinux of `sym` and `layout`, which need no guest: `--vmlinux`, else `./vmlinux`.
pub fn open_vmlinux(arg: &VmlinuxArg) -> Result<Vmlinux> {
    let path = arg.vmlinux.clone().unwrap_or_else(|| "vmlinux".into());
    Vmlinux::open(&path).map_err(|e| UsageError(e.to_string()).into())
}

fn parse_addr(text: &str) -> Option<u64> {
    let hex = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X"))?;
    u64::from_str_radix(hex, 16).ok()
}

/// The modules loaded in the guest at `addr` (one stop, then detach), with
/// the debug files of those holding one of `addrs`.
async fn guest_modules(
    addr: &str,
    vm: Arc<Vmlinux>,
    debug: &ModulesArg,
    timeout: f64,
    addrs: &[u64],
) -> Result<Modules> {
    let stub: StubAddr = addr.parse().map_err(|e| UsageError(format!("{addr}: not a stub address: {e}")))?;
    let cfg = GuestConfig { client: client_config(timeout), module_debug: debug.dir(), ..GuestConfig::default() };
    let modules = Guest::scope(&stub, vm, &cfg, async |guest: &mut Guest| {
        let mut modules = guest.kernel.modules(&mut guest.kernel.memory(&mut guest.session)).await?;
        for m in modules.modules.iter_mut().filter(|m| addrs.iter().any(|&a| m.info.contains_code(a))) {
            m.debug = guest.kernel.module_debug(&mut guest.kernel.memory(&mut guest.session), m).await;
        }
        Ok::<_, TraceError>(modules)
    })
    .await
    .map_err(|e| explain(addr, e))?;
    Ok(modules)
}

/// The answer for an address, in the vmlinux or (`module`) in a module:
/// its symbol+offset and source frames.
fn address_answer(
    query: &str,
    addr: u64,
    symbol: Option<(&str, u64, u64)>,
    module: Option<&str>,
    frames: &[SourceFrame],
    json: bool,
) -> String {
    if json {
        let mut answer = json!({"query": query, "address": format!("0x{addr:x}"), "symbol": symbol.map(|s| s.0),
                                "offset": symbol.map(|s| s.1), "size": symbol.map(|s| s.2), "frames": frames});
        if let Some(m) = module {
            answer["module"] = m.into();
        }
        return answer.to_string();
    }
    let module = module.map(|m| format!(" [{m}]")).unwrap_or_default();
    let mut out = match symbol {
        Some((name, off, size)) => format!("0x{addr:016x}  {name}+0x{off:x}/0x{size:x}{module}"),
        None => format!("0x{addr:016x}  ??"),
    };
    for f in frames {
        let inl = if f.inlined { " (inlined)" } else { "" };
        out += &format!(
            "\n    {}{inl} at {}:{}",
            f.function.as_deref().unwrap_or("??"),
            f.file.as_deref().unwrap_or("??"),
            f.line.unwrap_or(0)
        );
    }
    out
}

/// A module answer to a `sym` query, if the loaded modules have one.
fn module_answer(modules: &Modules, query: &str, json: bool) -> Option<String> {
    if let Some(addr) = parse_addr(query) {
        let m = modules.by_code_addr(addr)?;
        let (sym, off) = m.symbolize(addr)?;
        let symbol = Some((sym.name.as_str(), off, sym.size));
        return Some(address_answer(query, addr, symbol, Some(&m.info.name), &m.source_frames(addr), json));
    }
    let (base, off) = match query.split_once('+') {
        Some((b, o)) => (b, parse_addr(o).or_else(|| o.parse().ok())?),
        None => (query, 0),
    };
    let (m, sym) = modules.resolve(base)?;
    let addr = sym.addr + off;
    Some(if json {
        json!({"query": query, "symbol": sym.name, "address": format!("0x{addr:x}"), "size": sym.size,
               "kind": if sym.func { "Text" } else { "Data" }, "percpu": false, "module": m.info.name})
        .to_string()
    } else {
        format!(
            "{query} [{}]  0x{addr:016x}  size 0x{:x}  {}",
            m.info.name,
            sym.size,
            if sym.func { "Text" } else { "Data" }
        )
    })
}

pub async fn sym(args: SymArgs) -> Result<ExitCode> {
    let vm = Arc::new(open_vmlinux(&args.vmlinux)?);
    let modules = match &args.guest {
        Some(addr) => {
            let addrs: Vec<u64> = args.names.iter().filter_map(|n| parse_addr(n)).collect();
            Some(guest_modules(addr, vm.clone(), &args.modules, args.timeout, &addrs).await?)
        }
        None if args.modules.modules.is_some() => {
            return Err(UsageError("--modules DIR is for module addresses: add --guest ADDR".into()).into())
        }
        None => None,
    };
    for name in &args.names {
        if let Some(answer) = modules.as_ref().and_then(|m| {
            let in_vmlinux = match parse_addr(name) {
                Some(a) => vm.symbolize(KernelAddr(a)).is_some(),
                None => vm.resolve(name).is_ok(),
            };
            (!in_vmlinux).then(|| module_answer(m, name, args.json)).flatten()
        }) {
            outln!("{answer}");
            continue;
        }
        if let Some(addr) = parse_addr(name) {
            let sym = vm.symbolize(KernelAddr(addr));
            let frames = vm.frames(KernelAddr(addr)).unwrap_or_default();
            let symbol = sym.as_ref().map(|s| (s.name.as_str(), s.offset, s.size));
            outln!("{}", address_answer(name, addr, symbol, None, &frames, args.json));
            continue;
        }
        let addr = vm.resolve(name).map_err(|e| UsageError(e.to_string()))?;
        let base = name.split('+').next().unwrap_or(name);
        let sym = vm.symbol(base).map_err(|e| UsageError(e.to_string()))?;
        if args.json {
            outln!(
                "{}",
                json!({"query": name, "symbol": sym.name, "address": format!("0x{:x}", addr.0), "size": sym.size,
                       "kind": format!("{:?}", sym.kind), "percpu": sym.is_percpu()})
            );
        } else {
            let percpu = match PercpuSection::from_vmlinux(&vm) {
                Ok(PercpuSection::ZeroBased) if sym.is_percpu() => " (per-CPU: an offset into each CPU's area)",
                _ if sym.is_percpu() => " (per-CPU: the template's address; add the slide and __per_cpu_offset[cpu])",
                _ => "",
            };
            outln!("{name}  0x{:016x}  size 0x{:x}  {:?}{percpu}", addr.0, sym.size, sym.kind);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn layout(args: LayoutArgs) -> Result<ExitCode> {
    let vm = open_vmlinux(&args.vmlinux)?;
    for path in &args.paths {
        if path.contains('.') {
            let m = vm.member(path).map_err(|e| UsageError(e.to_string()))?;
            if args.json {
                outln!("{}", json!({"member": path, "offset": m.offset, "size": m.size, "type": m.type_name}));
            } else {
                outln!("{path}  offset {} (0x{:x})  size {}  {}", m.offset, m.offset, m.size, m.type_name);
            }
        } else {
            let size = vm.type_size(path).map_err(|e| UsageError(e.to_string()))?;
            if args.json {
                outln!("{}", json!({"type": path, "size": size}));
            } else {
                outln!("{path}  size {size} (0x{size:x})");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
