//! Scenario 6: how long `Capabilities::probe()` takes in process, and the
//! whole `userfault-probe` binary (process start, probe, JSON rendering)
//! from the outside. There is no raw baseline: the probe is the thing
//! measured. The budget is 100 ms; nothing asserts it.

use std::process::Command;
use std::time::{Duration, Instant};

use userfault::caps::Capabilities;

use crate::harness::Options;

fn summary(label: &str, mut times: Vec<Duration>) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let median = times[times.len() / 2];
    println!(
        "| {label} | {} | {:.2} | {:.2} | {:.2} |",
        times.len(),
        ms(times[0]),
        ms(median),
        ms(times[times.len() - 1])
    );
}

pub fn run(o: &Options) {
    let runs = if o.smoke { 1 } else { 50 };
    println!();
    println!(
        "### probe wall time ({runs} run{})",
        if runs == 1 { "" } else { "s" }
    );
    println!();
    println!("| what | runs | min ms | median ms | max ms |");
    println!("|---|---:|---:|---:|---:|");

    let mut in_process = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let caps = Capabilities::probe().expect("Capabilities::probe");
        in_process.push(start.elapsed());
        drop(caps);
    }
    summary("`Capabilities::probe()`", in_process);

    let exe = env!("CARGO_BIN_EXE_userfault-probe");
    let mut binary = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let out = Command::new(exe)
            .arg("--json")
            .output()
            .expect("run userfault-probe");
        binary.push(start.elapsed());
        assert!(
            out.status.success(),
            "userfault-probe --json exited {}",
            out.status
        );
        assert!(!out.stdout.is_empty(), "userfault-probe printed nothing");
    }
    summary("`userfault-probe --json` (whole process)", binary);
}
