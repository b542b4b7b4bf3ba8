//! The probes behind [`Capabilities::probe`].

use std::ffi::CStr;
use std::os::fd::AsFd;

use super::{
    COLLIDING_CAPABILITIES, Capabilities, CollidingCap, DeviceNode, Flavour, GmemUffd, Host,
    HugePages, KVM_CAPABILITIES, KvmCap, KvmCaps, MemoryKind, MemoryRow, ModeMask, NodeInfo,
    REGISTER_MODES, RangeClass, Status, UffdSource, UserfaultfdCaps, reason_of,
};
use crate::backing::{HugePageSize, Memfd};
use crate::error::rustix_errno;
use crate::error::{Errno, Result};
use crate::kvm::{GmemFlags, GmemFlavour, GuestMemfd, Kvm, Memslot, Vm, probe_userfault};
use crate::mem::{Mapping, Sharing};
use crate::uffd::{CopyMode, DEVICE_PATH, Features, Ioctls, OpenMethod, RegisterMode, Uffd};

const KVM_PATH: &str = "/dev/kvm";

pub(super) fn probe() -> Result<Capabilities> {
    let page = crate::sys::page_size();
    // The one thing every row needs; if even this fails, probing cannot run.
    drop(Mapping::anonymous(page, Sharing::Private)?);

    let host = host(page);
    let (userfaultfd, uffd, rwp_uffd) = userfaultfd();
    let kvm_probe = kvm(page);
    let uffd = uffd.ok_or_else(|| {
        format!(
            "no userfaultfd could be created ({})",
            userfaultfd
                .syscall_user_mode_only
                .reason()
                .unwrap_or("unknown")
        )
    });

    let mut memory = Vec::with_capacity(MemoryKind::ALL.len());
    for kind in MemoryKind::ALL {
        let scratch = match kind {
            MemoryKind::GuestMemfd => match &kvm_probe.gmem {
                Ok((_, view)) => Ok(Scratch::Borrowed(view)),
                Err(status) => Err(status.clone()),
            },
            _ => scratch(kind, page, &host.huge_pages),
        };
        let row = match (&uffd, scratch) {
            (Ok(uffd), Ok(scratch)) => MemoryRow {
                kind,
                setup: Status::Supported(()),
                modes: register_modes(uffd, &rwp_uffd, kind, scratch.mapping()),
            },
            (Err(why), Ok(_)) => not_probed_row(kind, Status::Supported(()), why),
            (_, Err(setup)) => {
                let why = format!(
                    "no {} mapping: {}",
                    kind.label(),
                    setup.reason().unwrap_or("unknown")
                );
                not_probed_row(kind, setup, &why)
            }
        };
        memory.push(row);
    }

    let guest_memfd_uffd = match (&uffd, &kvm_probe.gmem) {
        (Ok(uffd), Ok((_, view))) => gmem_uffd(uffd, view),
        (Err(why), _) => GmemUffd {
            copy: Status::not_probed(why.clone()),
            class: Status::not_probed(why.clone()),
        },
        (_, Err(status)) => {
            let why = format!(
                "no guest_memfd mapping: {}",
                status.reason().unwrap_or("unknown")
            );
            GmemUffd {
                copy: Status::not_probed(why.clone()),
                class: Status::not_probed(why),
            }
        }
    };

    Ok(Capabilities {
        host,
        userfaultfd,
        memory,
        guest_memfd_uffd,
        kvm: kvm_probe.caps,
    })
}

fn not_probed_row(kind: MemoryKind, setup: Status, why: &str) -> MemoryRow {
    MemoryRow {
        kind,
        setup,
        modes: REGISTER_MODES
            .iter()
            .map(|&mode| ModeMask {
                mode,
                ioctls: Status::not_probed(why),
            })
            .collect(),
    }
}

// ---------------------------------------------------------------- host

fn host(page: usize) -> Host {
    let uname = rustix::system::uname();
    let text = |s: &CStr| s.to_string_lossy().into_owned();
    Host {
        kernel_release: text(uname.release()),
        kernel_version: text(uname.version()),
        architecture: text(uname.machine()),
        page_size: page,
        huge_pages: huge_pages(),
        uid: rustix::process::getuid().as_raw(),
        euid: rustix::process::geteuid().as_raw(),
        cap_sys_ptrace: crate::uffd::has_cap_sys_ptrace(),
    }
}

fn huge_pages() -> Status<HugePages> {
    match std::fs::read_to_string("/proc/meminfo") {
        Ok(text) => parse_meminfo(&text),
        Err(e) => Status::unsupported(Errno::from_io(&e), "/proc/meminfo could not be read"),
    }
}

/// The huge page fields of `/proc/meminfo` text.
pub(super) fn parse_meminfo(meminfo: &str) -> Status<HugePages> {
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find_map(|l| l.strip_prefix(name))?;
        let rest = line.strip_prefix(':')?.trim();
        let number = rest.split_whitespace().next()?.parse::<u64>().ok()?;
        if rest.ends_with("kB") {
            number.checked_mul(1024)
        } else {
            Some(number)
        }
    };
    match (
        field("Hugepagesize"),
        field("HugePages_Total"),
        field("HugePages_Free"),
        field("HugePages_Rsvd"),
        field("HugePages_Surp"),
    ) {
        (Some(page_size), Some(total), Some(free), Some(reserved), Some(surplus)) => {
            Status::Supported(HugePages {
                page_size,
                total,
                free,
                reserved,
                surplus,
            })
        }
        _ => Status::unsupported(
            None,
            "/proc/meminfo has no huge page fields: a kernel without hugetlbfs",
        ),
    }
}

/// `stat(2)` of a device node, with owner names from `/etc/passwd` and
/// `/etc/group`.
fn node_info(path: &str) -> Status<NodeInfo> {
    match rustix::fs::stat(path) {
        Ok(st) => {
            let file_type = rustix::fs::FileType::from_raw_mode(st.st_mode);
            Status::Supported(NodeInfo {
                mode: st.st_mode & 0o7777,
                char_device: file_type == rustix::fs::FileType::CharacterDevice,
                uid: st.st_uid,
                user: name_of("/etc/passwd", st.st_uid),
                gid: st.st_gid,
                group: name_of("/etc/group", st.st_gid),
                major: rustix::fs::major(st.st_rdev),
                minor: rustix::fs::minor(st.st_rdev),
            })
        }
        Err(e) => {
            let errno = rustix_errno(e);
            let reason = if errno == Errno::ENOENT {
                format!("{path} does not exist")
            } else {
                format!("stat {path} failed")
            };
            Status::unsupported(Some(errno), reason)
        }
    }
}

/// The name of `id` in a `name:x:id:…` database file.
fn name_of(db: &str, id: u32) -> Option<String> {
    parse_name(&std::fs::read_to_string(db).ok()?, id)
}

/// The name of `id` in the text of a `name:x:id:…` database.
pub(super) fn parse_name(text: &str, id: u32) -> Option<String> {
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id_field = fields.nth(1)?;
        (id_field.parse::<u32>().ok()? == id).then(|| name.to_string())
    })
}

/// The value of a one-number sysctl file's text.
pub(super) fn parse_sysctl_u32(path: &str, text: &str) -> Status<u32> {
    match text.trim().parse() {
        Ok(v) => Status::Supported(v),
        Err(_) => Status::unsupported(None, format!("{path} holds {:?}", text.trim())),
    }
}

// ---------------------------------------------------------------- userfaultfd

/// The userfaultfd section, a userfaultfd (no features) for the
/// registrations — the first of system call, device, user-mode-only system
/// call that works — and one made the same way with `UFFD_FEATURE_RWP` for
/// the RWP registrations, or why there is none.
fn userfaultfd() -> (
    UserfaultfdCaps,
    Option<Uffd>,
    std::result::Result<Uffd, String>,
) {
    let syscall = Uffd::builder().open_method(OpenMethod::Syscall);
    let device = Uffd::builder().open_method(OpenMethod::Device);
    let umo = Uffd::builder()
        .open_method(OpenMethod::Syscall)
        .user_mode_only(true);

    let syscall_api = syscall.query();
    let device_api = device.query();
    let umo_api = umo.query();

    let user_mode_only_required = matches!(
        (&syscall_api, &umo_api),
        (Err(e), Ok(_)) if e.errno() == Some(Errno::EPERM)
    );

    let (api, probed_with, builder) = match (&syscall_api, &device_api, &umo_api) {
        (Ok(a), _, _) => (
            Status::Supported(*a),
            Some(UffdSource::Syscall),
            Some(syscall),
        ),
        (_, Ok(a), _) => (
            Status::Supported(*a),
            Some(UffdSource::Device),
            Some(device),
        ),
        (_, _, Ok(a)) => (
            Status::Supported(*a),
            Some(UffdSource::SyscallUserModeOnly),
            Some(umo),
        ),
        (Err(_), Err(_), Err(e)) => (Status::unsupported(e.errno(), reason_of(e)), None, None),
    };
    let rwp_uffd = match (&api, &builder) {
        (Status::Supported(a), Some(b)) if a.features().contains(Features::RWP) => b
            .clone()
            .require_features(Features::RWP)
            .create()
            .map_err(|e| format!("a userfaultfd with UFFD_FEATURE_RWP: {e}")),
        (Status::Supported(a), _) => Err(format!(
            "the kernel does not offer UFFD_FEATURE_RWP (features {:#x}; RWP needs Linux 7.3)",
            a.features().bits()
        )),
        _ => Err("no userfaultfd".to_string()),
    };
    let uffd = builder.and_then(|b| b.create().ok());
    let probed_with = if uffd.is_some() { probed_with } else { None };

    let caps = UserfaultfdCaps {
        syscall: Status::from_result(syscall_api.map(|_| ())),
        syscall_user_mode_only: Status::from_result(umo_api.map(|_| ())),
        user_mode_only_required,
        device: DeviceNode {
            path: DEVICE_PATH.to_string(),
            node: node_info(DEVICE_PATH),
            usable: Status::from_result(device_api.map(|_| ())),
        },
        unprivileged_userfaultfd: sysctl_u32("/proc/sys/vm/unprivileged_userfaultfd"),
        api,
        probed_with,
    };
    (caps, uffd, rwp_uffd)
}

fn sysctl_u32(path: &str) -> Status<u32> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_sysctl_u32(path, &text),
        Err(e) => {
            let errno = Errno::from_io(&e);
            let reason = if errno == Some(Errno::ENOENT) {
                format!("{path} does not exist (Linux 5.2+ with userfaultfd)")
            } else {
                format!("{path} could not be read")
            };
            Status::unsupported(errno, reason)
        }
    }
}

// ---------------------------------------------------------------- registrations

/// Scratch memory of one memory type: a mapping the probe owns (with the
/// file behind it, dropped after the mapping), or the guest_memfd view.
enum Scratch<'a> {
    Owned { map: Mapping, _file: Option<Memfd> },
    Borrowed(&'a Mapping),
}

impl Scratch<'_> {
    fn mapping(&self) -> &Mapping {
        match self {
            Scratch::Owned { map, .. } => map,
            Scratch::Borrowed(map) => map,
        }
    }
}

fn scratch(
    kind: MemoryKind,
    page: usize,
    huge: &Status<HugePages>,
) -> Result<Scratch<'static>, Status> {
    let owned = |map: Result<Mapping>, file: Option<Memfd>| match map {
        Ok(map) => Ok(Scratch::Owned { map, _file: file }),
        Err(e) => Err(Status::from_result(Err(e))),
    };
    match kind {
        MemoryKind::AnonPrivate => owned(Mapping::anonymous(page, Sharing::Private), None),
        MemoryKind::AnonShared => owned(Mapping::anonymous(page, Sharing::Shared), None),
        MemoryKind::MemfdShmem => {
            let file = Memfd::shmem(c"userfault-caps-shmem", page as u64)
                .map_err(|e| Status::from_result(Err(e)))?;
            let map = Mapping::file(file.as_fd(), 0, page, Sharing::Shared);
            owned(map, Some(file))
        }
        MemoryKind::HugetlbMemfd => {
            let pool = match huge {
                Status::Supported(pool) => *pool,
                other => {
                    return Err(Status::not_probed(
                        other.reason().unwrap_or("no huge page information"),
                    ));
                }
            };
            let size = match pool.page_size {
                s if s == HugePageSize::Size2M.bytes() as u64 => HugePageSize::Size2M,
                s if s == HugePageSize::Size1G.bytes() as u64 => HugePageSize::Size1G,
                s => {
                    return Err(Status::not_probed(format!(
                        "the default huge page size {s} bytes is neither 2 MiB nor 1 GiB"
                    )));
                }
            };
            if pool.total == 0 && pool.surplus == 0 {
                return Err(Status::not_probed(
                    "no huge pages are reserved (vm.nr_hugepages is 0)",
                ));
            }
            if pool.available() == 0 {
                return Err(Status::not_probed(format!(
                    "none of the {} huge pages is free and unreserved",
                    pool.total
                )));
            }
            let len = size.bytes();
            let file = Memfd::hugetlb(c"userfault-caps-hugetlb", len as u64, size)
                .map_err(|e| Status::from_result(Err(e)))?;
            let map = Mapping::file(file.as_fd(), 0, len, Sharing::Shared);
            owned(map, Some(file))
        }
        MemoryKind::GuestMemfd => Err(Status::not_probed("guest_memfd needs a VM")),
    }
}

/// `UFFDIO_REGISTER` of `map` in each mode, unregistering
/// after each.
fn register_modes(
    uffd: &Uffd,
    rwp_uffd: &std::result::Result<Uffd, String>,
    kind: MemoryKind,
    map: &Mapping,
) -> Vec<ModeMask> {
    REGISTER_MODES
        .iter()
        .map(|&mode| {
            // RWP registers only on a userfaultfd that enabled the feature.
            let uffd = match (mode.contains(RegisterMode::RWP), rwp_uffd) {
                (false, _) => uffd,
                (true, Ok(rwp)) => rwp,
                (true, Err(why)) => {
                    return ModeMask {
                        mode,
                        ioctls: Status::unsupported(None, why.clone()),
                    };
                }
            };
            // SAFETY: the range is a scratch mapping owned by the probe: no
            // Rust reference points into it and nothing accesses it while
            // it is registered; it is unregistered right below.
            let ioctls = match unsafe { uffd.register(map.addr(), map.len(), mode) } {
                Ok(reg) => {
                    let _ = uffd.unregister(&reg);
                    Status::Supported(reg.ioctls())
                }
                Err(e) => Status::unsupported(e.errno(), register_reason(kind, mode, e.errno())),
            };
            ModeMask { mode, ioctls }
        })
        .collect()
}

fn register_reason(kind: MemoryKind, mode: RegisterMode, errno: Option<Errno>) -> String {
    let names: Vec<&str> = mode.iter_names().map(|(name, _)| name).collect();
    let what = format!("UFFDIO_REGISTER {} of {}", names.join("|"), kind.label());
    let why = match (kind, errno) {
        (MemoryKind::AnonPrivate, Some(Errno::EINVAL)) if mode.contains(RegisterMode::MINOR) => {
            "private anonymous memory has no page cache, so it has no MINOR faults"
        }
        (MemoryKind::GuestMemfd, Some(Errno::EINVAL)) if mode.contains(RegisterMode::RWP) => {
            "read-write protection covers anonymous, shmem and hugetlbfs memory, not guest_memfd"
        }
        (MemoryKind::GuestMemfd, Some(Errno::EINVAL)) => {
            "this kernel has no userfaultfd support for guest_memfd (posted series \
             \"mm, kvm: allow uffd support in guest_memfd\")"
        }
        (_, Some(Errno::EINVAL)) if mode.contains(RegisterMode::WP) => {
            "this memory type does not support write-protect faults"
        }
        (_, Some(Errno::EINVAL)) if mode.contains(RegisterMode::MINOR) => {
            "this memory type does not support MINOR faults"
        }
        (_, Some(Errno::EINVAL)) if mode.contains(RegisterMode::RWP) => {
            "this memory type does not support read-write protection (RWP: anonymous, shmem \
             and hugetlbfs memory)"
        }
        (_, Some(Errno::EINVAL)) => "the memory type does not support this mode",
        (_, Some(Errno::EPERM)) => "the mapping lacks VM_MAYWRITE",
        _ => "refused",
    };
    format!("{what}: {why}")
}

/// `UFFDIO_COPY` of one page into the guest_memfd mapping registered
/// MISSING|MINOR, and the range's class.
fn gmem_uffd(uffd: &Uffd, view: &Mapping) -> GmemUffd {
    let mode = RegisterMode::MISSING | RegisterMode::MINOR;
    // SAFETY: `view` is the probe's scratch guest_memfd mapping: no Rust
    // reference points into it and nothing but the UFFDIO_COPY below touches
    // it while it is registered; it is unregistered before returning.
    let reg = match unsafe { uffd.register(view.addr(), view.len(), mode) } {
        Ok(reg) => reg,
        Err(e) => {
            let reason = register_reason(MemoryKind::GuestMemfd, mode, e.errno());
            let status = Status::unsupported(e.errno(), reason);
            return GmemUffd {
                copy: status.clone(),
                class: status.map(|()| RangeClass::Neither),
            };
        }
    };
    let mask = reg.ioctls();
    let copy = if !mask.contains(Ioctls::COPY) {
        Status::unsupported(
            None,
            format!(
                "the range's ioctl mask {} does not offer UFFDIO_COPY",
                crate::uffd::flag_names(mask)
            ),
        )
    } else {
        let page = vec![0u8; view.len()];
        match uffd.copy(&reg, view.addr(), &page, CopyMode::DONTWAKE) {
            Ok(_) => Status::Supported(()),
            Err(e) => Status::unsupported(
                e.errno(),
                format!(
                    "UFFDIO_COPY into a guest_memfd range failed although its mask offers it: \
                     {}",
                    reason_of(&e)
                ),
            ),
        }
    };
    let _ = uffd.unregister(&reg);
    let class = if copy.is_supported() {
        RangeClass::CopyCapable
    } else if mask.contains(Ioctls::CONTINUE) {
        RangeClass::ContinueOnly
    } else {
        RangeClass::Neither
    };
    GmemUffd {
        copy,
        class: Status::Supported(class),
    }
}

// ---------------------------------------------------------------- KVM

struct KvmProbe {
    caps: KvmCaps,
    /// The scratch VM's `MMAP | INIT_SHARED` guest_memfd and its mapping,
    /// or why there is none.
    gmem: Result<(GuestMemfd, Mapping), Status>,
}

fn kvm(page: usize) -> KvmProbe {
    let opened = Kvm::open();
    let device = DeviceNode {
        path: KVM_PATH.to_string(),
        node: node_info(KVM_PATH),
        usable: match &opened {
            Ok(_) => Status::Supported(()),
            Err(e) => Status::unsupported(e.errno(), reason_of(e)),
        },
    };
    let kvm = match opened {
        Ok(kvm) => kvm,
        Err(_) => {
            let why = format!(
                "{KVM_PATH} could not be opened: {}",
                device.usable.reason().unwrap_or("unknown")
            );
            return KvmProbe {
                caps: kvm_not_probed(device, &why),
                gmem: Err(Status::not_probed(why)),
            };
        }
    };
    let check = |cap: u32| Status::from_result(kvm.check_extension(cap));
    let mut capabilities: Vec<KvmCap> = KVM_CAPABILITIES
        .iter()
        .map(|&(number, name)| KvmCap {
            number,
            name,
            value: check(number),
            vm_value: Status::not_probed("no VM"),
        })
        .collect();
    let mut colliding: Vec<CollidingCap> = COLLIDING_CAPABILITIES
        .iter()
        .map(|&(number, mainline_name, out_of_tree)| CollidingCap {
            number,
            mainline_name,
            out_of_tree,
            value: check(number),
            vm_value: Status::not_probed("no VM"),
        })
        .collect();
    let api_version = Status::from_result(kvm.api_version());

    let vm = match kvm.create_vm(0) {
        Ok(vm) => vm,
        Err(e) => {
            let status = Status::from_result(Err(e));
            let why = format!(
                "KVM_CREATE_VM failed: {}",
                status.reason().unwrap_or("unknown")
            );
            for c in &mut capabilities {
                c.vm_value = Status::not_probed(why.clone());
            }
            for c in &mut colliding {
                c.vm_value = Status::not_probed(why.clone());
            }
            let mut caps = kvm_not_probed(device, &why);
            caps.api_version = api_version;
            caps.capabilities = capabilities;
            caps.colliding = colliding;
            caps.vm = status;
            caps.userfault = Status::not_probed(why.clone());
            return KvmProbe {
                caps,
                gmem: Err(Status::not_probed(why)),
            };
        }
    };

    for c in &mut capabilities {
        c.vm_value = Status::from_result(vm.check_extension(c.number));
    }
    for c in &mut colliding {
        c.vm_value = Status::from_result(vm.check_extension(c.number));
    }
    let plain = GuestMemfd::create(&vm, page as u64, GmemFlags::empty());
    let vm_gmem_cap = vm.check_extension(gmem_sys::KVM_CAP_GUEST_MEMFD).ok();
    let guest_memfd_slot = match &plain {
        Ok(gmem) => gmem_slot(&vm, gmem, page, vm_gmem_cap),
        Err(_) => Status::not_probed("no guest_memfd could be created"),
    };
    let guest_memfd = Status::from_result(plain.map(drop));
    let guest_memfd_flags = Status::from_result(
        vm.check_extension(gmem_sys::KVM_CAP_GUEST_MEMFD_FLAGS)
            .map(|v| u64::try_from(v).unwrap_or(0)),
    );
    let gmem = shared_gmem(&vm, page);
    let guest_memfd_mmap = match &gmem {
        Ok(_) => Status::Supported(()),
        Err(status) => status.clone(),
    };
    let (flavour, guest_memfd_write, no_direct_map) = flavour(&vm, &guest_memfd);
    let userfault = Status::from_result(probe_userfault(&kvm));

    KvmProbe {
        caps: KvmCaps {
            device,
            api_version,
            capabilities,
            colliding,
            vm: Status::Supported(()),
            guest_memfd,
            guest_memfd_flags,
            guest_memfd_slot,
            guest_memfd_mmap,
            flavour,
            guest_memfd_write,
            no_direct_map,
            userfault,
        },
        gmem,
    }
}

/// `gmem` (one page, of `vm`) as slot 0 of `vm`, at guest address 0 over
/// a scratch anonymous page, then deleted.
fn gmem_slot(vm: &Vm, gmem: &GuestMemfd, page: usize, vm_gmem_cap: Option<i32>) -> Status {
    let memory = match Mapping::anonymous(page, Sharing::Private) {
        Ok(m) => m,
        Err(e) => return Status::from_result(Err(e)),
    };
    let slot = Memslot::from_mapping(0, 0, &memory).guest_memfd(gmem, 0);
    // SAFETY: `vm` has no vCPU, so nothing touches `memory` through the
    // slot, which is deleted below while `memory` and `gmem` still live.
    match unsafe { slot.set(vm) } {
        Ok(()) => {
            let _ = Memslot::delete(vm, 0, 0);
            Status::Supported(())
        }
        Err(e) if e.errno() == Some(Errno::EINVAL) && vm_gmem_cap == Some(0) => {
            Status::unsupported(
                Some(Errno::EINVAL),
                "KVM_SET_USER_MEMORY_REGION2 with KVM_MEM_GUEST_MEMFD: the default VM type \
             creates guest_memfds but does not take them as memslots (it answers \
             KVM_CAP_GUEST_MEMFD = 0; Linux 6.12 does this); other VM types may",
            )
        }
        Err(e) => Status::from_result(Err(e)),
    }
}

fn shared_gmem(vm: &Vm, page: usize) -> Result<(GuestMemfd, Mapping), Status> {
    let gmem = GuestMemfd::create(vm, page as u64, GmemFlags::MMAP | GmemFlags::INIT_SHARED)
        .map_err(|e| Status::from_result(Err(e)))?;
    let view = gmem.map_all().map_err(|e| Status::from_result(Err(e)))?;
    Ok((gmem, view))
}

type FlavourProbe = (Status<Flavour>, Status<u64>, Status<u64>);

fn flavour(vm: &Vm, guest_memfd: &Status) -> FlavourProbe {
    if !guest_memfd.is_supported() {
        let why = format!(
            "no guest_memfd: {}",
            guest_memfd.reason().unwrap_or("unknown")
        );
        return (
            Status::not_probed(why.clone()),
            Status::not_probed(why.clone()),
            Status::not_probed(why),
        );
    }
    match GmemFlavour::probe(vm) {
        Ok(f) => (
            Status::Supported(Flavour {
                numbering: f.numbering(),
                bit2: f.bit2(),
                bit3: f.bit3(),
                base_flags: f.base().bits(),
            }),
            Status::from_result(f.write().map(|flags| flags.bits())),
            Status::from_result(f.no_direct_map().map(|flags| flags.bits())),
        ),
        Err(e) => {
            let status: Status<Flavour> = Status::from_result(Err(e));
            let why = format!(
                "the flavour probe failed: {}",
                status.reason().unwrap_or("unknown")
            );
            (
                status,
                Status::not_probed(why.clone()),
                Status::not_probed(why),
            )
        }
    }
}

/// The KVM section when nothing past `device` could be probed.
fn kvm_not_probed(device: DeviceNode, why: &str) -> KvmCaps {
    KvmCaps {
        device,
        api_version: Status::not_probed(why),
        capabilities: KVM_CAPABILITIES
            .iter()
            .map(|&(number, name)| KvmCap {
                number,
                name,
                value: Status::not_probed(why),
                vm_value: Status::not_probed(why),
            })
            .collect(),
        colliding: COLLIDING_CAPABILITIES
            .iter()
            .map(|&(number, mainline_name, out_of_tree)| CollidingCap {
                number,
                mainline_name,
                out_of_tree,
                value: Status::not_probed(why),
                vm_value: Status::not_probed(why),
            })
            .collect(),
        vm: Status::not_probed(why),
        guest_memfd: Status::not_probed(why),
        guest_memfd_flags: Status::not_probed(why),
        guest_memfd_slot: Status::not_probed(why),
        guest_memfd_mmap: Status::not_probed(why),
        flavour: Status::not_probed(why),
        guest_memfd_write: Status::not_probed(why),
        no_direct_map: Status::not_probed(why),
        userfault: Status::not_probed(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_answered() {
        let caps = Capabilities::probe().expect("probe");
        for (name, _) in Capabilities::names() {
            assert!(caps.has(&name).is_some(), "{name} unknown to has()");
            assert!(caps.explain(&name).is_some(), "{name} unknown to explain()");
        }
        assert_eq!(caps.has("no-such-capability"), None);
        assert_eq!(caps.has("feature:NO_SUCH_FEATURE"), None);
        assert_eq!(caps.has("kvm-cap:NO_SUCH_CAP"), None);
        assert_eq!(caps.has("anon-bogus"), None);
        assert_eq!(caps.memory.len(), MemoryKind::ALL.len());
        for row in &caps.memory {
            assert_eq!(row.modes.len(), REGISTER_MODES.len());
        }
    }

    const MEMINFO_FIELDS: [&str; 5] = [
        "Hugepagesize",
        "HugePages_Total",
        "HugePages_Free",
        "HugePages_Rsvd",
        "HugePages_Surp",
    ];

    /// `/proc/meminfo` text with the five huge page fields among noise,
    /// and the values it should parse to (`None` where `kB` overflows).
    fn meminfo(g: &mut crate::fuzzing::Gen) -> (String, Option<[u64; 5]>) {
        let mut lines = vec!["MemTotal:       16318480 kB".to_string()];
        let mut values = [0u64; 5];
        let mut fits = true;
        for (i, name) in MEMINFO_FIELDS.iter().enumerate() {
            let v = g.edgy_u64();
            let kb = i == 0 && g.bool();
            values[i] = if kb {
                match v.checked_mul(1024) {
                    Some(b) => b,
                    None => {
                        fits = false;
                        0
                    }
                }
            } else {
                v
            };
            let pad = " ".repeat(g.below(9) as usize);
            let unit = if kb { " kB" } else { "" };
            lines.push(format!("{name}:{pad}{v}{unit}"));
            if g.bool() {
                lines.push(format!("Noise{i}: {} kB", g.u64()));
            }
        }
        (lines.join("\n") + "\n", fits.then_some(values))
    }

    /// The text the probe reads from /proc and sysfs (meminfo, the passwd
    /// and group databases, one-number sysctls): well-formed text parses to
    /// its values, mutated text to a value or a reason; nothing panics.
    #[test]
    fn hostile_proc_text() {
        crate::fuzzing::run("/proc/meminfo", |g| {
            let (text, expected) = meminfo(g);
            match (parse_meminfo(&text), expected) {
                (Status::Supported(h), Some(v)) => {
                    assert_eq!([h.page_size, h.total, h.free, h.reserved, h.surplus], v);
                }
                (Status::Unsupported { .. }, None) => {}
                (other, v) => panic!("{text:?} parsed to {other:?}, expected {v:?}"),
            }
            let mut bytes = text.into_bytes();
            g.mutate(&mut bytes);
            let _ = parse_meminfo(&String::from_utf8_lossy(&bytes));
        });
        crate::fuzzing::run("/etc/passwd", |g| {
            let id = g.edgy_u64() as u32;
            let text = format!("root:x:0:0::/root:/bin/sh\nuser{id}:x:{id}:{id}::/:/bin/false\n");
            let expected = if id == 0 {
                "root".to_string()
            } else {
                format!("user{id}")
            };
            assert_eq!(parse_name(&text, id), Some(expected));
            let mut bytes = text.into_bytes();
            g.mutate(&mut bytes);
            let _ = parse_name(&String::from_utf8_lossy(&bytes), id);
        });
        crate::fuzzing::run("sysctl", |g| {
            let v = g.edgy_u64();
            let text = format!("{v}\n");
            match parse_sysctl_u32("/proc/sys/x", &text) {
                Status::Supported(got) => assert_eq!(u64::from(got), v),
                Status::Unsupported { reason, .. } => {
                    assert!(u32::try_from(v).is_err(), "{v}: {reason}");
                    assert!(reason.contains("/proc/sys/x holds"), "{reason}");
                }
                Status::NotProbed { .. } => panic!("a sysctl is probed or not"),
            }
            let len = g.below(24) as usize;
            let mut bytes = g.bytes(len);
            g.mutate(&mut bytes);
            let _ = parse_sysctl_u32("/proc/sys/x", &String::from_utf8_lossy(&bytes));
        });
    }

    /// Found by `hostile_proc_text`: a `kB` value whose bytes overflow u64
    /// panicked in the multiplication; it is a reason now.
    #[test]
    fn meminfo_kb_overflow_is_a_reason() {
        let text = "Hugepagesize: 18446744073709551615 kB\nHugePages_Total: 1\n\
                    HugePages_Free: 1\nHugePages_Rsvd: 0\nHugePages_Surp: 0\n";
        assert!(!parse_meminfo(text).is_supported());
    }
}
