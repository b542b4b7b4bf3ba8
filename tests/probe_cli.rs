//! The `userfault-probe` binary, run as a user would: its JSON document
//! (schema and values, checked against raw `UFFDIO_API` and
//! `UFFDIO_REGISTER` calls made here), `--require` exit codes, the table's
//! width, and a run as the unprivileged user `nobody`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;
use uffd_sys as sys;
use userfault::mem::{Mapping, Sharing};

use crate::util::{self, require};

/// The probe binary: `USERFAULT_PROBE` when set (a copy beside the test
/// binary, as in a kernel-matrix guest), else the one cargo built.
fn bin() -> String {
    std::env::var("USERFAULT_PROBE")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_userfault-probe").to_string())
}
const PAGE: usize = 4096;
const NOBODY: u32 = 65534;

/// The register modes of the document's rows, in order.
const MODES: [(&str, u64); 6] = [
    ("MISSING", sys::UFFDIO_REGISTER_MODE_MISSING),
    ("WP", sys::UFFDIO_REGISTER_MODE_WP),
    ("MINOR", sys::UFFDIO_REGISTER_MODE_MINOR),
    (
        "MISSING|MINOR",
        sys::UFFDIO_REGISTER_MODE_MISSING | sys::UFFDIO_REGISTER_MODE_MINOR,
    ),
    (
        "MISSING|WP|MINOR",
        sys::UFFDIO_REGISTER_MODE_MISSING
            | sys::UFFDIO_REGISTER_MODE_WP
            | sys::UFFDIO_REGISTER_MODE_MINOR,
    ),
    ("RWP", sys::UFFDIO_REGISTER_MODE_RWP),
];

fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run userfault-probe")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `userfault-probe --json`, run once for all tests.
fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let out = run(&["--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("--json prints JSON")
    })
}

fn status_of(v: &Value) -> &str {
    v["status"].as_str().expect("a status object")
}

/// Checks the shape of every status object below `v`.
fn check_statuses(path: &str, v: &Value) {
    match v {
        Value::Object(map) => {
            if let Some(status) = map.get("status") {
                match status.as_str() {
                    Some("supported") => {}
                    Some("unsupported") => {
                        let reason = map["reason"].as_str().unwrap_or_default();
                        assert!(!reason.is_empty(), "{path}: unsupported without a reason");
                        let errno = &map["errno"];
                        assert!(
                            errno.is_null() || errno["code"].as_i64().is_some_and(|c| c > 0),
                            "{path}: bad errno {errno}"
                        );
                    }
                    Some("not_probed") => {
                        let why = map["why"].as_str().unwrap_or_default();
                        assert!(!why.is_empty(), "{path}: not_probed without why");
                    }
                    other => panic!("{path}: unknown status {other:?}"),
                }
            }
            for (k, child) in map {
                check_statuses(&format!("{path}.{k}"), child);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                check_statuses(&format!("{path}[{i}]"), child);
            }
        }
        _ => {}
    }
}

fn hex(v: &Value) -> u64 {
    let s = v.as_str().expect("a hex string");
    u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex")
}

#[test]
fn json_has_the_documented_fields() {
    let doc = document();
    assert_eq!(doc["schema_version"], 1);
    for key in ["name", "version", "git_revision", "abi_digest"] {
        assert!(doc["generator"][key].is_string(), "generator.{key}");
    }
    assert!(doc["probe_duration_us"].is_u64());

    let host = &doc["host"];
    for key in ["kernel_release", "kernel_version", "architecture"] {
        assert!(host[key].is_string(), "host.{key}");
    }
    assert_eq!(host["page_size"], PAGE);
    assert!(host["uid"].is_u64() && host["euid"].is_u64());
    assert!(host["huge_pages"]["status"].is_string());

    let u = &doc["userfaultfd"];
    for key in [
        "syscall",
        "syscall_user_mode_only",
        "unprivileged_userfaultfd",
        "api",
    ] {
        assert!(u[key]["status"].is_string(), "userfaultfd.{key}");
    }
    assert!(u["user_mode_only_required"].is_boolean());
    assert_eq!(u["device"]["path"], "/dev/userfaultfd");
    assert!(u["device"]["node"]["status"].is_string());
    assert!(u["device"]["usable"]["status"].is_string());

    let kinds: Vec<&str> = doc["memory"]
        .as_array()
        .expect("memory is an array")
        .iter()
        .map(|row| row["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(
        kinds,
        [
            "anon_private",
            "anon_shared",
            "memfd_shmem",
            "hugetlb_memfd",
            "guest_memfd"
        ]
    );
    for row in doc["memory"].as_array().into_iter().flatten() {
        let modes: Vec<&str> = row["modes"]
            .as_array()
            .expect("modes")
            .iter()
            .map(|m| m["mode"].as_str().expect("mode label"))
            .collect();
        assert_eq!(modes, MODES.map(|(name, _)| name));
        assert!(row["setup"]["status"].is_string());
    }
    for key in ["copy", "class"] {
        assert!(doc["guest_memfd_uffd"][key]["status"].is_string());
    }

    let kvm = &doc["kvm"];
    for key in [
        "api_version",
        "vm",
        "guest_memfd",
        "guest_memfd_flags",
        "guest_memfd_slot",
        "guest_memfd_mmap",
        "flavour",
        "guest_memfd_write",
        "no_direct_map",
        "userfault",
    ] {
        assert!(kvm[key]["status"].is_string(), "kvm.{key}");
    }
    let numbers = |key: &str| -> Vec<u64> {
        kvm[key]
            .as_array()
            .expect("array")
            .iter()
            .map(|c| c["number"].as_u64().expect("number"))
            .collect()
    };
    assert_eq!(numbers("capabilities"), [231, 232, 233, 234, 235, 236, 244]);
    assert_eq!(numbers("colliding"), [239, 243, 245, 246]);
    for c in kvm["colliding"].as_array().into_iter().flatten() {
        assert!(c["mainline_name"].as_str().unwrap().starts_with("KVM_CAP_"));
    }

    check_statuses("$", doc);

    // `has` lists exactly the names --list-capabilities prints.
    let listed = run(&["--list-capabilities"]);
    assert_eq!(listed.status.code(), Some(0));
    let names: Vec<String> = text(&listed.stdout)
        .lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    let has: Vec<&String> = doc["has"].as_object().expect("has").keys().collect();
    assert_eq!(has.len(), names.len());
    for name in &names {
        assert!(doc["has"][name].is_boolean(), "has.{name}");
    }
}

/// A userfaultfd from the system call after `UFFDIO_API` with no
/// features, and the kernel's answer (features, ioctls).
fn raw_uffd() -> Result<(OwnedFd, u64, u64), String> {
    raw_uffd_with(0)
}

/// A raw userfaultfd negotiated with `features`.
fn raw_uffd_with(features: u64) -> Result<(OwnedFd, u64, u64), String> {
    // SAFETY: userfaultfd(2) takes one integer and touches no memory.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "userfaultfd(2): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` was just returned by the kernel and is owned here only.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut api = sys::uffdio_api {
        api: sys::UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes one uffdio_api, which `api` is.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), sys::UFFDIO_API as _, &mut api) };
    assert_eq!(r, 0, "UFFDIO_API: {}", std::io::Error::last_os_error());
    Ok((fd, api.features, api.ioctls))
}

/// `UFFDIO_REGISTER` of `[addr, addr + len)` in `mode`: the ioctl mask, or
/// the errno; unregisters again.
fn raw_register(uffd: BorrowedFd<'_>, addr: usize, len: usize, mode: u64) -> Result<u64, i32> {
    let mut reg = sys::uffdio_register {
        range: sys::uffdio_range {
            start: addr as u64,
            len: len as u64,
        },
        mode,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes one uffdio_register; the
    // range is a scratch mapping of this test that nothing touches.
    let r = unsafe { libc::ioctl(uffd.as_raw_fd(), sys::UFFDIO_REGISTER as _, &mut reg) };
    if r != 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    let mut range = reg.range;
    // SAFETY: UFFDIO_UNREGISTER reads one uffdio_range.
    let r = unsafe { libc::ioctl(uffd.as_raw_fd(), sys::UFFDIO_UNREGISTER as _, &mut range) };
    assert_eq!(r, 0, "UFFDIO_UNREGISTER");
    Ok(reg.ioctls)
}

fn memfd(name: &std::ffi::CStr, flags: u32, len: usize) -> OwnedFd {
    // SAFETY: `name` is a valid C string; the result is a new descriptor.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just returned by the kernel and is owned here only.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: resizes the file this test owns.
    assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) }, 0);
    fd
}

#[test]
fn feature_word_matches_raw_uffdio_api() {
    const TEST: &str = "feature_word_matches_raw_uffdio_api";
    let (_fd, features, ioctls) = require!(TEST, "uffd", raw_uffd());
    let api = &document()["userfaultfd"]["api"];
    assert_eq!(status_of(api), "supported", "{api}");
    assert_eq!(hex(&api["value"]["features"]["bits"]), features);
    assert_eq!(hex(&api["value"]["ioctls"]["bits"]), ioctls);
    util::report(&format!("probe_cli: UFFDIO_API features {features:#x}"));
}

/// The raw userfaultfds the rows are compared with: one without features,
/// and one with `UFFD_FEATURE_RWP` for the RWP column where the kernel
/// offers it (as the probe registers).
struct RawUffds {
    plain: OwnedFd,
    rwp: Option<OwnedFd>,
}

fn raw_uffds() -> Result<RawUffds, String> {
    let (plain, features, _) = raw_uffd()?;
    let rwp = if features & sys::UFFD_FEATURE_RWP != 0 {
        Some(raw_uffd_with(sys::UFFD_FEATURE_RWP)?.0)
    } else {
        None
    };
    Ok(RawUffds { plain, rwp })
}

/// Compares one row of the document with raw registrations of `map`.
fn compare_row(uffds: &RawUffds, kind: &str, map: &Mapping) {
    let row = document()["memory"]
        .as_array()
        .expect("memory")
        .iter()
        .find(|r| r["kind"] == kind)
        .expect("row");
    for ((label, mode), reported) in MODES.iter().zip(row["modes"].as_array().expect("modes")) {
        let ioctls = &reported["ioctls"];
        let uffd = if *mode & sys::UFFDIO_REGISTER_MODE_RWP == 0 {
            uffds.plain.as_fd()
        } else if let Some(rwp) = &uffds.rwp {
            rwp.as_fd()
        } else {
            // No RWP in the kernel: the probe says so without a system call.
            assert_eq!(status_of(ioctls), "unsupported", "{kind} {label}: {ioctls}");
            assert!(ioctls["errno"].is_null(), "{kind} {label}: {ioctls}");
            continue;
        };
        match raw_register(uffd, map.addr(), map.len(), *mode) {
            Ok(mask) => {
                assert_eq!(status_of(ioctls), "supported", "{kind} {label}: {ioctls}");
                assert_eq!(hex(&ioctls["value"]["bits"]), mask, "{kind} {label}");
            }
            Err(errno) => {
                assert_eq!(status_of(ioctls), "unsupported", "{kind} {label}: {ioctls}");
                assert_eq!(ioctls["errno"]["code"], errno, "{kind} {label}");
            }
        }
    }
    util::report(&format!(
        "probe_cli: {kind} masks match raw UFFDIO_REGISTER"
    ));
}

#[test]
fn masks_match_raw_uffdio_register() {
    const TEST: &str = "masks_match_raw_uffdio_register";
    let uffds = require!(TEST, "uffd", raw_uffds());
    let uffd = &uffds;
    compare_row(
        uffd,
        "anon_private",
        &Mapping::anonymous(PAGE, Sharing::Private).expect("mmap"),
    );
    compare_row(
        uffd,
        "anon_shared",
        &Mapping::anonymous(PAGE, Sharing::Shared).expect("mmap"),
    );
    let shmem = memfd(c"probe-cli-shmem", libc::MFD_CLOEXEC, PAGE);
    compare_row(
        uffd,
        "memfd_shmem",
        &Mapping::file(shmem.as_fd(), 0, PAGE, Sharing::Shared).expect("mmap"),
    );

    let hugetlb = document()["memory"][3].clone();
    if status_of(&hugetlb["setup"]) == "supported" {
        let huge = document()["host"]["huge_pages"]["value"]["page_size"]
            .as_u64()
            .expect("huge page size") as usize;
        let size_flag = if huge == 1 << 30 {
            libc::MFD_HUGE_1GB
        } else {
            libc::MFD_HUGE_2MB
        };
        let fd = memfd(
            c"probe-cli-hugetlb",
            libc::MFD_CLOEXEC | libc::MFD_HUGETLB | size_flag,
            huge,
        );
        // The pool is shared with other users of the machine: it may have
        // run dry since the probe ran.
        match Mapping::file(fd.as_fd(), 0, huge, Sharing::Shared) {
            Ok(map) => compare_row(uffd, "hugetlb_memfd", &map),
            Err(e) => util::skip(&format!("{TEST} (hugetlb row)"), "hugetlb", &e.to_string()),
        }
    } else {
        util::skip(
            &format!("{TEST} (hugetlb row)"),
            "hugetlb",
            hugetlb["setup"]["why"].as_str().unwrap_or("not probed"),
        );
    }

    let (_kvm, vm) = require!(TEST, "kvm", crate::kvm::open_vm());
    let Some(gmem) = crate::kvm::need_shared_gmem(TEST, crate::kvm::borrow(&vm), PAGE as u64)
    else {
        return;
    };
    compare_row(
        uffd,
        "guest_memfd",
        &Mapping::file(gmem.as_fd(), 0, PAGE, Sharing::Shared).expect("mmap"),
    );
}

/// Every capability the document lists, against `KVM_CHECK_EXTENSION` made
/// here on `/dev/kvm` and on a default-type VM; and the guest_memfd items
/// against creating one here.
#[test]
fn kvm_capabilities_match_raw_check_extension() {
    const TEST: &str = "kvm_capabilities_match_raw_check_extension";
    let doc = document();
    let (kvm, vm) = require!(TEST, "kvm", crate::kvm::open_vm());
    let caps = &doc["kvm"];
    let mut checked = 0;
    for key in ["capabilities", "colliding"] {
        for c in caps[key].as_array().expect("array") {
            let number = c["number"].as_u64().expect("number");
            let system = kvm.check_extension_raw(number);
            let on_vm = vm.check_extension_raw(number);
            assert_eq!(
                c["value"]["value"], system,
                "{key} {number} on /dev/kvm: {c}"
            );
            assert_eq!(
                c["vm_value"]["value"], on_vm,
                "{key} {number} on the VM: {c}"
            );
            checked += 1;
        }
    }
    util::report(&format!(
        "probe: {checked} KVM capabilities match raw KVM_CHECK_EXTENSION"
    ));
    let plain = userfault::kvm::GuestMemfd::create(
        crate::kvm::borrow(&vm),
        PAGE as u64,
        userfault::kvm::GmemFlags::empty(),
    );
    assert_eq!(
        status_of(&caps["guest_memfd"]) == "supported",
        plain.is_ok(),
        "guest_memfd: {} vs {plain:?}",
        caps["guest_memfd"]
    );
    let shared = crate::kvm::shared_gmem(crate::kvm::borrow(&vm), PAGE as u64)
        .and_then(|g| g.map_all().map(drop).map_err(|e| e.to_string()));
    assert_eq!(
        status_of(&caps["guest_memfd_mmap"]) == "supported",
        shared.is_ok(),
        "guest_memfd_mmap: {} vs {shared:?}",
        caps["guest_memfd_mmap"]
    );
    assert_eq!(doc["has"]["gmem"], plain.is_ok());
    assert_eq!(
        doc["has"]["kvm-cap:USER_MEMORY2"],
        vm.check_extension_raw(u64::from(gmem_sys::KVM_CAP_USER_MEMORY2)) > 0
    );
}

#[test]
fn require_exit_codes() {
    const TEST: &str = "require_exit_codes";
    let has = document()["has"].as_object().expect("has");

    let unknown = run(&["--require", "uffd,no-such-capability"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown.stderr).contains("no-such-capability"));
    assert!(unknown.stdout.is_empty());
    assert_eq!(run(&["--require"]).status.code(), Some(2));
    assert_eq!(run(&["--no-such-option"]).status.code(), Some(2));

    // An unmet one: the out-of-tree series first, which this machine lacks.
    let preferred = [
        "gmem-write",
        "kvm-userfault",
        "gmem-no-direct-map",
        "gmem-uffd",
    ];
    let unmet = preferred
        .into_iter()
        .find(|name| has[*name] == false)
        .or_else(|| {
            has.iter()
                .find(|(_, met)| **met == false)
                .map(|(name, _)| name.as_str())
        });
    match unmet {
        Some(name) => {
            let out = run(&["--require", &format!("feature:MOVE,{name}")]);
            assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
            let stdout = text(&out.stdout);
            let first = stdout.lines().next().unwrap_or_default();
            let expected = if has["feature:MOVE"] == true {
                format!("unmet: {name}")
            } else {
                format!("unmet: feature:MOVE, {name}")
            };
            assert_eq!(first, expected, "{stdout}");
            assert!(stdout.contains(&format!("  {name}:")), "{stdout}");
            // With --json the document stays alone on stdout.
            let out = run(&["--json", "--require", name]);
            assert_eq!(out.status.code(), Some(1));
            serde_json::from_slice::<Value>(&out.stdout).expect("JSON on stdout");
            assert!(text(&out.stderr).starts_with(&format!("unmet: {name}")));
        }
        None => util::report(&format!(
            "{TEST}: every capability is met here; the unmet case was not run"
        )),
    }

    // A met one.
    if has["uffd"] == true {
        let out = run(&["--require=uffd"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
        assert_eq!(text(&out.stdout).trim(), "met: uffd");
    } else {
        util::skip(&format!("{TEST} (met)"), "uffd", "no userfaultfd here");
    }
}

#[test]
fn table_version_and_help() {
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    for heading in ["HOST", "USERFAULTFD", "UFFDIO_REGISTER", "KVM"] {
        assert!(
            table.lines().any(|l| l.starts_with(heading)),
            "no {heading}"
        );
    }
    for line in table.lines() {
        assert!(
            line.chars().count() <= 100,
            "{} columns: {line}",
            line.len()
        );
    }

    let version = text(&run(&["--version"]).stdout);
    let doc = document();
    let git = doc["generator"]["git_revision"].as_str().expect("git");
    let abi = doc["generator"]["abi_digest"].as_str().expect("abi");
    assert!(version.contains(git) && version.contains(abi), "{version}");

    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let help = text(&help.stdout);
    assert!(help.contains("--require") && help.contains("--json"));
    assert!(help.lines().all(|l| l.chars().count() <= 100));
}

/// Text meant for operators carries no Rust `Debug` rendering of a flag
/// set or an option, and no two lines in a row say only "(as above)".
fn reads_as_prose(what: &str, text: &str) {
    for debug in [
        "GmemFlags(",
        "RegisterMode(",
        "Features(",
        "Ioctls(",
        "FaultFlags(",
        "ContinueOnly",
        "CopyCapable",
        "Some(",
    ] {
        assert!(!text.contains(debug), "{what} shows {debug:?}:\n{text}");
    }
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.windows(2) {
        assert!(
            !(pair[0].contains("(as above)") && pair[1].contains("(as above)")),
            "{what}: \"(as above)\" on consecutive lines:\n{}\n{}",
            pair[0],
            pair[1]
        );
    }
}

/// Every string value of the JSON document whose key is `reason` or `why`.
fn reasons(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::String(s) if k == "reason" || k == "why" => out.push(s.clone()),
                    _ => reasons(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| reasons(v, out)),
        _ => {}
    }
}

#[test]
fn reasons_read_as_prose() {
    let table = run(&[]);
    reads_as_prose("the table", &text(&table.stdout));
    let mut all = Vec::new();
    reasons(document(), &mut all);
    assert!(!all.is_empty());
    reads_as_prose("the JSON reasons", &all.join("\n\n"));
}

#[test]
fn capability_list_wraps_under_the_meanings() {
    let out = run(&["--list-capabilities"]);
    assert_eq!(out.status.code(), Some(0));
    let list = text(&out.stdout);
    const COLUMN: usize = 28;
    let mut continued = 0;
    for line in list.lines() {
        assert!(line.chars().count() <= 100, "{line}");
        let indent = line.len() - line.trim_start().len();
        if indent > 0 {
            continued += 1;
            assert_eq!(
                indent, COLUMN,
                "a continuation line under the meaning: {line:?}"
            );
        } else {
            let (name, rest) = line.split_once(' ').expect("name and meaning");
            let meaning_at = line.len() - rest.trim_start().len();
            assert_eq!(meaning_at, COLUMN.max(name.len() + 1), "{line:?}");
        }
    }
    assert!(continued > 0, "no meaning wraps, so nothing was checked");
}

#[test]
fn unprivileged_run_is_clean() {
    const TEST: &str = "unprivileged_run_is_clean";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        util::skip(TEST, "root", "switching to nobody needs root");
        return;
    }
    // A copy nobody can reach, whatever the permissions of the build tree.
    let dir = std::env::temp_dir().join(format!("userfault-probe-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let exe = dir.join("userfault-probe");
    std::fs::copy(bin(), &exe).expect("copy the binary");
    use std::os::unix::fs::PermissionsExt as _;
    for path in [&dir, &exe] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    // fork, setgroups([]), setgid, setuid, exec.
    let as_nobody = |args: &[&str]| {
        Command::new(&exe)
            .args(args)
            .current_dir("/")
            .gid(NOBODY)
            .uid(NOBODY)
            .output()
            .expect("run as nobody")
    };
    let out = as_nobody(&["--json"]);
    let table = as_nobody(&[]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(table.status.code(), Some(0), "{}", text(&table.stderr));
    reads_as_prose("the table as nobody", &text(&table.stdout));
    assert!(
        text(&table.stdout)
            .lines()
            .all(|l| l.chars().count() <= 100)
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    check_statuses("$", &doc);
    let mut all = Vec::new();
    reasons(&doc, &mut all);
    reads_as_prose("the JSON reasons as nobody", &all.join("\n\n"));
    assert_eq!(doc["host"]["euid"], NOBODY);
    assert_eq!(doc["host"]["cap_sys_ptrace"], false);

    let u = &doc["userfaultfd"];
    util::report(&format!(
        "probe_cli: as nobody: syscall {}, user-mode-only {}, device {}",
        u["syscall"], u["syscall_user_mode_only"], u["device"]["usable"]
    ));
    if u["unprivileged_userfaultfd"]["value"] == 0 {
        assert_eq!(status_of(&u["syscall"]), "unsupported");
        assert_eq!(u["syscall"]["errno"]["name"], "EPERM");
        assert!(
            u["syscall"]["reason"]
                .as_str()
                .unwrap()
                .contains("vm.unprivileged_userfaultfd")
        );
        assert_eq!(status_of(&u["syscall_user_mode_only"]), "supported");
        assert_eq!(u["user_mode_only_required"], true);
        assert_eq!(u["probed_with"], "syscall_user_mode_only");
        assert_eq!(status_of(&u["api"]), "supported");
    }
    let others_rw = |node: &Value| {
        node["value"]["mode"]
            .as_u64()
            .is_some_and(|m| m & 0o6 == 0o6)
    };
    if !others_rw(&u["device"]["node"]) {
        assert_eq!(status_of(&u["device"]["usable"]), "unsupported");
        // No node at all before Linux 6.1: ENOENT, as stat(2) said.
        let expected = if status_of(&u["device"]["node"]) == "supported" {
            "EACCES"
        } else {
            "ENOENT"
        };
        assert_eq!(u["device"]["usable"]["errno"]["name"], expected);
        if u["unprivileged_userfaultfd"]["value"] == 0 {
            assert_eq!(doc["has"]["uffd"], false);
        }
    }
    let kvm = &doc["kvm"];
    if !others_rw(&kvm["device"]["node"]) && status_of(&kvm["device"]["node"]) == "supported" {
        assert_eq!(status_of(&kvm["device"]["usable"]), "unsupported");
        assert_eq!(status_of(&kvm["vm"]), "not_probed");
        assert_eq!(status_of(&doc["memory"][4]["setup"]), "not_probed");
        assert_eq!(doc["has"]["kvm"], false);
    }
}

#[test]
fn probe_leaves_nothing_behind() {
    let caps = userfault::caps::Capabilities::probe().expect("probe");
    assert_eq!(caps.memory.len(), 5);
    // The probe's scratch memfds are named userfault-caps-*; none may be
    // left open or mapped (other tests' objects have other names).
    for entry in std::fs::read_dir("/proc/self/fd")
        .expect("fd dir")
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let target = target.to_string_lossy().into_owned();
            assert!(!target.contains("userfault-caps"), "left open: {target}");
        }
    }
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    assert!(!maps.contains("userfault-caps"), "left mapped:\n{maps}");
}
