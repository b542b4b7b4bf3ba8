//! `userfault-probe`: reports which userfaultfd, guest_memfd and KVM
//! userfault capabilities the running kernel offers.

use std::process::ExitCode;

/// Git revision and ABI header digest, embedded by `build.rs`.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("USERFAULT_GIT_REVISION"),
    ", abi sha256 ",
    env!("USERFAULT_ABI_DIGEST"),
    ")"
);

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("--version" | "-V") => {
            println!("userfault-probe {VERSION}");
            ExitCode::SUCCESS
        }
        Some("--help" | "-h") | None => {
            println!("userfault-probe {VERSION}");
            println!("usage: userfault-probe [--version]");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("userfault-probe: unknown argument {other:?} (try --help)");
            ExitCode::from(2)
        }
    }
}
