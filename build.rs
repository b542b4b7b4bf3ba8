//! Embeds the git revision and the digest of the `abi/` headers the
//! bindings were generated from, for `userfault-probe --version`.
//!
//! Reads nothing about the build machine beyond this source tree and never
//! fails the build: anything it cannot find becomes "unknown" and a
//! `cargo:warning`.

use std::path::Path;
use std::process::Command;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let generated = root.join("uffd-sys/src/generated.rs");
    println!("cargo:rerun-if-changed={}", generated.display());
    for git_file in [".git/HEAD", ".git/index"] {
        if root.join(git_file).exists() {
            println!("cargo:rerun-if-changed={git_file}");
        }
    }

    let revision = git_revision(root).unwrap_or_else(|| {
        println!("cargo:warning=git revision unavailable; --version will say \"unknown\"");
        "unknown".to_string()
    });
    let digest = abi_digest(&generated).unwrap_or_else(|| {
        println!(
            "cargo:warning=abi digest not found in {}",
            generated.display()
        );
        "unknown".to_string()
    });
    println!("cargo:rustc-env=USERFAULT_GIT_REVISION={revision}");
    println!("cargo:rustc-env=USERFAULT_ABI_DIGEST={digest}");
}

fn git_revision(root: &Path) -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let rev = String::from_utf8(out.stdout).ok()?.trim().to_string();
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(root)
        .output()
        .ok()
        .is_some_and(|o| o.status.success() && !o.stdout.is_empty());
    Some(if dirty { format!("{rev}-dirty") } else { rev })
}

/// The generator writes `(abi sha256 <hex>)` into the first line of every
/// generated file.
fn abi_digest(generated: &Path) -> Option<String> {
    let text = std::fs::read_to_string(generated).ok()?;
    let first = text.lines().next()?;
    let rest = first.split("abi sha256 ").nth(1)?;
    let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    (hex.len() == 64).then_some(hex)
}
