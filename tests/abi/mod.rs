//! Every constant, record size and alignment, field offset and field size
//! of the sys crates, compared with C compiled against the system's
//! installed kernel headers; items those headers predate are compared with
//! the reference values in `reference.rs`. An item covered by neither fails.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{self, require};

mod generated_items;
mod reference;

/// One generated module and its items (filled in by `generated_items.rs`).
pub struct Module {
    pub rust_path: &'static str,
    pub header: &'static str,
    pub system_header: Option<&'static str>,
    pub items: &'static [Item],
}

/// One comparable fact about a generated item.
pub enum Item {
    Const {
        name: &'static str,
        value: u64,
    },
    Record {
        name: &'static str,
        union: bool,
        size: usize,
        align: usize,
    },
    Field {
        record: &'static str,
        path: &'static str,
        offset: usize,
        size: usize,
    },
}

/// A fact as a key and the Rust value, keyed the way `reference.rs` is.
fn facts(module: &Module) -> Vec<(String, u64)> {
    let m = module.rust_path;
    let mut out = Vec::new();
    for item in module.items {
        match *item {
            Item::Const { name, value } => out.push((format!("const {m}::{name}"), value)),
            Item::Record {
                name, size, align, ..
            } => {
                out.push((format!("size {m}::{name}"), size as u64));
                out.push((format!("align {m}::{name}"), align as u64));
            }
            Item::Field {
                record,
                path,
                offset,
                size,
            } => {
                out.push((format!("offset {m}::{record}.{path}"), offset as u64));
                out.push((format!("fsize {m}::{record}.{path}"), size as u64));
            }
        }
    }
    out
}

/// C statements printing `key value` for each fact of one record.
fn record_probe(module: &Module, name: &str, union: bool) -> Vec<(String, String)> {
    let m = module.rust_path;
    let tag = if union { "union" } else { "struct" };
    let mut lines = vec![
        (format!("size {m}::{name}"), format!("sizeof({tag} {name})")),
        (
            format!("align {m}::{name}"),
            format!("_Alignof({tag} {name})"),
        ),
    ];
    for item in module.items {
        if let Item::Field { record, path, .. } = *item
            && record == name
        {
            lines.push((
                format!("offset {m}::{record}.{path}"),
                format!("offsetof({tag} {record}, {path})"),
            ));
            lines.push((
                format!("fsize {m}::{record}.{path}"),
                format!("sizeof((({tag} {record} *)0)->{path})"),
            ));
        }
    }
    lines
}

struct CProbe {
    dir: PathBuf,
    cc: String,
    /// `-I` directories searched before the system's headers.
    include: Vec<PathBuf>,
    compiled: usize,
}

impl CProbe {
    fn new() -> Result<Self, String> {
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
        // One directory per probe: tests run in parallel and each removes
        // its own on drop.
        static PROBES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("userfault-abi-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut probe = CProbe {
            dir,
            cc,
            include: Vec::new(),
            compiled: 0,
        };
        // The toolchain itself must work, or every item would look absent.
        probe
            .run("#include <stdio.h>\n", &[("probe".into(), "1".into())])
            .map_err(|e| format!("no working C compiler ({}): {e}", probe.cc))?;
        Ok(probe)
    }

    /// Compiles and runs a program printing each `(key, C expression)`;
    /// `Err` when it does not compile (the header lacks something).
    fn run(
        &mut self,
        prelude: &str,
        exprs: &[(String, String)],
    ) -> Result<BTreeMap<String, u64>, String> {
        let mut src = String::from(prelude);
        src.push_str("#include <stddef.h>\n#include <stdio.h>\nint main(void) {\n");
        for (key, expr) in exprs {
            let _ = writeln!(
                src,
                "  printf(\"%s %llu\\n\", \"{key}\", (unsigned long long)({expr}));"
            );
        }
        src.push_str("  return 0;\n}\n");
        self.compile_and_run(&src)
    }

    fn compile_and_run(&mut self, src: &str) -> Result<BTreeMap<String, u64>, String> {
        self.compiled += 1;
        let c = self.dir.join(format!("p{}.c", self.compiled));
        let exe = c.with_extension("");
        std::fs::write(&c, src).map_err(|e| format!("{}: {e}", c.display()))?;
        let out = Command::new(&self.cc)
            .args(self.include.iter().map(|d| format!("-I{}", d.display())))
            .arg("-o")
            .arg(&exe)
            .arg(&c)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.cc))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let run = Command::new(&exe)
            .output()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        Ok(String::from_utf8_lossy(&run.stdout)
            .lines()
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect())
    }

    /// The value of every fact the system header defines.
    fn system_values(&mut self, module: &Module, header: &str) -> BTreeMap<String, u64> {
        let prelude = format!("#include <sys/ioctl.h>\n#include <{header}>\n");
        let mut values = BTreeMap::new();
        // Constants: one program, each guarded so absent names are skipped.
        let mut src = prelude.clone();
        src.push_str("#include <stdio.h>\nint main(void) {\n");
        for item in module.items {
            if let Item::Const { name, .. } = *item {
                let key = format!("const {}::{name}", module.rust_path);
                let _ = writeln!(
                    src,
                    "#ifdef {name}\n  printf(\"%s %llu\\n\", \"{key}\", (unsigned long long)({name}));\n#endif"
                );
            }
        }
        src.push_str("  return 0;\n}\n");
        match self.compile_and_run(&src) {
            Ok(v) => values.extend(v),
            Err(e) => panic!("the constants program for <{header}> does not compile:\n{e}"),
        }

        // Records: all facts of a record in one program; if the header lacks
        // the record or one of its fields, try fact by fact.
        for item in module.items {
            if let Item::Record { name, union, .. } = *item {
                let exprs = record_probe(module, name, union);
                match self.run(&prelude, &exprs) {
                    Ok(v) => values.extend(v),
                    Err(_) => {
                        for e in &exprs {
                            if let Ok(v) = self.run(&prelude, std::slice::from_ref(e)) {
                                values.extend(v);
                            }
                        }
                    }
                }
            }
        }
        values
    }
}

impl Drop for CProbe {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn every_item_matches_c_or_the_reference() {
    const TEST: &str = "every_item_matches_c_or_the_reference";
    let mut probe = require!(TEST, "c-headers", CProbe::new());
    let reference: BTreeMap<&str, u64> = reference::VALUES.iter().copied().collect();
    let grown: BTreeMap<&str, &str> = reference::GROWN_MASKS.iter().copied().collect();

    let (mut vs_c, mut vs_reference, mut grown_checked) = (0, 0, 0);
    let mut failures = Vec::new();
    let mut used_reference = std::collections::BTreeSet::new();
    for module in generated_items::MODULES {
        let system = match module.system_header {
            Some(h) if Path::new("/usr/include").join(h).exists() => probe.system_values(module, h),
            Some(h) => {
                util::skip(
                    TEST,
                    "c-headers",
                    &format!("/usr/include/{h} is not installed"),
                );
                return;
            }
            None => BTreeMap::new(),
        };
        for (key, rust) in facts(module) {
            let in_reference = reference.get(key.as_str()).copied();
            if in_reference.is_some() {
                used_reference.insert(key.clone());
            }
            match (system.get(&key).copied(), in_reference) {
                (Some(c), _) if grown.contains_key(key.as_str()) => {
                    // A mask that newer kernels extended: the older header's
                    // bits must all be present, and the whole must match the
                    // reference.
                    grown_checked += 1;
                    if c & !rust != 0 {
                        failures.push(format!("{key}: Rust {rust:#x} lacks bits of C {c:#x}"));
                    }
                    match in_reference {
                        Some(r) if r == rust => vs_reference += 1,
                        Some(r) => failures.push(format!("{key}: Rust {rust:#x} != reference {r:#x}")),
                        None => failures.push(format!("{key}: grown mask needs a reference value")),
                    }
                }
                (Some(c), reference) => {
                    vs_c += 1;
                    if c != rust {
                        failures.push(format!("{key}: Rust {rust:#x} != C {c:#x} ({})", module.header));
                    }
                    if let Some(r) = reference.filter(|r| *r != c) {
                        failures.push(format!("{key}: reference {r:#x} != C {c:#x}"));
                    }
                }
                (None, Some(r)) => {
                    vs_reference += 1;
                    if r != rust {
                        failures.push(format!("{key}: Rust {rust:#x} != reference {r:#x}"));
                    }
                }
                (None, None) => failures.push(format!(
                    "{key}: not in the system header and no reference value (add it to tests/abi/reference.rs)"
                )),
            }
        }
    }
    for key in reference.keys() {
        if !used_reference.contains(*key) {
            failures.push(format!("reference entry {key} names no generated item"));
        }
    }
    util::report(&format!(
        "abi: {vs_c} facts compared with C ({} programs compiled), {vs_reference} with the reference \
         ({grown_checked} grown masks also checked against the older C header)",
        probe.compiled
    ));
    assert!(
        failures.is_empty(),
        "{} ABI mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(vs_c > 100, "suspiciously few facts compared with C: {vs_c}");
}

/// The environment variable naming the `usr/include` directory of Linux
/// 7.3's uAPI headers (Debian's `linux-libc-dev` 7.3, unpacked by
/// `ci/fetch-7.3-headers.sh`).
const HEADERS_7_3: &str = "USERFAULT_HEADERS_7_3";

/// Every fact of the mainline modules (userfaultfd, PAGEMAP_SCAN, KVM)
/// equals C compiled against Linux 7.3's uAPI headers: values, grown masks
/// and request numbers exactly, layouts field by field. Every userfaultfd
/// and PAGEMAP_SCAN fact must be in the headers; only KVM records this
/// project names (the kernel declares them anonymously inside `kvm_run`)
/// fall back to the reference table.
#[test]
fn mainline_items_match_the_linux_7_3_headers() {
    const TEST: &str = "mainline_items_match_the_linux_7_3_headers";
    let dir = require!(
        TEST,
        "headers-7.3",
        std::env::var(HEADERS_7_3)
            .map(PathBuf::from)
            .map_err(|_| format!("{HEADERS_7_3} is not set (run ci/fetch-7.3-headers.sh)"))
            .and_then(|d| {
                if d.join("linux/userfaultfd.h").exists() {
                    Ok(d)
                } else {
                    Err(format!("{}: no linux/userfaultfd.h", d.display()))
                }
            })
    );
    let mut probe = require!(TEST, "c-headers", CProbe::new());
    probe.include = vec![dir.clone(), dir.join("x86_64-linux-gnu")];
    let reference: BTreeMap<&str, u64> = reference::VALUES.iter().copied().collect();
    let mut failures = Vec::new();
    let (mut compared, mut pagemap, mut named_here) = (0, 0, 0);
    for module in generated_items::MODULES {
        let Some(header) = module.system_header else {
            continue;
        };
        let c = probe.system_values(module, header);
        for (key, rust) in facts(module) {
            match c.get(&key) {
                Some(&v) if v == rust => compared += 1,
                Some(&v) => failures.push(format!("{key}: Rust {rust:#x} != 7.3 C {v:#x}")),
                None if module.rust_path == "gmem_sys"
                    && reference.get(key.as_str()) == Some(&rust) =>
                {
                    named_here += 1;
                }
                None => failures.push(format!("{key}: not in the 7.3 <{header}>")),
            }
            if module.rust_path == "uffd_sys::pagemap" {
                pagemap += 1;
            }
        }
    }
    util::report(&format!(
        "abi 7.3: {compared} facts equal to C compiled against {} ({pagemap} of PAGEMAP_SCAN); \
         {named_here} facts of KVM records named by this project checked with the reference",
        dir.display()
    ));
    assert!(
        failures.is_empty(),
        "{} mismatches with the 7.3 headers:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(pagemap > 30, "PAGEMAP_SCAN items compared: {pagemap}");
}
