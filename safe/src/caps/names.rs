//! The capability names of [`Capabilities::has`] and what each one means.

use super::{Capabilities, KVM_CAPABILITIES, MemoryKind, RangeClass, Status};
use crate::uffd::{Features, RegisterMode};

/// The fixed names, in listing order, with their meaning. Per-memory-type
/// names, `feature:` and `kvm-cap:` names are added by [`all`].
const FIXED: &[(&str, &str)] = &[
    (
        "uffd",
        "a userfaultfd that also traps faults raised inside the kernel can be created",
    ),
    (
        "uffd-syscall",
        "userfaultfd(2) without UFFD_USER_MODE_ONLY works",
    ),
    (
        "uffd-user-mode-only",
        "userfaultfd(2) with UFFD_USER_MODE_ONLY works",
    ),
    (
        "uffd-dev",
        "/dev/userfaultfd opens and USERFAULTFD_IOC_NEW gives a userfaultfd",
    ),
    ("uffd-unprivileged", "vm.unprivileged_userfaultfd is 1"),
    (
        "hugetlb",
        "a hugetlb memfd of the default huge page size can be mapped",
    ),
    ("kvm", "/dev/kvm opens and KVM_CREATE_VM works"),
    (
        "gmem",
        "KVM_CREATE_GUEST_MEMFD works (creating one, not using it)",
    ),
    (
        "gmem-slot",
        "a guest_memfd is accepted as a memslot of a default-type VM",
    ),
    (
        "gmem-mmap",
        "a MMAP|INIT_SHARED guest_memfd can be created and mapped",
    ),
    (
        "gmem-uffd",
        "a guest_memfd mapping registers MISSING|MINOR with userfaultfd",
    ),
    (
        "gmem-uffd-copy",
        "UFFDIO_COPY of one page into a guest_memfd range works",
    ),
    (
        "gmem-continue-only",
        "a guest_memfd range registered MISSING|MINOR is CONTINUE-only",
    ),
    (
        "gmem-write",
        "guest_memfd write() works (flag bit found by trying)",
    ),
    (
        "gmem-no-direct-map",
        "GUEST_MEMFD_FLAG_NO_DIRECT_MAP is accepted",
    ),
    (
        "kvm-userfault",
        "KVM_MEM_USERFAULT is accepted on a scratch memslot",
    ),
];

/// The single register modes with capability names.
const MODES: [(&str, RegisterMode); 4] = [
    ("missing", RegisterMode::MISSING),
    ("wp", RegisterMode::WP),
    ("minor", RegisterMode::MINOR),
    ("rwp", RegisterMode::RWP),
];

/// Every name with its meaning.
pub(super) fn all() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = FIXED
        .iter()
        .map(|(n, m)| (n.to_string(), m.to_string()))
        .collect();
    for kind in MemoryKind::ALL {
        for (suffix, mode) in MODES {
            out.push((
                format!("{}-{suffix}", kind.capability_prefix()),
                format!(
                    "UFFDIO_REGISTER {mode_name} of {}",
                    kind.label(),
                    mode_name = names_of(mode)
                ),
            ));
        }
    }
    for (name, _) in Features::all().iter_names() {
        out.push((
            format!("feature:{name}"),
            format!("UFFDIO_API offers UFFD_FEATURE_{name}"),
        ));
    }
    for (_, name) in KVM_CAPABILITIES {
        let short = name.trim_start_matches("KVM_CAP_");
        out.push((
            format!("kvm-cap:{short}"),
            format!("KVM_CHECK_EXTENSION({name}) is positive on a default-type VM"),
        ));
    }
    out
}

fn names_of(mode: RegisterMode) -> String {
    let names: Vec<&str> = mode.iter_names().map(|(n, _)| n).collect();
    names.join("|")
}

/// Met or not, and why.
fn from_status<T>(status: &Status<T>, what: &str) -> (bool, String) {
    match status {
        Status::Supported(_) => (true, format!("{what}: yes")),
        Status::Unsupported {
            errno: Some(e),
            reason,
        } => (false, format!("{what}: no, {e}: {reason}")),
        Status::Unsupported {
            errno: None,
            reason,
        } => (false, format!("{what}: no: {reason}")),
        Status::NotProbed { why } => (false, format!("{what}: not probed: {why}")),
    }
}

impl Capabilities {
    pub(super) fn lookup(&self, name: &str) -> Option<(bool, String)> {
        let uffd = &self.userfaultfd;
        let kvm = &self.kvm;
        let found = match name {
            "uffd" => {
                let full = uffd.syscall.is_supported() || uffd.device.usable.is_supported();
                let why = if full {
                    "a userfaultfd trapping kernel faults can be created".to_string()
                } else {
                    format!(
                        "neither works: {}; {}",
                        from_status(&uffd.syscall, "userfaultfd(2)").1,
                        from_status(&uffd.device.usable, &uffd.device.path).1
                    )
                };
                (full, why)
            }
            "uffd-syscall" => from_status(&uffd.syscall, "userfaultfd(2)"),
            "uffd-user-mode-only" => from_status(
                &uffd.syscall_user_mode_only,
                "userfaultfd(2) with UFFD_USER_MODE_ONLY",
            ),
            "uffd-dev" => from_status(&uffd.device.usable, &uffd.device.path),
            "uffd-unprivileged" => match &uffd.unprivileged_userfaultfd {
                Status::Supported(v) => (*v == 1, format!("vm.unprivileged_userfaultfd is {v}")),
                other => from_status(other, "vm.unprivileged_userfaultfd"),
            },
            "hugetlb" => match self.memory(MemoryKind::HugetlbMemfd) {
                Some(row) => from_status(&row.setup, "hugetlb memfd mapping"),
                None => return None,
            },
            "kvm" => {
                if kvm.device.usable.is_supported() {
                    from_status(&kvm.vm, "KVM_CREATE_VM")
                } else {
                    from_status(&kvm.device.usable, &kvm.device.path)
                }
            }
            "gmem" => from_status(&kvm.guest_memfd, "KVM_CREATE_GUEST_MEMFD"),
            "gmem-slot" => from_status(&kvm.guest_memfd_slot, "guest_memfd memslot"),
            "gmem-mmap" => from_status(&kvm.guest_memfd_mmap, "MMAP|INIT_SHARED guest_memfd"),
            "gmem-uffd" => match self
                .memory(MemoryKind::GuestMemfd)
                .and_then(|r| r.mask(RegisterMode::MISSING | RegisterMode::MINOR))
            {
                Some(s) => from_status(s, "UFFDIO_REGISTER MISSING|MINOR of guest_memfd"),
                None => return None,
            },
            "gmem-uffd-copy" => {
                from_status(&self.guest_memfd_uffd.copy, "UFFDIO_COPY on guest_memfd")
            }
            "gmem-continue-only" => match &self.guest_memfd_uffd.class {
                Status::Supported(class) => (
                    *class == RangeClass::ContinueOnly,
                    format!(
                        "a guest_memfd range registered MISSING|MINOR is {}",
                        match class {
                            RangeClass::CopyCapable => "copy-capable: UFFDIO_COPY works on it",
                            RangeClass::ContinueOnly => "CONTINUE-only",
                            _ => "served by neither UFFDIO_COPY nor UFFDIO_CONTINUE",
                        }
                    ),
                ),
                other => from_status(other, "guest_memfd range class"),
            },
            "gmem-write" => from_status(&kvm.guest_memfd_write, "guest_memfd write()"),
            "gmem-no-direct-map" => from_status(&kvm.no_direct_map, "NO_DIRECT_MAP"),
            "kvm-userfault" => from_status(&kvm.userfault, "KVM_MEM_USERFAULT"),
            _ => return self.lookup_pattern(name),
        };
        Some(found)
    }

    fn lookup_pattern(&self, name: &str) -> Option<(bool, String)> {
        if let Some(feature) = name.strip_prefix("feature:") {
            let bit = Features::from_name(feature)?;
            return Some(match &self.userfaultfd.api {
                Status::Supported(api) => {
                    let met = api.features().contains(bit);
                    let word = api.features().bits();
                    (
                        met,
                        format!(
                            "UFFD_FEATURE_{feature} is {} the kernel's feature word {word:#x}",
                            if met { "in" } else { "not in" }
                        ),
                    )
                }
                other => from_status(other, "UFFDIO_API"),
            });
        }
        if let Some(cap) = name.strip_prefix("kvm-cap:") {
            let full = format!("KVM_CAP_{cap}");
            let entry = self.kvm.capabilities.iter().find(|c| c.name == full)?;
            let system = match &entry.value {
                Status::Supported(v) => format!("{v} on /dev/kvm"),
                other => from_status(other, "on /dev/kvm").1,
            };
            return Some(match (&entry.vm_value, &entry.value) {
                (Status::Supported(v), _) => (
                    *v > 0,
                    format!("KVM_CHECK_EXTENSION({full}) = {v} on a default-type VM ({system})"),
                ),
                (_, Status::Supported(v)) => (
                    *v > 0,
                    format!("KVM_CHECK_EXTENSION({full}) = {v} on /dev/kvm (no VM to ask)"),
                ),
                (other, _) => from_status(other, &full),
            });
        }
        for kind in MemoryKind::ALL {
            let Some(suffix) = name
                .strip_prefix(kind.capability_prefix())
                .and_then(|rest| rest.strip_prefix('-'))
            else {
                continue;
            };
            let Some((_, mode)) = MODES.iter().find(|(s, _)| *s == suffix) else {
                continue;
            };
            let status = self.memory(kind)?.mask(*mode)?;
            return Some(from_status(
                status,
                &format!("UFFDIO_REGISTER {} of {}", names_of(*mode), kind.label()),
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_shaped() {
        let names = all();
        let mut seen = std::collections::HashSet::new();
        for (name, meaning) in &names {
            assert!(seen.insert(name.clone()), "duplicate {name}");
            assert!(!meaning.is_empty());
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-:_".contains(c)),
                "{name}"
            );
        }
        for expected in [
            "uffd",
            "uffd-dev",
            "feature:MINOR_SHMEM",
            "shmem-minor",
            "hugetlb-minor",
            "anon-wp",
            "anon-rwp",
            "hugetlb-rwp",
            "feature:RWP",
            "feature:RWP_ASYNC",
            "anon-shared-missing",
            "gmem-missing",
            "kvm-cap:GUEST_MEMFD_FLAGS",
            "gmem-write",
            "kvm-userfault",
        ] {
            assert!(seen.contains(expected), "{expected} missing");
        }
    }
}
