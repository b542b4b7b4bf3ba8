//! `userfault-probe`: reports which userfaultfd, guest_memfd and KVM
//! userfault capabilities the running kernel offers.
//!
//! Thin: argument parsing ([`cli`]) and rendering ([`render`]) of
//! [`userfault::caps::Capabilities`], which does the probing.

mod cli;
mod render;

use std::process::ExitCode;
use std::time::Instant;

use userfault::caps::Capabilities;

/// Git revision, embedded by `build.rs`.
const GIT_REVISION: &str = env!("USERFAULT_GIT_REVISION");
/// Digest of the `abi/` headers the bindings came from, embedded by `build.rs`.
const ABI_DIGEST: &str = env!("USERFAULT_ABI_DIGEST");

/// Version, git revision and ABI header digest.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("USERFAULT_GIT_REVISION"),
    ", abi sha256 ",
    env!("USERFAULT_ABI_DIGEST"),
    ")"
);

/// Exit status when a required capability is not met.
const UNMET: u8 = 1;
/// Exit status for bad arguments, unknown capability names and probe failures.
const FAILURE: u8 = 2;

fn main() -> ExitCode {
    let opts = match cli::parse(std::env::args().skip(1)) {
        Ok(opts) => opts,
        Err(message) => {
            eprintln!("userfault-probe: {message} (try --help)");
            return ExitCode::from(FAILURE);
        }
    };
    if opts.help {
        let version = env!("CARGO_PKG_VERSION");
        println!(
            "userfault-probe {version} (git {GIT_REVISION})\n\n{}",
            cli::USAGE
        );
        return ExitCode::SUCCESS;
    }
    if opts.version {
        println!("userfault-probe {VERSION}");
        return ExitCode::SUCCESS;
    }
    if opts.list {
        print!("{}", render::list());
        return ExitCode::SUCCESS;
    }
    let known = Capabilities::names();
    let unknown: Vec<&str> = opts
        .require
        .iter()
        .filter(|name| !known.iter().any(|(k, _)| k == *name))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        eprintln!(
            "userfault-probe: unknown capability name(s): {} (--list-capabilities lists them)",
            unknown.join(", ")
        );
        return ExitCode::from(FAILURE);
    }

    let start = Instant::now();
    let caps = match Capabilities::probe() {
        Ok(caps) => caps,
        Err(e) => {
            eprintln!("userfault-probe: probing failed: {e}");
            return ExitCode::from(FAILURE);
        }
    };
    let elapsed = start.elapsed();

    if opts.json {
        match render::json(&caps, elapsed, GIT_REVISION, ABI_DIGEST) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("userfault-probe: JSON output failed: {e}");
                return ExitCode::from(FAILURE);
            }
        }
    } else if opts.require.is_empty() {
        print!("{}", render::table(&caps, elapsed, VERSION));
    }
    if opts.require.is_empty() {
        return ExitCode::SUCCESS;
    }
    let (text, code) = match render::verdict(&caps, &opts.require) {
        Ok(text) => (text, ExitCode::SUCCESS),
        Err(text) => (text, ExitCode::from(UNMET)),
    };
    if opts.json {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
    code
}
