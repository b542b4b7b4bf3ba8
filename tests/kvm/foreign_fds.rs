//! The entry points that take a KVM descriptor check what it is before
//! they trust an ioctl's result on it as a new descriptor: a memfd,
//! `/dev/null`, a userfaultfd or `/dev/kvm` where a VM belongs is refused
//! with an error naming the file, and a kvm-ioctls VM still works.

use std::os::fd::{AsFd, OwnedFd};

use userfault::error::Error;
use userfault::kvm::{GmemFlags, GuestMemfd, Kvm, Vm, probe_userfault};
use userfault::uffd::Uffd;

use super::PAGE;
use crate::util::require;

/// A memfd, `/dev/null` and a userfaultfd: files whose drivers are not KVM.
fn foreign() -> Vec<(&'static str, OwnedFd)> {
    let memfd = rustix::fs::memfd_create(c"not-kvm", rustix::fs::MemfdFlags::CLOEXEC)
        .expect("memfd_create");
    let null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .expect("open /dev/null");
    let mut files = vec![("memfd:not-kvm", memfd), ("/dev/null", null)];
    if let Ok(uffd) = Uffd::new() {
        files.push(("anon_inode:[userfaultfd]", OwnedFd::from(uffd)));
    }
    files
}

fn assert_refused(e: &Error, what: &str, op: &str) {
    assert!(matches!(e, Error::InvalidArgument { .. }), "{op}: {e}");
    let text = e.to_string();
    assert!(
        text.contains(what),
        "{op}: the error names the file: {text}"
    );
}

#[test]
fn kvm_entry_points_refuse_other_files() {
    for (what, fd) in foreign() {
        let e = probe_userfault(fd.as_fd()).unwrap_err();
        assert_refused(&e, what, "probe_userfault");
        assert!(e.to_string().contains("/dev/kvm"), "{e}");
        let e = GuestMemfd::create(fd.as_fd(), PAGE as u64, GmemFlags::empty()).unwrap_err();
        assert_refused(&e, what, "GuestMemfd::create");
        assert!(e.to_string().contains("anon_inode:kvm-vm"), "{e}");
        let dup = fd.try_clone().expect("dup");
        let e = Vm::from_fd(dup).unwrap_err();
        assert_refused(&e, what, "Vm::from_fd");
        let e = Kvm::from_fd(fd).unwrap_err();
        assert_refused(&e, what, "Kvm::from_fd");
    }
    let e = Kvm::open_path("/dev/null").unwrap_err();
    assert_refused(&e, "/dev/null", "Kvm::open_path");
}

#[test]
fn a_vm_is_not_dev_kvm_and_dev_kvm_is_not_a_vm() {
    const TEST: &str = "a_vm_is_not_dev_kvm_and_dev_kvm_is_not_a_vm";
    let kvm = require!(TEST, "kvm", Kvm::open().map_err(|e| e.to_string()));
    let e = GuestMemfd::create(&kvm, PAGE as u64, GmemFlags::empty()).unwrap_err();
    assert_refused(&e, "/dev/kvm", "GuestMemfd::create on /dev/kvm");
    let vm = require!(TEST, "kvm", kvm.create_vm(0).map_err(|e| e.to_string()));
    let e = probe_userfault(&vm).unwrap_err();
    assert_refused(&e, "anon_inode:kvm-vm", "probe_userfault on a VM");
    // A VM passes Vm::from_fd, and /dev/kvm passes Kvm::from_fd.
    let vm = Vm::from_fd(OwnedFd::from(vm)).expect("a VM is a VM");
    let kvm = Kvm::from_fd(OwnedFd::from(kvm)).expect("/dev/kvm is /dev/kvm");
    assert!(kvm.api_version().is_ok());
    match vm.create_guest_memfd(PAGE as u64, GmemFlags::empty()) {
        Ok(_) => {}
        Err(e) => crate::util::skip(TEST, "gmem", &format!("no guest_memfd: {e}")),
    }
}

#[test]
fn a_kvm_ioctls_vm_still_works() {
    const TEST: &str = "a_kvm_ioctls_vm_still_works";
    let (_kvm, vm) = require!(TEST, "kvm", super::open_vm());
    let vm = super::borrow(&vm);
    require!(
        TEST,
        "gmem",
        GuestMemfd::create(vm, PAGE as u64, GmemFlags::empty())
            .map(drop)
            .map_err(|e| format!("no guest_memfd: {e}"))
    );
    let owned = vm.try_clone_to_owned().expect("dup");
    Vm::from_fd(owned).expect("a kvm-ioctls VM is a VM");
}
