//! The running kernel accepts the sys crates' request numbers: every
//! `UFFDIO_*` ioctl, `USERFAULTFD_IOC_NEW` and the KVM ioctls are issued on
//! real objects and must succeed with the documented result. (An unknown
//! userfaultfd request fails with `EINVAL` like a bad argument would, so only
//! success proves a number right.)

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use gmem_sys as gmem;
use uffd_sys as uffd;
use userfault::mem::{Mapping, Sharing};

use crate::util::{self, require};

const PAGE: usize = 4096;

/// `ioctl(2)` with a pointer argument; the OS error on failure.
fn ioctl_ptr<T>(fd: RawFd, request: u32, arg: &mut T) -> std::io::Result<i32> {
    // SAFETY: `arg` is a live, exclusively borrowed value of the struct type
    // the request number encodes; the kernel reads/writes at most its size.
    let r = unsafe { libc::ioctl(fd, request as libc::c_ulong, arg as *mut T) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `ioctl(2)` with an integer argument.
fn ioctl_int(fd: RawFd, request: u32, arg: libc::c_ulong) -> std::io::Result<i32> {
    // SAFETY: the request takes an integer argument, no memory is passed.
    let r = unsafe { libc::ioctl(fd, request as libc::c_ulong, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: i64) -> std::io::Result<OwnedFd> {
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A private anonymous mapping of `len` bytes.
fn anon(len: usize) -> Mapping {
    Mapping::anonymous(len, Sharing::Private).expect("mmap")
}

/// The address of page `i` of `m`, as the ioctls take it.
fn page_addr(m: &Mapping, i: usize) -> u64 {
    (m.addr() + i * PAGE) as u64
}

/// The byte at `offset` in `m`.
fn read(m: &Mapping, offset: usize) -> u8 {
    assert!(offset < m.len());
    // SAFETY: in bounds of a live mapping; resolved pages are readable.
    unsafe { m.as_ptr().add(offset).read_volatile() }
}

fn new_uffd() -> Result<OwnedFd, String> {
    // SAFETY: userfaultfd(2) takes only flags.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    owned(fd).map_err(|e| format!("userfaultfd(2) failed: {e}"))
}

fn handshake(fd: RawFd, features: u64) -> std::io::Result<uffd::uffdio_api> {
    let mut api = uffd::uffdio_api {
        api: uffd::UFFD_API,
        features,
        ioctls: 0,
    };
    ioctl_ptr(fd, uffd::UFFDIO_API, &mut api)?;
    Ok(api)
}

fn register(fd: RawFd, start: u64, len: usize, mode: u64) -> u64 {
    let mut reg = uffd::uffdio_register {
        range: uffd::uffdio_range {
            start,
            len: len as u64,
        },
        mode,
        ioctls: 0,
    };
    ioctl_ptr(fd, uffd::UFFDIO_REGISTER, &mut reg).expect("UFFDIO_REGISTER");
    reg.ioctls
}

/// The fd-level ioctls `UFFDIO_API` reports hold every one the sys crate
/// names for this kernel (REGISTER, UNREGISTER, API, and SET_MODE where it
/// has RWP); bits of kernels newer still are reported, not refused.
fn assert_api_ioctls(what: &str, ioctls: u64, features: u64) {
    let expected = fd_ioctls(features);
    assert_eq!(
        ioctls & expected,
        expected,
        "{what}: ioctls {ioctls:#x} lack some of {expected:#x}"
    );
    let newer = ioctls & !uffd::UFFD_API_IOCTLS;
    if newer != 0 {
        util::report(&format!(
            "{what}: the kernel also offers fd ioctl bits {newer:#x} the sys crate does not name"
        ));
    }
}

fn bit(nr: u32) -> u64 {
    1 << nr
}

/// The ioctls `UFFDIO_API` offers on the fd: `UFFD_API_IOCTLS`, without
/// `UFFDIO_SET_MODE` on kernels before 7.3 (which have no RWP either).
fn fd_ioctls(features: u64) -> u64 {
    if features & uffd::UFFD_FEATURE_RWP != 0 {
        uffd::UFFD_API_IOCTLS
    } else {
        uffd::UFFD_API_IOCTLS & !bit(uffd::_UFFDIO_SET_MODE)
    }
}

#[test]
fn userfaultfd_accepts_every_request_number() {
    const TEST: &str = "userfaultfd_accepts_every_request_number";
    let probe = require!(TEST, "uffd", new_uffd());
    let all = handshake(probe.as_raw_fd(), 0).expect("UFFDIO_API with no features");
    assert_api_ioctls("UFFDIO_API", all.ioctls, all.features);
    // A second handshake on the same fd is refused: the request was understood.
    let again = handshake(probe.as_raw_fd(), 0).expect_err("second UFFDIO_API");
    assert_eq!(again.raw_os_error(), Some(libc::EINVAL));

    let wanted = uffd::UFFD_FEATURE_MOVE | uffd::UFFD_FEATURE_POISON;
    let fd_owned = new_uffd().expect("second userfaultfd");
    let fd = fd_owned.as_raw_fd();
    handshake(fd, all.features & wanted).expect("UFFDIO_API with MOVE|POISON");

    // Anonymous range: COPY, ZEROPAGE, WRITEPROTECT, POISON, MOVE, WAKE.
    let dst = anon(5 * PAGE);
    let mask = register(
        fd,
        page_addr(&dst, 0),
        dst.len(),
        uffd::UFFDIO_REGISTER_MODE_MISSING | uffd::UFFDIO_REGISTER_MODE_WP,
    );
    for nr in [
        uffd::_UFFDIO_WAKE,
        uffd::_UFFDIO_COPY,
        uffd::_UFFDIO_ZEROPAGE,
        uffd::_UFFDIO_WRITEPROTECT,
    ] {
        assert_ne!(
            mask & bit(nr),
            0,
            "anon MISSING|WP mask {mask:#x} lacks bit {nr}"
        );
    }
    assert_eq!(
        mask & !uffd::UFFD_API_RANGE_IOCTLS,
        0,
        "mask {mask:#x} has unknown bits"
    );

    let src = vec![0xA5u8; PAGE];
    let mut copy = uffd::uffdio_copy {
        dst: page_addr(&dst, 0),
        src: src.as_ptr() as u64,
        len: PAGE as u64,
        mode: 0,
        copy: 0,
    };
    ioctl_ptr(fd, uffd::UFFDIO_COPY, &mut copy).expect("UFFDIO_COPY");
    assert_eq!(copy.copy, PAGE as i64);
    assert_eq!(read(&dst, 17), 0xA5);

    let mut zero = uffd::uffdio_zeropage {
        range: uffd::uffdio_range {
            start: page_addr(&dst, 1),
            len: PAGE as u64,
        },
        mode: 0,
        zeropage: 0,
    };
    ioctl_ptr(fd, uffd::UFFDIO_ZEROPAGE, &mut zero).expect("UFFDIO_ZEROPAGE");
    assert_eq!(zero.zeropage, PAGE as i64);
    assert_eq!(read(&dst, PAGE + 5), 0);

    for mode in [uffd::UFFDIO_WRITEPROTECT_MODE_WP, 0] {
        let mut wp = uffd::uffdio_writeprotect {
            range: uffd::uffdio_range {
                start: page_addr(&dst, 0),
                len: PAGE as u64,
            },
            mode,
        };
        ioctl_ptr(fd, uffd::UFFDIO_WRITEPROTECT, &mut wp).expect("UFFDIO_WRITEPROTECT");
    }

    let mut wake = uffd::uffdio_range {
        start: page_addr(&dst, 2),
        len: PAGE as u64,
    };
    ioctl_ptr(fd, uffd::UFFDIO_WAKE, &mut wake).expect("UFFDIO_WAKE");

    if all.features & uffd::UFFD_FEATURE_POISON != 0 {
        let mut poison = uffd::uffdio_poison {
            range: uffd::uffdio_range {
                start: page_addr(&dst, 2),
                len: PAGE as u64,
            },
            mode: 0,
            updated: 0,
        };
        ioctl_ptr(fd, uffd::UFFDIO_POISON, &mut poison).expect("UFFDIO_POISON");
        assert_eq!(poison.updated, PAGE as i64);
    } else {
        util::report("note: UFFD_FEATURE_POISON not offered; UFFDIO_POISON not exercised");
    }

    if all.features & uffd::UFFD_FEATURE_MOVE != 0 {
        let from = anon(PAGE);
        // SAFETY: writes one byte inside the fresh anonymous mapping.
        unsafe { from.as_ptr().write_volatile(0x5A) };
        let mut mv = uffd::uffdio_move {
            dst: page_addr(&dst, 3),
            src: page_addr(&from, 0),
            len: PAGE as u64,
            mode: 0,
            move_: 0,
        };
        ioctl_ptr(fd, uffd::UFFDIO_MOVE, &mut mv).expect("UFFDIO_MOVE");
        assert_eq!(mv.move_, PAGE as i64);
        assert_eq!(read(&dst, 3 * PAGE), 0x5A);
    } else {
        util::report("note: UFFD_FEATURE_MOVE not offered; UFFDIO_MOVE not exercised");
    }

    let mut range = uffd::uffdio_range {
        start: page_addr(&dst, 0),
        len: dst.len() as u64,
    };
    ioctl_ptr(fd, uffd::UFFDIO_UNREGISTER, &mut range).expect("UFFDIO_UNREGISTER");

    // Shared memfd range registered MINOR: CONTINUE maps a cached page.
    if !util::need(TEST, "uffd-minor-shmem") {
        return;
    }
    // SAFETY: memfd_create with a NUL-terminated name.
    let memfd =
        owned(unsafe { libc::memfd_create(c"uffd-sys-abi".as_ptr(), libc::MFD_CLOEXEC) } as i64)
            .expect("memfd_create");
    // SAFETY: plain ftruncate on an owned fd.
    let sized = unsafe { libc::ftruncate(memfd.as_raw_fd(), PAGE as i64) };
    assert_eq!(sized, 0, "ftruncate");
    let page = vec![0x3Cu8; PAGE];
    // SAFETY: writes PAGE bytes from a live buffer.
    let n = unsafe { libc::pwrite(memfd.as_raw_fd(), page.as_ptr().cast(), PAGE, 0) };
    assert_eq!(n, PAGE as isize);
    let shared = Mapping::file(memfd.as_fd(), 0, PAGE, Sharing::Shared).expect("mmap");
    let mask = register(
        fd,
        page_addr(&shared, 0),
        PAGE,
        uffd::UFFDIO_REGISTER_MODE_MINOR,
    );
    assert_ne!(
        mask & bit(uffd::_UFFDIO_CONTINUE),
        0,
        "shmem MINOR mask {mask:#x}"
    );
    let mut cont = uffd::uffdio_continue {
        range: uffd::uffdio_range {
            start: page_addr(&shared, 0),
            len: PAGE as u64,
        },
        mode: 0,
        mapped: 0,
    };
    ioctl_ptr(fd, uffd::UFFDIO_CONTINUE, &mut cont).expect("UFFDIO_CONTINUE");
    assert_eq!(cont.mapped, PAGE as i64);
    assert_eq!(read(&shared, 100), 0x3C);
}

#[test]
fn userfaultfd_accepts_the_rwp_request_numbers() {
    const TEST: &str = "userfaultfd_accepts_the_rwp_request_numbers";
    let probe = require!(TEST, "uffd", new_uffd());
    let all = handshake(probe.as_raw_fd(), 0).expect("UFFDIO_API with no features");
    if all.features & uffd::UFFD_FEATURE_RWP == 0 {
        util::skip(
            TEST,
            "uffd-rwp",
            &format!(
                "RWP needs Linux 7.3: features {:#x} lack UFFD_FEATURE_RWP",
                all.features
            ),
        );
        return;
    }
    let fd_owned = new_uffd().expect("second userfaultfd");
    let fd = fd_owned.as_raw_fd();
    handshake(fd, uffd::UFFD_FEATURE_RWP).expect("UFFDIO_API with RWP");
    let mem = anon(2 * PAGE);
    let mask = register(
        fd,
        page_addr(&mem, 0),
        mem.len(),
        uffd::UFFDIO_REGISTER_MODE_RWP,
    );
    assert_ne!(
        mask & bit(uffd::_UFFDIO_RWPROTECT),
        0,
        "anon RWP mask {mask:#x}"
    );
    for mode in [uffd::UFFDIO_RWPROTECT_MODE_RWP, 0] {
        let mut rp = uffd::uffdio_rwprotect {
            range: uffd::uffdio_range {
                start: page_addr(&mem, 0),
                len: mem.len() as u64,
            },
            mode,
        };
        ioctl_ptr(fd, uffd::UFFDIO_RWPROTECT, &mut rp).expect("UFFDIO_RWPROTECT");
    }
    for (enable, disable) in [
        (uffd::UFFD_FEATURE_RWP_ASYNC, 0),
        (0, uffd::UFFD_FEATURE_RWP_ASYNC),
    ] {
        let mut sm = uffd::uffdio_set_mode { enable, disable };
        ioctl_ptr(fd, uffd::UFFDIO_SET_MODE, &mut sm).expect("UFFDIO_SET_MODE");
    }

    // PAGEMAP_SCAN with the 7.3 category: the touched page is reported.
    assert_eq!(read(&mem, PAGE + 1), 0);
    let pagemap = std::fs::File::open("/proc/self/pagemap").expect("pagemap");
    let mut regions = [uffd::pagemap::page_region::default(); 4];
    let mut arg = uffd::pagemap::pm_scan_arg {
        size: std::mem::size_of::<uffd::pagemap::pm_scan_arg>() as u64,
        start: page_addr(&mem, 0),
        end: page_addr(&mem, 2),
        vec: regions.as_mut_ptr() as u64,
        vec_len: regions.len() as u64,
        category_mask: uffd::pagemap::PAGE_IS_PRESENT,
        return_mask: uffd::pagemap::PAGE_IS_PRESENT | uffd::pagemap::PAGE_IS_ACCESSED,
        ..Default::default()
    };
    let n = ioctl_ptr(pagemap.as_raw_fd(), uffd::pagemap::PAGEMAP_SCAN, &mut arg)
        .expect("PAGEMAP_SCAN");
    assert_eq!(n, 1, "{:?}", &regions[..n as usize]);
    assert_eq!(
        (regions[0].start, regions[0].end),
        (page_addr(&mem, 1), page_addr(&mem, 2))
    );
    assert_eq!(
        arg.walk_end,
        page_addr(&mem, 2),
        "the walk covered the range"
    );
}

#[test]
fn dev_userfaultfd_accepts_ioc_new() {
    const TEST: &str = "dev_userfaultfd_accepts_ioc_new";
    let dev = require!(
        TEST,
        "uffd-dev",
        std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/userfaultfd")
            .map_err(|e| format!("cannot open /dev/userfaultfd: {e}"))
    );
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as libc::c_ulong;
    let fd =
        ioctl_int(dev.as_raw_fd(), uffd::USERFAULTFD_IOC_NEW, flags).expect("USERFAULTFD_IOC_NEW");
    let fd = owned(fd as i64).expect("new uffd");
    let api = handshake(fd.as_raw_fd(), 0).expect("UFFDIO_API on a /dev/userfaultfd uffd");
    assert_api_ioctls(
        "UFFDIO_API on a /dev/userfaultfd uffd",
        api.ioctls,
        api.features,
    );
    assert_ne!(api.features & uffd::UFFD_FEATURE_MISSING_SHMEM, 0);
}

fn open_kvm() -> Result<std::fs::File, String> {
    std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("cannot open /dev/kvm: {e}"))
}

#[test]
fn kvm_accepts_every_request_number() {
    const TEST: &str = "kvm_accepts_every_request_number";
    let kvm = require!(TEST, "kvm", open_kvm());
    let kvm = kvm.as_raw_fd();
    let version = ioctl_int(kvm, gmem::KVM_GET_API_VERSION, 0).expect("KVM_GET_API_VERSION");
    assert_eq!(version, gmem::KVM_API_VERSION);
    let user_memory = ioctl_int(
        kvm,
        gmem::KVM_CHECK_EXTENSION,
        gmem::KVM_CAP_USER_MEMORY.into(),
    )
    .expect("KVM_CHECK_EXTENSION");
    assert!(user_memory > 0, "KVM_CAP_USER_MEMORY is {user_memory}");
    let vm = owned(ioctl_int(kvm, gmem::KVM_CREATE_VM, 0).expect("KVM_CREATE_VM") as i64)
        .expect("vm fd");
    let vm = vm.as_raw_fd();
    let cap =
        |nr: u32| ioctl_int(vm, gmem::KVM_CHECK_EXTENSION, nr.into()).expect("KVM_CHECK_EXTENSION");

    let memory2 = cap(gmem::KVM_CAP_USER_MEMORY2);
    if memory2 <= 0 {
        util::skip(
            TEST,
            "kvm-memslot2",
            "KVM_CAP_USER_MEMORY2 is 0: no KVM_SET_USER_MEMORY_REGION2 (Linux 6.8)",
        );
        return;
    }
    let backing = anon(2 << 20);
    let mut slot = gmem::kvm_userspace_memory_region2 {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: backing.len() as u64,
        userspace_addr: page_addr(&backing, 0),
        ..Default::default()
    };
    ioctl_ptr(vm, gmem::KVM_SET_USER_MEMORY_REGION2, &mut slot)
        .expect("KVM_SET_USER_MEMORY_REGION2");
    slot.memory_size = 0;
    ioctl_ptr(vm, gmem::KVM_SET_USER_MEMORY_REGION2, &mut slot).expect("delete slot");

    // The VM's answer, not /dev/kvm's: Linux 6.12 says 1 system-wide and 0
    // for the default VM, which then refuses guest_memfd slots.
    if cap(gmem::KVM_CAP_GUEST_MEMFD) <= 0 {
        util::skip(
            TEST,
            "gmem-slot",
            "KVM_CAP_GUEST_MEMFD is 0 for the default VM type: no guest_memfd memslots",
        );
        return;
    }
    let mut create = gmem::kvm_create_guest_memfd {
        size: 2 << 20,
        flags: 0,
        reserved: [0; 6],
    };
    let gfd = owned(
        ioctl_ptr(vm, gmem::KVM_CREATE_GUEST_MEMFD, &mut create).expect("KVM_CREATE_GUEST_MEMFD")
            as i64,
    )
    .expect("guest_memfd");
    let mut slot = gmem::kvm_userspace_memory_region2 {
        slot: 1,
        flags: gmem::KVM_MEM_GUEST_MEMFD,
        guest_phys_addr: 1 << 30,
        memory_size: 2 << 20,
        userspace_addr: page_addr(&backing, 0),
        guest_memfd: gfd.as_raw_fd() as u32,
        ..Default::default()
    };
    ioctl_ptr(vm, gmem::KVM_SET_USER_MEMORY_REGION2, &mut slot).expect("guest_memfd memslot");
    let flags = cap(gmem::KVM_CAP_GUEST_MEMFD_FLAGS);
    util::report(&format!(
        "kvm: api {version}, USER_MEMORY2 {memory2}, GUEST_MEMFD_FLAGS {flags:#x}"
    ));
}

#[test]
fn kvm_accepts_set_memory_attributes() {
    const TEST: &str = "kvm_accepts_set_memory_attributes";
    let kvm = require!(TEST, "kvm", open_kvm());
    let vm =
        owned(ioctl_int(kvm.as_raw_fd(), gmem::KVM_CREATE_VM, 0).expect("KVM_CREATE_VM") as i64)
            .expect("vm fd");
    let attrs = ioctl_int(
        vm.as_raw_fd(),
        gmem::KVM_CHECK_EXTENSION,
        gmem::KVM_CAP_MEMORY_ATTRIBUTES.into(),
    )
    .expect("KVM_CHECK_EXTENSION");
    if attrs <= 0 {
        util::skip(
            TEST,
            "kvm-memory-attributes",
            "KVM_CAP_MEMORY_ATTRIBUTES is 0 for the default VM type on this host",
        );
        return;
    }
    let mut set = gmem::kvm_memory_attributes {
        address: 0,
        size: PAGE as u64,
        attributes: 0,
        flags: 0,
    };
    ioctl_ptr(vm.as_raw_fd(), gmem::KVM_SET_MEMORY_ATTRIBUTES, &mut set)
        .expect("KVM_SET_MEMORY_ATTRIBUTES");
}
