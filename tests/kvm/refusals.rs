//! The out-of-tree series on the running kernel: each either works (and
//! is checked to) or is refused, and the refusal surfaces as
//! `Error::Unsupported` carrying the kernel's errno, which the test prints.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use userfault::error::{Errno, Error};
use userfault::kvm::{
    CandidateBit, GmemFlavour, GmemNumbering, GuestMemfd, Kvm, Memslot, UserfaultBitmap,
    probe_userfault,
};

use super::PAGE;
use crate::util::{self, require};

fn unsupported_errno(e: &Error) -> Errno {
    match e {
        Error::Unsupported {
            errno: Some(errno), ..
        } => *errno,
        other => panic!("expected Unsupported with an errno, got {other:?}"),
    }
}

#[test]
fn guest_memfd_write_works_or_is_unsupported() {
    const TEST: &str = "guest_memfd_write_works_or_is_unsupported";
    let (_kvm, vm) = require!(TEST, "kvm", super::open_vm());
    let vm = super::borrow(&vm);
    let Some(mut gmem) = super::need_shared_gmem(TEST, vm, 2 * PAGE as u64) else {
        return;
    };
    let view = gmem.map_all().expect("mmap");
    let page = vec![0x5Au8; PAGE];

    // Without the WRITE flag no kernel lets pwrite through.
    let e = gmem.write_at(PAGE as u64, &page).unwrap_err();
    let errno = unsupported_errno(&e);
    assert!(
        [Errno::ESPIPE, Errno::EINVAL, Errno::ENODEV].contains(&errno),
        "{e}"
    );
    util::report(&format!(
        "kvm: guest_memfd pwrite without WRITE: {errno:?} ({e})"
    ));
    assert_eq!(super::peek(&view, PAGE, 1), [0], "nothing was written");

    // write(2) itself, for the record.
    // SAFETY: writes from a live buffer of PAGE bytes.
    let n = unsafe { libc::write(gmem.as_fd().as_raw_fd(), page.as_ptr().cast(), PAGE) };
    let raw = Errno::last();
    assert_eq!(n, -1, "write(2) on a guest_memfd without WRITE succeeded");
    util::report(&format!("kvm: guest_memfd write(2) without WRITE: {raw:?}"));

    // The flavour: each candidate bit tried on a scratch guest_memfd.
    let flavour = GmemFlavour::probe(vm).expect("guest_memfd flavour probe");
    util::report(&format!(
        "kvm: guest_memfd flavour {:?}: bit 2 {:?}, bit 3 {:?}, advertised {:?}",
        flavour.numbering(),
        flavour.bit2(),
        flavour.bit3(),
        flavour.advertised()
    ));
    let advertised = flavour.advertised().unwrap_or(0);
    for (bit, outcome) in [(2, flavour.bit2()), (3, flavour.bit3())] {
        if let CandidateBit::Refused(e) = outcome {
            assert_eq!(e, Errno::EINVAL, "bit {bit}");
            assert_eq!(
                advertised & (1 << bit),
                0,
                "bit {bit} advertised but refused"
            );
        }
    }
    match flavour.write() {
        Ok(write) => {
            assert!(write.has_write());
            let flags = flavour.base() | write;
            let mut writable = GuestMemfd::create(vm, 2 * PAGE as u64, flags).expect("WRITE gmem");
            writable
                .write_at(PAGE as u64, &page)
                .expect("pwrite with WRITE");
            let view = writable.map_all().expect("mmap");
            assert_eq!(super::peek(&view, PAGE, PAGE), page);
        }
        Err(e) => {
            let errno = unsupported_errno(&e);
            assert!(
                [Errno::EINVAL, Errno::ESPIPE, Errno::ENODEV].contains(&errno),
                "{e}"
            );
            assert!(
                matches!(
                    flavour.numbering(),
                    GmemNumbering::Mainline
                        | GmemNumbering::DirectMapRemoval
                        | GmemNumbering::Unknown
                ),
                "{flavour:?}"
            );
            util::skip(TEST, "gmem-write", &e.to_string());
        }
    }
    if flavour.write().is_ok() {
        // A WRITE bit names the patch stack: bit 2 (upstream posting) or 3
        // (Firecracker's 6.18 stack).
        assert!(
            matches!(
                flavour.numbering(),
                GmemNumbering::UpstreamWrite | GmemNumbering::Firecracker
            ),
            "{flavour:?}"
        );
    }
    match flavour.no_direct_map() {
        Ok(ndm) => {
            let gmem = GuestMemfd::create(vm, PAGE as u64, flavour.base() | ndm)
                .expect("NO_DIRECT_MAP gmem");
            assert!(gmem.flags().has_no_direct_map());
        }
        Err(e) => util::report(&format!(
            "kvm: NO_DIRECT_MAP: errno {:?}",
            unsupported_errno(&e)
        )),
    }
}

#[test]
fn userfaultfd_on_guest_memfd_registers_or_is_refused() {
    const TEST: &str = "userfaultfd_on_guest_memfd_registers_or_is_refused";
    let (_kvm, vm) = require!(TEST, "kvm", super::open_vm());
    let Some(gmem) = super::need_shared_gmem(TEST, super::borrow(&vm), 4 * PAGE as u64) else {
        return;
    };
    let view = gmem.map_all().expect("mmap");
    // SAFETY: userfaultfd(2) takes only flags.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd < 0 {
        util::skip(
            TEST,
            "uffd",
            &format!("userfaultfd(2) failed: {}", std::io::Error::last_os_error()),
        );
        return;
    }
    // SAFETY: a new descriptor nothing else owns.
    let uffd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut api = uffd_sys::uffdio_api {
        api: uffd_sys::UFFD_API,
        features: 0,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API takes a uffdio_api, which `api` is.
    let r = unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            uffd_sys::UFFDIO_API as libc::c_ulong,
            &raw mut api,
        )
    };
    assert_eq!(r, 0, "UFFDIO_API: {}", std::io::Error::last_os_error());

    let mut reg = uffd_sys::uffdio_register {
        range: uffd_sys::uffdio_range {
            start: view.addr() as u64,
            len: view.len() as u64,
        },
        mode: uffd_sys::UFFDIO_REGISTER_MODE_MISSING | uffd_sys::UFFDIO_REGISTER_MODE_MINOR,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER takes a uffdio_register; the range is the
    // test's own mapping, which nothing references and no one touches
    // while it is registered (it is unmapped, unregistering it, at the end).
    let r = unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            uffd_sys::UFFDIO_REGISTER as libc::c_ulong,
            &raw mut reg,
        )
    };
    if r == 0 {
        let cont = 1u64 << uffd_sys::_UFFDIO_CONTINUE;
        assert_ne!(
            reg.ioctls & cont,
            0,
            "registered without CONTINUE: {:#x}",
            reg.ioctls
        );
        util::report(&format!(
            "kvm: userfaultfd on guest_memfd registered MISSING|MINOR, ioctls {:#x}",
            reg.ioctls
        ));
    } else {
        let errno = Errno::last();
        assert_eq!(
            errno,
            Errno::EINVAL,
            "UFFDIO_REGISTER on a guest_memfd mapping"
        );
        util::skip(
            TEST,
            "gmem-uffd",
            &format!("UFFDIO_REGISTER MISSING|MINOR on a guest_memfd mapping: {errno:?}"),
        );
    }
}

#[test]
fn kvm_userfault_works_or_is_unsupported() {
    const TEST: &str = "kvm_userfault_works_or_is_unsupported";
    let kvm = require!(TEST, "kvm", Kvm::open().map_err(|e| e.to_string()));
    let size = 8 * PAGE as u64;
    // Declared before the VM, so dropped after it.
    let bitmap = UserfaultBitmap::new_all_set(0, size).expect("bitmap");
    let anon = userfault::mem::Mapping::anonymous(size as usize, userfault::mem::Sharing::Private)
        .expect("mmap");
    let (_k, vm_fd) = require!(TEST, "kvm", super::open_vm());
    let vm = super::borrow(&vm_fd);
    let probed = probe_userfault(&kvm);
    // An anonymous slot with KVM_MEM_USERFAULT (no guest_memfd needed).
    let slot = Memslot::from_mapping(0, 0, &anon);
    // SAFETY: `bitmap` and `anon` are declared before the VM and so dropped
    // after it; the VM is closed explicitly below; no vCPU exists and
    // nothing references `anon`.
    let set = unsafe { slot.userfault(&bitmap).set(vm) };
    match (&probed, &set) {
        (Ok(()), Ok(())) => {
            // A flags-only change turns it off and on again.
            // SAFETY: as above.
            unsafe { slot.set(vm) }.expect("disable KVM_MEM_USERFAULT");
            // SAFETY: as above.
            unsafe { slot.userfault(&bitmap).set(vm) }.expect("enable KVM_MEM_USERFAULT");
            util::report("kvm: KVM_MEM_USERFAULT set, cleared and set on an anonymous slot");
        }
        (Err(p), Err(s)) => {
            assert!(p.is_unsupported(), "{p}");
            assert!(s.to_string().contains("KVM_MEM_USERFAULT"), "{s}");
            match s.errno() {
                // The kernel refused the flag: so did the probe's slot. The
                // slot's error says the flag may be missing (building it
                // tries nothing more).
                Some(Errno::EINVAL) => {
                    assert_eq!(p.errno(), Some(Errno::EINVAL), "{p}");
                    assert!(s.to_string().contains("probe_userfault decides"), "{s}");
                }
                // No KVM_SET_USER_MEMORY_REGION2 (before 6.8): the probe
                // found that out from KVM_CAP_USER_MEMORY2 before trying.
                Some(Errno::ENOTTY) => {
                    assert!(p.to_string().contains("Linux 6.8"), "{p}");
                    assert!(s.to_string().contains("Linux 6.8"), "{s}");
                }
                other => panic!("slot refused with {other:?}: {s}"),
            }
            // The refused slot was not created: the same slot without
            // userfault is new.
            // SAFETY: as above.
            unsafe { slot.set(vm) }.expect("the slot without KVM_MEM_USERFAULT");
            util::skip(TEST, "kvm-userfault", &p.to_string());
        }
        _ => panic!("probe and slot disagree: probe {probed:?}, slot {set:?}"),
    }
    // The VM goes before the memory and bitmap of its slot.
    drop(vm_fd);
    drop(anon);
}
