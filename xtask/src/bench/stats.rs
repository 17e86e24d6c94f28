//! The numbers: guest progress from the heartbeats, one sample per measured
//! window, medians, and ktrace's summary line.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Polls the guest console for `ktrace-guest tick <uptime>` heartbeats and
/// remembers when each first showed up on the host.
pub(super) struct Ticks {
    seen: Arc<Mutex<Vec<(Instant, f64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticks {
    pub(super) fn watch(console: PathBuf) -> Ticks {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Ticks already printed before the first poll have no known host time.
            let mut parsed: Option<usize> = None;
            while !st.load(Ordering::Relaxed) {
                let text = fs::read(&console).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
                let now = Instant::now();
                let ticks = parse_ticks(&text);
                let from = *parsed.get_or_insert(ticks.len());
                if ticks.len() > from {
                    s.lock().unwrap().extend(ticks[from..].iter().map(|&u| (now, u)));
                    parsed = Some(ticks.len());
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        });
        Ticks { seen, stop, thread: Some(thread) }
    }

    /// Guest seconds per host second over [a, b]. The guest clock at `a` is
    /// extrapolated from the last heartbeat before `a` (the guest runs freely
    /// between measurements), but never past the first heartbeat after `a`;
    /// likewise backwards at `b`. So a heavily stopped guest that prints no
    /// heartbeat inside the window still gets a number. None until a
    /// heartbeat after `b` has been seen.
    pub(super) fn progress(&self, a: Instant, b: Instant) -> Option<f64> {
        let ga = self.clock_at_start(a)?;
        let gb = self.clock_at_end(b)?;
        let host = b.duration_since(a).as_secs_f64();
        (host > 0.5).then(|| ((gb - ga) / host).max(0.0))
    }

    fn clock_at_start(&self, a: Instant) -> Option<f64> {
        let seen = self.seen.lock().unwrap();
        let before = seen.iter().rev().find(|(t, _)| *t <= a)?;
        let first_in = seen.iter().find(|(t, _)| *t > a).map_or(f64::INFINITY, |x| x.1);
        Some((before.1 + a.duration_since(before.0).as_secs_f64()).min(first_in))
    }

    fn clock_at_end(&self, b: Instant) -> Option<f64> {
        let seen = self.seen.lock().unwrap();
        let after = seen.iter().find(|(t, _)| *t >= b)?;
        let last_in = seen.iter().rev().find(|(t, _)| *t < b).map_or(f64::NEG_INFINITY, |x| x.1);
        Some((after.1 - after.0.duration_since(b).as_secs_f64()).max(last_in))
    }
}

impl Drop for Ticks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Uptimes of every complete heartbeat in the console text (lines may be
/// interleaved with kernel messages, so search anywhere).
fn parse_ticks(text: &str) -> Vec<f64> {
    const TAG: &str = "ktrace-guest tick ";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(TAG) {
        rest = &rest[i + TAG.len()..];
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'));
        let Some(n) = n else { break }; // incomplete: the number may go on
        if let Ok(u) = rest[..n].parse() {
            out.push(u);
        }
    }
    out
}

/// One measured window of one tool.
#[derive(Clone)]
pub(super) struct Sample {
    pub(super) round: usize,
    pub(super) evals: Option<f64>,
    pub(super) matched: Option<f64>,
    pub(super) progress: Option<f64>,
    pub(super) seconds: f64,
    /// The host-time window, for `progress`, filled in after the heartbeat
    /// that follows it has been seen.
    pub(super) window: (Instant, Instant),
    /// False for windows followed or preceded by other traced time without a
    /// free-running gap (GDB's modes): the estimate needs free running around.
    pub(super) with_progress: bool,
}

impl Sample {
    /// A window's rates; its guest progress is filled in later.
    pub(super) fn new(
        round: usize,
        evals: Option<f64>,
        matched: Option<f64>,
        seconds: f64,
        window: (Instant, Instant),
        with_progress: bool,
    ) -> Sample {
        Sample { round, evals, matched, progress: None, seconds, window, with_progress }
    }

    pub(super) fn json(&self) -> Value {
        json!({"round": self.round, "evals_per_s": self.evals, "matched_per_s": self.matched,
               "guest_progress": self.progress, "seconds": self.seconds})
    }
}

pub(crate) struct StartupSample {
    pub(crate) wall: f64,
    pub(crate) rss_kb: Option<u64>,
    pub(crate) ok: bool,
}

/// `ktrace: 2853 hits seen, 798 matched in 5.00s (…)` → (hits, matched, seconds).
/// (hits seen, matched, seconds) from ktrace's summary line on stderr.
pub(crate) fn parse_summary(line: &str) -> Option<(f64, f64, f64)> {
    let rest = line.split("ktrace:").nth(1)?.trim();
    let words: Vec<&str> = rest.split_whitespace().collect();
    let hits = words.first()?.parse().ok()?;
    let matched = words.get(3)?.parse().ok()?;
    let seconds: f64 = words.get(6)?.trim_end_matches('s').parse().ok()?;
    (seconds > 0.0).then_some((hits, matched, seconds))
}

pub(crate) fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}
