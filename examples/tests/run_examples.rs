//! The examples run against the real guest and do what they say.
//! They must be built first (`cargo build --examples`; `cargo xtask test` does it).

use std::path::PathBuf;
use std::process::Command;

use ktrace_testguest::{test_guest, BootOptions};

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built (run `cargo build --examples` first; `cargo xtask test` does)",
        path.display()
    );
    path
}

#[test]
fn examples_trace_and_list_the_real_guest() {
    let Some(guest) = test_guest(BootOptions::default()) else { return };
    let vmlinux = guest.vmlinux().to_str().expect("utf-8").to_string();
    let run = |name: &str, args: &[&str]| {
        let out = Command::new(example(name)).arg(guest.addr()).arg(&vmlinux).args(args).output().expect(name);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };

    let (tasks, _) = run("list_tasks", &[]);
    let pid = guest.testprog_pid().to_string();
    assert!(
        tasks.lines().any(|l| l.split_whitespace().next() == Some(pid.as_str()) && l.contains("testprog")),
        "{tasks}"
    );

    let (hits, summary) = run("stream_hits", &["_raw_spin_lock", "5"]);
    assert!(hits.lines().count() >= 5, "{hits}");
    assert!(summary.contains("guest released: true"), "{summary}");

    let dir = std::env::temp_dir().join(format!("ktrace-examples-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let json = dir.join("hits.json");
    let (said, _) = run("capture_json", &[&pid, json.to_str().expect("utf-8")]);
    assert!(said.contains("25 of"), "{said}");
    let captured: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json file")).expect("json");
    let hits = captured.as_array().expect("array");
    assert_eq!(hits.len(), 25);
    assert!(hits.iter().all(|h| h["pid"].as_i64() == Some(i64::from(guest.testprog_pid()))));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(guest.is_running(std::time::Duration::from_secs(20)));
}
