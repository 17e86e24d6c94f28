//! Round-trip time of an 8-byte `m` read through `ktrace_rsp::Session`.
//!
//! usage: rtt ADDR HEXADDR COUNT — prints one JSON line with the median and
//! mean per-read time in microseconds. `cargo xtask bench` runs it beside a
//! plain Python loop doing the same reads (the floor).

use std::time::Instant;

use ktrace_rsp::{ClientConfig, Session};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, target, count] = args.as_slice() else {
        eprintln!("usage: rtt ADDR HEXADDR COUNT");
        std::process::exit(2);
    };
    let target = u64::from_str_radix(target.trim_start_matches("0x"), 16)?;
    let count: usize = count.parse()?;
    let (mut session, _) = Session::connect(&addr.parse()?, ClientConfig::default()).await?;
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        let bytes = session.read_memory(target, 8).await?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(bytes.len(), 8);
    }
    session.detach().await?;
    times.sort_by(|a, b| a.total_cmp(b));
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    println!(
        "{{\"tool\":\"ktrace-rsp\",\"reads\":{count},\"median_us\":{:.1},\"mean_us\":{mean:.1}}}",
        times[times.len() / 2]
    );
    Ok(())
}
