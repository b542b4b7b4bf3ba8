//! Regenerates every committed binding file of the userfault workspace from
//! the C headers in `abi/`.
//!
//! ```text
//! cargo run --manifest-path gen/Cargo.toml            # write the files
//! cargo run --manifest-path gen/Cargo.toml -- --check # fail on drift
//! ```
//!
//! Needs libclang (bindgen loads it at run time) and rustfmt. Nothing in the
//! workspace's own build runs this program.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use bindgen::callbacks::{IntKind, ParseCallbacks};
use sha2::{Digest, Sha256};

mod header;
mod items;
mod postprocess;

/// The command that regenerates everything; named in every generated file.
const COMMAND: &str = "cargo run --manifest-path gen/Cargo.toml";

/// One header turned into one Rust module.
struct Job {
    /// Header under `abi/`.
    header: &'static str,
    /// Output file, relative to the workspace root.
    out: &'static str,
    /// Rust path of the module the output becomes (for the test tables).
    rust_path: &'static str,
    /// Path of the `ioctl` encoding module as seen from the output module.
    ioctl_path: &'static str,
    /// The system header that also defines these items, if mainline.
    system_header: Option<&'static str>,
}

const JOBS: &[Job] = &[
    Job {
        header: "userfaultfd.h",
        out: "uffd-sys/src/generated.rs",
        rust_path: "uffd_sys",
        ioctl_path: "crate::ioctl",
        system_header: Some("linux/userfaultfd.h"),
    },
    Job {
        header: "pagemap.h",
        out: "uffd-sys/src/pagemap_generated.rs",
        rust_path: "uffd_sys::pagemap",
        ioctl_path: "crate::ioctl",
        system_header: Some("linux/fs.h"),
    },
    Job {
        header: "kvm.h",
        out: "gmem-sys/src/generated/mainline.rs",
        rust_path: "gmem_sys",
        ioctl_path: "crate::ioctl",
        system_header: Some("linux/kvm.h"),
    },
    Job {
        header: "oot/kvm-userfault-v3.h",
        out: "gmem-sys/src/generated/kvm_userfault_v3.rs",
        rust_path: "gmem_sys::upstream::kvm_userfault_v3",
        ioctl_path: "crate::ioctl",
        system_header: None,
    },
    Job {
        header: "oot/gmem-write-v7.h",
        out: "gmem-sys/src/generated/gmem_write_v7.rs",
        rust_path: "gmem_sys::upstream::gmem_write_v7",
        ioctl_path: "crate::ioctl",
        system_header: None,
    },
    Job {
        header: "oot/direct-map-removal-v12.h",
        out: "gmem-sys/src/generated/direct_map_removal_v12.rs",
        rust_path: "gmem_sys::upstream::direct_map_removal_v12",
        ioctl_path: "crate::ioctl",
        system_header: None,
    },
    Job {
        header: "oot/firecracker-6.18.h",
        out: "gmem-sys/src/generated/firecracker_6_18.rs",
        rust_path: "gmem_sys::firecracker_6_18",
        ioctl_path: "crate::ioctl",
        system_header: None,
    },
];

/// Copies of the ioctl encoding template, one per sys crate.
const IOCTL_OUTPUTS: &[&str] = &["uffd-sys/src/ioctl.rs", "gmem-sys/src/ioctl.rs"];
const IOCTL_TEMPLATE: &str = include_str!("../templates/ioctl.rs");

/// The per-item table the integration tests compare against C.
const ITEMS_OUT: &str = "tests/abi/generated_items.rs";

/// Chooses the Rust type of each integer `#define` by its name, so that a
/// constant has the width of the field or argument it is used with.
#[derive(Debug)]
struct IntTypes;

impl ParseCallbacks for IntTypes {
    fn int_macro(&self, name: &str, _value: i64) -> Option<IntKind> {
        Some(int_kind(name))
    }
}

fn int_kind(name: &str) -> IntKind {
    const U64_PREFIXES: &[&str] = &[
        "UFFD_API",
        "UFFD_FEATURE_",
        "UFFD_PAGEFAULT_FLAG_",
        "PAGE_IS_",
        "PM_SCAN_",
        "GUEST_MEMFD_FLAG_",
        "KVM_MEMORY_ATTRIBUTE_",
        "KVM_MEMORY_EXIT_FLAG_",
    ];
    if name.starts_with("UFFD_EVENT_") {
        IntKind::U8
    } else if name == "UFFD_USER_MODE_ONLY" || name == "KVM_API_VERSION" {
        IntKind::I32
    } else if U64_PREFIXES.iter().any(|p| name.starts_with(p))
        || (name.starts_with("UFFDIO_") && name.contains("_MODE_"))
    {
        IntKind::U64
    } else {
        IntKind::U32
    }
}

fn main() -> ExitCode {
    let check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(other) => {
            eprintln!("usage: {COMMAND} [-- --check]  (unknown argument {other:?})");
            return ExitCode::from(2);
        }
    };
    match run(check) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("userfault-gen: {e}");
            ExitCode::from(2)
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("gen/ lives inside the workspace")
        .to_path_buf()
}

/// Generates everything in memory, then writes it or compares it.
fn run(check: bool) -> Result<bool, String> {
    let root = root();
    let abi = root.join("abi");
    let digest = abi_digest(&abi)?;
    let preamble = |source: &str| {
        format!(
            "// @generated by `{COMMAND}` from {source} (abi sha256 {digest}); do not edit.\n\n"
        )
    };

    let mut outputs: BTreeMap<String, String> = BTreeMap::new();
    let mut tables = Vec::new();
    for job in JOBS {
        let (code, table) = generate(job, &abi)?;
        let text = format!("{}{}", preamble(&format!("abi/{}", job.header)), code);
        outputs.insert(job.out.to_string(), rustfmt(&text)?);
        tables.push(table);
    }
    for out in IOCTL_OUTPUTS {
        let text = format!("{}{}", preamble("gen/templates/ioctl.rs"), IOCTL_TEMPLATE);
        outputs.insert(out.to_string(), rustfmt(&text)?);
    }
    let table_text = format!("{}{}", preamble("abi/"), items::render(&tables));
    outputs.insert(ITEMS_OUT.to_string(), rustfmt(&table_text)?);

    let mut clean = true;
    for (rel, text) in &outputs {
        let path = root.join(rel);
        let old = std::fs::read_to_string(&path).ok();
        if old.as_deref() == Some(text.as_str()) {
            continue;
        }
        if check {
            clean = false;
            let why = if old.is_none() {
                "missing"
            } else {
                "differs from abi/"
            };
            eprintln!("drift: {rel} {why}");
        } else {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            println!("wrote {rel}");
        }
    }
    if check {
        if clean {
            println!(
                "bindings up to date (abi sha256 {digest}, {} files)",
                outputs.len()
            );
        } else {
            eprintln!("generated bindings are out of date: run `{COMMAND}` and commit the result");
        }
    }
    Ok(clean)
}

/// sha256 over every header under `abi/` (relative path, NUL, contents),
/// in path order: the identity of the ABI the bindings were made from.
fn abi_digest(abi: &Path) -> Result<String, String> {
    let mut files = Vec::new();
    collect_headers(abi, &mut files)?;
    files.sort();
    let mut hasher = Sha256::new();
    for path in files {
        let rel = path.strip_prefix(abi).map_err(|e| e.to_string())?;
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        hasher.update(rel.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(&bytes);
    }
    let mut hex = String::new();
    for b in hasher.finalize() {
        let _ = write!(hex, "{b:02x}");
    }
    Ok(hex)
}

fn collect_headers(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_dir() {
            collect_headers(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "h") {
            out.push(path);
        }
    }
    Ok(())
}

/// Runs bindgen over one header and post-processes the result: docs for
/// every item, ioctl request numbers as const fn calls, SAFETY comments.
fn generate(job: &Job, abi: &Path) -> Result<(String, items::Table), String> {
    let path = abi.join(job.header);
    let source = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let parsed = header::parse(&source);

    let bindings = bindgen::Builder::default()
        .header(path.to_string_lossy())
        .clang_args([
            "-nostdinc",
            "-fparse-all-comments",
            "--target=x86_64-unknown-linux-gnu",
        ])
        .clang_arg(format!("-I{}", abi.display()))
        .allowlist_file(format!(".*{}", job.header))
        .use_core()
        .layout_tests(true)
        .derive_default(true)
        .derive_debug(true)
        .impl_debug(true)
        .derive_partialeq(true)
        .derive_eq(true)
        .derive_hash(true)
        .generate_comments(true)
        .parse_callbacks(Box::new(IntTypes))
        .generate()
        .map_err(|e| format!("bindgen failed on abi/{}: {e}", job.header))?;
    let code = bindings.to_string();

    let mut file: syn::File =
        syn::parse_str(&code).map_err(|e| format!("bindgen output for {}: {e}", job.header))?;
    header::document(&mut file, &parsed, job.header);
    let ioctls = header::ioctl_items(&parsed, job.ioctl_path)?;
    file.items.extend(ioctls);
    let table = items::collect(&file, job.rust_path, job.header, job.system_header);

    postprocess::rewrite(&mut file).map_err(|e| format!("abi/{}: {e}", job.header))?;
    Ok((postprocess::comments(&prettyplease::unparse(&file)), table))
}

/// Formats with the toolchain's rustfmt, as `cargo fmt` will check it.
fn rustfmt(text: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new("rustfmt")
        .args(["--edition", "2024", "--emit", "stdout"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run rustfmt: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("rustfmt stdin")?
        .write_all(text.as_bytes())
        .map_err(|e| format!("rustfmt stdin: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("rustfmt: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "rustfmt failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("rustfmt output: {e}"))
}
