//! Firecracker's page-fault handler protocol.
//!
//! On `PUT /snapshot/load` with a `Uffd` memory backend, Firecracker
//! creates a userfaultfd (non-blocking, with `UFFD_FEATURE_EVENT_REMOVE`),
//! maps guest memory anonymously, registers it (MISSING), connects to the
//! handler's Unix stream socket and sends one message: the userfaultfd as
//! `SCM_RIGHTS` ancillary data, and as data a JSON array with one object
//! per guest memory region:
//!
//! ```json
//! [{"base_host_virt_addr": 140230183190528, "size": 134217728, "offset": 0, "page_size": 4096}]
//! ```
//!
//! `offset` is where the region's contents start in the guest-memory
//! snapshot file; `page_size` is in bytes (4096, or the huge page size of
//! hugetlbfs-backed memory). Older Firecracker sends the same value as
//! `page_size_kib` (which despite its name holds bytes); both are accepted.
//! Nothing else is sent; Firecracker keeps the socket open for as long as
//! it runs, so its end of the connection closing means it exited.
//!
//! Source: Firecracker's `docs/snapshotting/handling-page-faults-on-snapshot-resume.md`
//! and `GuestRegionUffdMapping` in its `src/vmm/src/persist.rs`.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
use serde::Deserialize;
use userfault::uffd::{RegisterMode, Uffd};

use crate::error::Error;
use crate::resolver::Range;

/// Largest handshake accepted, in bytes.
pub const MAX_MESSAGE: usize = 1 << 20;

/// One guest memory region of the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestRegion {
    /// Where the region is mapped in the VMM's address space.
    pub base_host_virt_addr: u64,
    /// Its length in bytes.
    pub size: usize,
    /// Where its contents start in the guest-memory file.
    pub offset: u64,
    /// Its page size in bytes.
    pub page_size: usize,
}

#[derive(Deserialize)]
struct WireRegion {
    base_host_virt_addr: u64,
    size: usize,
    offset: u64,
    page_size: Option<usize>,
    page_size_kib: Option<usize>,
}

/// Parses and checks the handshake's JSON: a non-empty array of regions,
/// each page-aligned, of whole pages, not overlapping another.
///
/// # Errors
///
/// [`Error::Handshake`] saying what is wrong (the JSON error and the text
/// received, or which region and why).
pub fn parse_regions(json: &[u8]) -> Result<Vec<GuestRegion>, Error> {
    let text = String::from_utf8_lossy(json);
    let wire: Vec<WireRegion> = serde_json::from_slice(json).map_err(|e| {
        Error::Handshake(format!(
            "malformed guest memory layout ({e}); received {:?}",
            excerpt(&text)
        ))
    })?;
    if wire.is_empty() {
        return Err(Error::Handshake(
            "the guest memory layout lists no region".into(),
        ));
    }
    let mut regions = Vec::with_capacity(wire.len());
    for (i, w) in wire.iter().enumerate() {
        let page_size = w.page_size.or(w.page_size_kib).ok_or_else(|| {
            Error::Handshake(format!(
                "region {i} has neither page_size nor page_size_kib"
            ))
        })?;
        let r = GuestRegion {
            base_host_virt_addr: w.base_host_virt_addr,
            size: w.size,
            offset: w.offset,
            page_size,
        };
        let bad = |why: &str| Error::Handshake(format!("region {i} ({r:?}): {why}"));
        if !page_size.is_power_of_two() || page_size < 4096 {
            return Err(bad("the page size is not a power of two of at least 4096"));
        }
        if r.size == 0 || !r.size.is_multiple_of(page_size) {
            return Err(bad("the size is not a non-zero multiple of the page size"));
        }
        if !r.base_host_virt_addr.is_multiple_of(page_size as u64) {
            return Err(bad("the address is not aligned to the page size"));
        }
        if r.base_host_virt_addr.checked_add(r.size as u64).is_none()
            || r.offset.checked_add(r.size as u64).is_none()
        {
            return Err(bad("the region wraps around"));
        }
        regions.push(r);
    }
    let mut sorted = regions.clone();
    sorted.sort_by_key(|r| r.base_host_virt_addr);
    for pair in sorted.windows(2) {
        if pair[0].base_host_virt_addr + pair[0].size as u64 > pair[1].base_host_virt_addr {
            return Err(Error::Handshake(format!(
                "regions at {:#x} and {:#x} overlap",
                pair[0].base_host_virt_addr, pair[1].base_host_virt_addr
            )));
        }
    }
    Ok(regions)
}

fn excerpt(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// What Firecracker sent: its userfaultfd, the guest memory layout and the
/// connection (kept open: its closing means the VMM is gone).
#[derive(Debug)]
pub struct Handshake {
    /// The VMM's userfaultfd.
    pub uffd: Uffd,
    /// The guest memory regions.
    pub regions: Vec<GuestRegion>,
    /// The connection.
    pub stream: UnixStream,
    /// The VMM's process id (`SO_PEERCRED`), when the kernel reports it.
    pub peer_pid: Option<u32>,
}

/// Accepts one connection on `listener` and receives its handshake.
///
/// # Errors
///
/// As [`receive`]; [`Error::Io`] from `accept`.
pub fn accept(listener: &UnixListener, timeout: Duration) -> Result<Handshake, Error> {
    let (stream, _) = listener.accept().map_err(|e| Error::io("accept", e))?;
    receive(stream, timeout)
}

/// Receives the handshake on a connected stream: one `recvmsg(2)` that
/// must carry exactly one descriptor, a userfaultfd, and the JSON layout
/// ([`parse_regions`]), within `timeout`.
///
/// # Errors
///
/// [`Error::Handshake`]: nothing arrived in time, the peer closed first,
/// no descriptor or more than one came, the descriptor is not a
/// userfaultfd, the message was truncated, or the JSON is malformed.
/// [`Error::Io`] from `recvmsg` or `setsockopt`.
pub fn receive(stream: UnixStream, timeout: Duration) -> Result<Handshake, Error> {
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| Error::io("setsockopt(SO_RCVTIMEO)", e))?;
    let peer_pid = rustix::net::sockopt::socket_peercred(&stream)
        .ok()
        .map(|c| c.pid.as_raw_nonzero().get() as u32);
    let mut data = vec![0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        let mut iov = [IoSliceMut::new(&mut data)];
        match rustix::net::recvmsg(&stream, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(m) => break m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => {
                return Err(Error::Handshake(format!(
                    "the VMM sent no handshake within {timeout:?}"
                )));
            }
            Err(e) => return Err(Error::io("recvmsg", e)),
        }
    };
    let mut fds: Vec<OwnedFd> = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        return Err(Error::Handshake(
            "the ancillary data was truncated (more descriptors than one userfaultfd)".into(),
        ));
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Err(Error::Handshake(
            "the VMM closed the connection before sending its handshake".into(),
        ));
    }
    if msg.bytes >= MAX_MESSAGE {
        return Err(Error::Handshake(format!(
            "the guest memory layout is larger than {MAX_MESSAGE} bytes"
        )));
    }
    let regions = parse_regions(&data[..msg.bytes]);
    let uffd = match fds.len() {
        0 => {
            return Err(Error::Handshake(
                "the message carried no userfaultfd (no SCM_RIGHTS descriptor)".into(),
            ));
        }
        1 => fds.pop().expect("one descriptor"),
        n => {
            return Err(Error::Handshake(format!(
                "the message carried {n} descriptors; expected one userfaultfd"
            )));
        }
    };
    let regions = regions?;
    let uffd = Uffd::from_received(uffd).map_err(|e| Error::Handshake(e.to_string()))?;
    Ok(Handshake {
        uffd,
        regions,
        stream,
        peer_pid,
    })
}

impl Handshake {
    /// Checks the layout against a memory file of `file_len` bytes.
    ///
    /// # Errors
    ///
    /// [`Error::Handshake`] naming a region that extends past the file.
    pub fn check_file(&self, file_len: u64) -> Result<(), Error> {
        for (i, r) in self.regions.iter().enumerate() {
            if r.offset + r.size as u64 > file_len {
                return Err(Error::Handshake(format!(
                    "region {i} ({r:?}) extends past the end of the {file_len}-byte memory file"
                )));
            }
        }
        Ok(())
    }

    /// The [`Range`]s to serve: each region registered again with the
    /// received userfaultfd (MISSING, as the VMM registered it; this only
    /// returns the kernel's view of the range and changes nothing).
    ///
    /// # Safety
    ///
    /// The resolution ioctls act on the address space the userfaultfd was
    /// created for. The caller must ensure that is not this process's own
    /// (a userfaultfd created by another process, which is what
    /// Firecracker sends), or else meet the contract of
    /// [`Uffd::register`] for every region.
    ///
    /// # Errors
    ///
    /// [`Error::Uffd`] from `UFFDIO_REGISTER` (`EINVAL`: a region is not
    /// mapped as announced; `ESRCH`: the VMM has exited).
    pub unsafe fn ranges(&self) -> Result<Vec<Range>, Error> {
        let mut ranges = Vec::with_capacity(self.regions.len());
        for r in &self.regions {
            // SAFETY: the caller's contract.
            let reg = unsafe {
                self.uffd.register(
                    r.base_host_virt_addr as usize,
                    r.size,
                    RegisterMode::MISSING,
                )
            }?;
            ranges.push(Range::with_page_size(reg, r.offset, r.page_size));
        }
        Ok(ranges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_both_page_size_spellings() {
        let new = br#"[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096,"page_size_kib":4096}]"#;
        let old = br#"[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size_kib":4096}]"#;
        for json in [&new[..], &old[..]] {
            let r = parse_regions(json).unwrap();
            assert_eq!(
                r,
                vec![GuestRegion {
                    base_host_virt_addr: 4096,
                    size: 8192,
                    offset: 0,
                    page_size: 4096
                }]
            );
        }
    }

    #[test]
    fn refuses_bad_layouts() {
        let err = |json: &str| parse_regions(json.as_bytes()).unwrap_err().to_string();
        assert!(err("not json").contains("malformed"));
        assert!(err("[]").contains("no region"));
        assert!(
            err(r#"[{"base_host_virt_addr":4096,"size":8192,"offset":0}]"#).contains("neither")
        );
        assert!(
            err(r#"[{"base_host_virt_addr":4097,"size":8192,"offset":0,"page_size":4096}]"#)
                .contains("aligned")
        );
        assert!(
            err(r#"[{"base_host_virt_addr":4096,"size":100,"offset":0,"page_size":4096}]"#)
                .contains("multiple")
        );
        assert!(
            err(r#"[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":3000}]"#)
                .contains("power of two")
        );
        assert!(err(r#"[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096},{"base_host_virt_addr":8192,"size":4096,"offset":8192,"page_size":4096}]"#).contains("overlap"));
    }
}
