//! Rendering a [`Capabilities`] value: the grouped table (every line at
//! most [`WIDTH`] columns) and the versioned JSON document.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use userfault::caps::{
    Capabilities, CollidingCap, DeviceNode, HugePages, KvmCap, NodeInfo, REGISTER_MODES,
    RangeClass, SCHEMA_VERSION, Status, UffdSource,
};
use userfault::kvm::{CandidateBit, GmemNumbering};
use userfault::uffd::{Ioctls, RegisterMode};

/// The widest line the table prints.
pub const WIDTH: usize = 100;

/// Width of the label column of `key  value` lines, indentation included.
const LABEL: usize = 33;

/// The JSON document: a header, the probe's value, and every capability
/// name with whether it is met.
#[derive(Serialize)]
struct Document<'a> {
    schema_version: u32,
    generator: Generator<'a>,
    probe_duration_us: u64,
    #[serde(flatten)]
    caps: &'a Capabilities,
    has: Has<'a>,
}

#[derive(Serialize)]
struct Generator<'a> {
    name: &'static str,
    version: &'static str,
    git_revision: &'a str,
    abi_digest: &'a str,
}

/// `{"name": bool, ...}` in [`Capabilities::names`] order.
struct Has<'a>(&'a Capabilities);

impl Serialize for Has<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(
            Capabilities::names()
                .into_iter()
                .map(|(name, _)| (name.clone(), self.0.has(&name).unwrap_or(false))),
        )
    }
}

/// The JSON document, pretty-printed.
pub fn json(
    caps: &Capabilities,
    elapsed: Duration,
    git_revision: &str,
    abi_digest: &str,
) -> Result<String, serde_json::Error> {
    let doc = Document {
        schema_version: SCHEMA_VERSION,
        generator: Generator {
            name: "userfault-probe",
            version: env!("CARGO_PKG_VERSION"),
            git_revision,
            abi_digest,
        },
        probe_duration_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        caps,
        has: Has(caps),
    };
    serde_json::to_string_pretty(&doc)
}

/// Lines of at most [`WIDTH`] columns. A "not probed" reason already
/// printed is shown again as "(as above)", and consecutive fields that would
/// each say only that are printed as one line naming them all.
struct Out(String, Vec<String>, Vec<String>);

/// A field's whole value when its reason was printed before.
const AS_ABOVE: &str = "not probed (as above)";

impl Out {
    fn new() -> Out {
        Out(String::new(), Vec::new(), Vec::new())
    }

    /// Prints the fields held back as "(as above)": one as it is, several
    /// as one line listing their labels.
    fn flush(&mut self) {
        let labels = std::mem::take(&mut self.2);
        match labels.as_slice() {
            [] => {}
            [one] => {
                let first = format!("  {one:<width$}", width = LABEL - 2);
                self.wrapped(&first, LABEL, AS_ABOVE);
            }
            many => {
                let list = many.join(", ");
                self.wrapped(&format!("  {AS_ABOVE}:"), 4, &list);
            }
        }
    }

    /// The finished text.
    fn finish(mut self) -> String {
        self.flush();
        self.0
    }

    fn heading(&mut self, title: &str) {
        self.flush();
        if !self.0.is_empty() {
            self.0.push('\n');
        }
        self.0.push_str(title);
        self.0.push('\n');
    }

    fn raw(&mut self, line: &str) {
        self.flush();
        self.0.push_str(line);
        self.0.push('\n');
    }

    /// `  label  value`, the value wrapped at word boundaries under itself.
    fn field(&mut self, label: &str, value: &str) {
        if self.as_above(value) == AS_ABOVE {
            self.2.push(label.to_string());
            return;
        }
        let first = format!("  {label:<width$}", width = LABEL - 2);
        self.wrapped(&first, LABEL, value);
    }

    /// `text` with a "not probed" reason printed before replaced by
    /// "(as above)"; a new reason is remembered.
    fn as_above(&mut self, text: &str) -> String {
        let Some(at) = text.find(NOT_PROBED) else {
            return text.to_string();
        };
        let why = &text[at + NOT_PROBED.len()..];
        match self.1.iter().find(|seen| why.starts_with(seen.as_str())) {
            Some(seen) => {
                let rest = &why[seen.len()..];
                format!("{}{AS_ABOVE}{rest}", &text[..at])
            }
            None => text.to_string(),
        }
    }

    /// `prefix` then `text`, wrapped to [`WIDTH`] with continuation lines
    /// indented by `indent`.
    fn wrapped(&mut self, prefix: &str, indent: usize, text: &str) {
        self.flush();
        let mut text = text.to_string();
        if let Some(at) = text.find(NOT_PROBED) {
            let why = text[at + NOT_PROBED.len()..].to_string();
            let repeated = self.1.iter().find(|seen| why.starts_with(seen.as_str()));
            match repeated {
                Some(seen) => {
                    let rest = why[seen.len()..].to_string();
                    text = format!("{}not probed (as above){rest}", &text[..at]);
                }
                None => self.1.push(why),
            }
        }
        let mut line = prefix.to_string();
        if !prefix.ends_with(' ') && !prefix.is_empty() && !text.is_empty() {
            line.push(' ');
        }
        let mut at_start = true;
        let mut len = line.chars().count();
        for word in text.split_whitespace() {
            let w = word.chars().count();
            if !at_start && len + 1 + w > WIDTH {
                self.raw(line.trim_end());
                line = " ".repeat(indent);
                len = indent;
                at_start = true;
            }
            if !at_start {
                line.push(' ');
                len += 1;
            }
            // A word longer than a line is cut; JSON has it whole.
            let room = WIDTH.saturating_sub(len).max(1);
            let piece: String = word.chars().take(room).collect();
            len += piece.chars().count();
            line.push_str(&piece);
            at_start = false;
        }
        self.raw(line.trim_end());
    }
}

/// `yes`, `yes: value`, `no, EINVAL: reason`, `not probed: why`.
fn status<T>(s: &Status<T>, value: impl FnOnce(&T) -> String) -> String {
    match s {
        Status::Supported(v) => {
            let v = value(v);
            if v.is_empty() { "yes".to_string() } else { v }
        }
        Status::Unsupported {
            errno: Some(e),
            reason,
        } => format!("no, {}: {reason}", errno_name(*e)),
        Status::Unsupported {
            errno: None,
            reason,
        } => format!("no: {reason}"),
        Status::NotProbed { why } => format!("{NOT_PROBED}{why}"),
    }
}

const NOT_PROBED: &str = "not probed: ";

fn unit(s: &Status) -> String {
    status(s, |_| String::new())
}

fn errno_name(e: userfault::Errno) -> String {
    e.name()
        .map_or_else(|| format!("errno {}", e.raw()), str::to_string)
}

fn mode_label(mode: RegisterMode) -> String {
    let names: Vec<&str> = mode.iter_names().map(|(n, _)| n).collect();
    names.join("|")
}

fn node(n: &NodeInfo) -> String {
    let kind = if n.char_device { 'c' } else { '?' };
    let mut perms = String::new();
    for shift in [6, 3, 0] {
        let bits = (n.mode >> shift) & 7;
        perms.push(if bits & 4 != 0 { 'r' } else { '-' });
        perms.push(if bits & 2 != 0 { 'w' } else { '-' });
        perms.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    let user = n.user.clone().unwrap_or_else(|| n.uid.to_string());
    let group = n.group.clone().unwrap_or_else(|| n.gid.to_string());
    format!("{kind}{perms} {user}:{group} {}:{}", n.major, n.minor)
}

fn device(out: &mut Out, d: &DeviceNode) {
    let node_text = status(&d.node, node);
    out.field(&d.path, &format!("{} [{node_text}]", unit(&d.usable)));
}

fn huge(h: &HugePages) -> String {
    let size = if h.page_size >= 1 << 30 {
        format!("{} GiB", h.page_size >> 30)
    } else {
        format!("{} MiB", h.page_size >> 20)
    };
    format!(
        "{size} pages: {} total, {} free, {} reserved, {} surplus",
        h.total, h.free, h.reserved, h.surplus
    )
}

fn candidate(c: CandidateBit) -> String {
    match c {
        CandidateBit::Refused(e) => format!("refused ({})", errno_name(e)),
        CandidateBit::NotWrite(e) => format!("accepted, pwrite fails ({})", errno_name(e)),
        CandidateBit::Write => "WRITE (pwrite works)".to_string(),
    }
}

fn numbering(n: GmemNumbering) -> &'static str {
    match n {
        GmemNumbering::Mainline => "mainline",
        GmemNumbering::UpstreamWrite => "upstream write() posting",
        GmemNumbering::Firecracker => "Firecracker 6.18 stack",
        GmemNumbering::DirectMapRemoval => "direct-map removal",
        _ => "unknown",
    }
}

fn gmem_flags(bits: u64) -> String {
    let mut names = Vec::new();
    let mut rest = bits;
    for (bit, name) in [
        (userfault::gmem_sys::GUEST_MEMFD_FLAG_MMAP, "MMAP"),
        (
            userfault::gmem_sys::GUEST_MEMFD_FLAG_INIT_SHARED,
            "INIT_SHARED",
        ),
    ] {
        if rest & bit != 0 {
            names.push(name.to_string());
            rest &= !bit;
        }
    }
    for bit in 0..64 {
        if rest & (1 << bit) != 0 {
            names.push(format!("bit {bit}"));
        }
    }
    if names.is_empty() {
        format!("{bits:#x}")
    } else {
        format!("{bits:#x} ({})", names.join(" | "))
    }
}

/// `system 1, VM 0`: a capability's value on `/dev/kvm` and on the VM.
fn cap_values(system: &Status<i32>, vm: &Status<i32>) -> String {
    match (system, vm) {
        (Status::Supported(s), Status::Supported(v)) => format!("system {s}, VM {v}"),
        (Status::Supported(s), Status::NotProbed { .. }) => format!("system {s}"),
        (Status::Supported(s), other) => {
            format!("system {s}, VM {}", status(other, i32::to_string))
        }
        (other, _) => status(other, i32::to_string),
    }
}

/// The bits of a flag set that have names (the sets keep unknown bits, so
/// `all()` is every bit).
fn named_bits<F: bitflags::Flags<Bits = u64>>() -> u64 {
    F::FLAGS
        .iter()
        .filter(|f| f.is_named())
        .fold(0, |acc, f| acc | f.value().bits())
}

/// Names of the set bits of `bits`, unknown ones as `bitN(unknown)`.
fn bit_names(names: Vec<String>, bits: u64, known: u64) -> String {
    let mut names = names;
    let unknown = bits & !known;
    for bit in 0..64 {
        if unknown & (1 << bit) != 0 {
            names.push(format!("bit{bit}(unknown)"));
        }
    }
    names.join(" ")
}

/// The grouped human table.
pub fn table(caps: &Capabilities, elapsed: Duration, version: &str) -> String {
    let mut out = Out::new();
    out.wrapped("userfault-probe", 2, version);

    // Host.
    let h = &caps.host;
    out.heading("HOST");
    out.field(
        "kernel",
        &format!(
            "{} ({}), page size {}",
            h.kernel_release, h.architecture, h.page_size
        ),
    );
    out.field("huge pages", &status(&h.huge_pages, huge));
    let ptrace = match h.cap_sys_ptrace {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    };
    out.field(
        "user",
        &format!("uid {}, euid {}, CAP_SYS_PTRACE {ptrace}", h.uid, h.euid),
    );

    // userfaultfd.
    let u = &caps.userfaultfd;
    out.heading("USERFAULTFD");
    out.field("userfaultfd(2)", &unit(&u.syscall));
    out.field(
        "userfaultfd(2), user-mode-only",
        &unit(&u.syscall_user_mode_only),
    );
    out.field(
        "user-mode-only required",
        if u.user_mode_only_required {
            "yes: only faults raised by user space can be trapped"
        } else {
            "no"
        },
    );
    device(&mut out, &u.device);
    out.field(
        "vm.unprivileged_userfaultfd",
        &status(&u.unprivileged_userfaultfd, u32::to_string),
    );
    let via = match u.probed_with {
        Some(UffdSource::Syscall) => "userfaultfd(2)",
        Some(UffdSource::Device) => "/dev/userfaultfd",
        Some(UffdSource::SyscallUserModeOnly) => "userfaultfd(2), user-mode-only",
        _ => "none",
    };
    out.field(
        "UFFDIO_API",
        &status(&u.api, |api| {
            format!(
                "features {:#x}, ioctls {:#x} (throw-away fd from {via})",
                api.features().bits(),
                api.ioctls().bits()
            )
        }),
    );
    if let Status::Supported(api) = &u.api {
        let f = api.features();
        let names = f.iter_names().map(|(n, _)| n.to_string()).collect();
        let known = named_bits::<userfault::uffd::Features>();
        out.field("features", &bit_names(names, f.bits(), known));
        let i = api.ioctls();
        let names = i.iter_names().map(|(n, _)| n.to_string()).collect();
        out.field(
            "ioctls",
            &bit_names(names, i.bits(), named_bits::<Ioctls>()),
        );
    }

    // Registration matrix.
    out.heading("UFFDIO_REGISTER  ioctl mask per memory type and mode, or the errno");
    let widths = [10, 10, 10, 15, 18, 6];
    let mut header = format!("  {:<16}", "memory");
    for (mode, w) in REGISTER_MODES.iter().zip(widths) {
        let _ = write!(header, "{:<w$}", mode_label(*mode));
    }
    out.raw(header.trim_end());
    let mut notes = Vec::new();
    for row in &caps.memory {
        let mut line = format!("  {:<16}", row.kind.label());
        for (m, w) in row.modes.iter().zip(widths) {
            let cell = match &m.ioctls {
                Status::Supported(mask) => format!("{:#x}", mask.bits()),
                Status::Unsupported { errno: Some(e), .. } => errno_name(*e),
                Status::Unsupported { errno: None, .. } => "no".to_string(),
                Status::NotProbed { .. } => "-".to_string(),
            };
            let _ = write!(line, "{cell:<w$}");
        }
        out.raw(line.trim_end());
        if let Some(first) = row.modes.iter().find_map(|m| match &m.ioctls {
            Status::NotProbed { why } => Some(why.clone()),
            _ => None,
        }) {
            notes.push(format!("{}: not probed: {first}", row.kind.label()));
        }
    }
    let mut legend: Vec<String> = Ioctls::all()
        .iter_names()
        .filter(|(_, f)| {
            !f.intersects(Ioctls::REGISTER | Ioctls::UNREGISTER | Ioctls::SET_MODE | Ioctls::API)
        })
        .map(|(n, f)| format!("{n}={:#x}", f.bits()))
        .collect();
    let seen = caps
        .memory
        .iter()
        .flat_map(|row| &row.modes)
        .filter_map(|m| m.ioctls.supported().map(|i| i.bits()))
        .fold(0, |acc, bits| acc | bits);
    let unknown = seen & !named_bits::<Ioctls>();
    for bit in 0..64 {
        if unknown & (1 << bit) != 0 {
            legend.push(format!("bit{bit}(unknown)={:#x}", 1u64 << bit));
        }
    }
    out.wrapped("  mask bits:", 13, &legend.join(" "));
    for note in notes {
        out.wrapped("  -", 4, &note);
    }
    let g = &caps.guest_memfd_uffd;
    out.field("guest_memfd UFFDIO_COPY", &unit(&g.copy));
    let class = if !g.class.is_supported() && g.class.reason() == g.copy.reason() {
        match g.copy {
            // The class was not worked out for the reason COPY was not
            // tried: say so the same way, so that the two lines fold.
            Status::NotProbed { ref why } => format!("{NOT_PROBED}{why}"),
            _ => "no (as above)".to_string(),
        }
    } else {
        status(&g.class, |c| {
            match c {
                RangeClass::CopyCapable => "copy-capable (UFFDIO_COPY works)",
                RangeClass::ContinueOnly => "CONTINUE-only (write() then UFFDIO_CONTINUE)",
                _ => "neither COPY nor CONTINUE",
            }
            .to_string()
        })
    };
    out.field("guest_memfd range class", &class);

    // KVM.
    let k = &caps.kvm;
    out.heading("KVM");
    device(&mut out, &k.device);
    out.field(
        "KVM_GET_API_VERSION",
        &status(&k.api_version, i32::to_string),
    );
    let not_probed = |v: &Status<i32>| matches!(v, Status::NotProbed { .. });
    if let Some(first) = k
        .capabilities
        .first()
        .filter(|_| k.capabilities.iter().all(|c| not_probed(&c.value)))
    {
        out.field(
            "KVM_CHECK_EXTENSION on /dev/kvm",
            &status(&first.value, i32::to_string),
        );
    } else {
        out.raw("  KVM_CHECK_EXTENSION on /dev/kvm, and on a default-type VM:");
    }
    for KvmCap {
        number,
        name,
        value,
        vm_value,
        ..
    } in &k.capabilities
    {
        if not_probed(value) && k.capabilities.iter().all(|c| not_probed(&c.value)) {
            continue;
        }
        let label = format!("    {number} {name:<40}");
        out.wrapped(&label, 8, &cap_values(value, vm_value));
    }
    let colliding_unprobed = k.colliding.iter().all(|c| not_probed(&c.value));
    if let Some(first) = k.colliding.first().filter(|_| colliding_unprobed) {
        out.field(
            "colliding capability numbers",
            &status(&first.value, i32::to_string),
        );
    } else {
        out.raw(
            "  colliding numbers: raw values under their mainline names, not read as KVM userfault",
        );
    }
    for CollidingCap {
        number,
        mainline_name,
        out_of_tree,
        value,
        vm_value,
        ..
    } in &k.colliding
    {
        if colliding_unprobed {
            break;
        }
        let label = format!("    {number} {mainline_name:<40}");
        let text = format!("{}  (was {out_of_tree})", cap_values(value, vm_value));
        out.wrapped(&label, 8, &text);
    }
    out.field("KVM_CREATE_VM", &unit(&k.vm));
    out.field("KVM_CREATE_GUEST_MEMFD", &unit(&k.guest_memfd));
    out.field(
        "KVM_CAP_GUEST_MEMFD_FLAGS (VM)",
        &status(&k.guest_memfd_flags, |b| gmem_flags(*b)),
    );
    out.field("guest_memfd as a memslot", &unit(&k.guest_memfd_slot));
    out.field("MMAP|INIT_SHARED + mmap", &unit(&k.guest_memfd_mmap));
    out.field(
        "out-of-tree flavour",
        &status(&k.flavour, |f| {
            format!(
                "{}: bit 2 {}, bit 3 {}",
                numbering(f.numbering),
                candidate(f.bit2),
                candidate(f.bit3)
            )
        }),
    );
    out.field(
        "guest_memfd write()",
        &status(&k.guest_memfd_write, |b| format!("yes: flag {b:#x}")),
    );
    out.field(
        "NO_DIRECT_MAP",
        &status(&k.no_direct_map, |b| format!("yes: flag {b:#x}")),
    );
    out.field("KVM_MEM_USERFAULT", &unit(&k.userfault));

    out.raw("");
    out.raw(&format!(
        "probed in {:.1} ms; userfault-probe --json for every detail",
        elapsed.as_secs_f64() * 1e3
    ));
    out.finish()
}

/// The `--require` verdict: `Ok` lines when every capability is met,
/// `Err` lines naming the unmet ones with why.
pub fn verdict(caps: &Capabilities, required: &[String]) -> Result<String, String> {
    let unmet: Vec<&String> = required
        .iter()
        .filter(|name| caps.has(name) != Some(true))
        .collect();
    if unmet.is_empty() {
        let mut text = String::new();
        let _ = write!(text, "met: {}", required.join(", "));
        return Ok(text);
    }
    let mut text = String::new();
    let names: Vec<&str> = unmet.iter().map(|s| s.as_str()).collect();
    let _ = writeln!(text, "unmet: {}", names.join(", "));
    for name in unmet {
        let why = caps.explain(name).unwrap_or_default();
        let mut out = Out::new();
        out.wrapped(&format!("  {name}:"), 4, &why);
        text.push_str(&out.finish());
    }
    Err(text.trim_end().to_string())
}

/// Column where `--list-capabilities` starts the meanings.
const LIST_COLUMN: usize = 28;

/// `--list-capabilities`: each name, then its meaning from
/// [`LIST_COLUMN`], continuation lines under the meaning.
pub fn list() -> String {
    let mut out = Out::new();
    for (name, meaning) in Capabilities::names() {
        // A name too long for its column gets one space before the meaning.
        let label = format!("{name:<width$} ", width = LIST_COLUMN - 1);
        out.wrapped(&label, LIST_COLUMN, &meaning);
    }
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_bits_are_named_as_such() {
        let ioctls = named_bits::<Ioctls>();
        // A bit no kernel uses yet (Linux 7.3's fd ioctl bit 10 shows the
        // same way until it has a name here).
        let bits = Ioctls::API.bits() | 1 << 50;
        let names = vec!["API".to_string()];
        assert_eq!(bit_names(names, bits, ioctls), "API bit50(unknown)");
        let features = named_bits::<userfault::uffd::Features>();
        assert_eq!(features & (1 << 40), 0);
        assert_eq!(bit_names(Vec::new(), 1 << 40, features), "bit40(unknown)");
    }
}
