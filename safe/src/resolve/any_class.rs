//! The escape hatch: regions and faults whose class is known only at run
//! time, with the typed layer's rules checked when a resolution is asked
//! for.

use std::os::fd::AsFd;
use std::sync::Arc;

use super::page_state::FILLED;
use super::{Class, ContinueOnly, CopyCapable, Fault, Region, Resolution};
use crate::backing::{BackedMapping, Backing, Claimed};
use crate::error::{Errno, Error, Result};
use crate::mem::{Mapping, Sharing};
use crate::uffd::{CopyMode, Event, FaultKind, RegisterMode, Registration, Uffd};

/// A region whose class is known only at run time.
#[derive(Debug)]
pub enum AnyRegion<B = ()> {
    /// A copy-capable region.
    CopyCapable(Region<CopyCapable, B>),
    /// A CONTINUE-only region.
    ContinueOnly(Region<ContinueOnly, B>),
}

impl<B: Backing> AnyRegion<B> {
    /// `ioctl(uffd, UFFDIO_REGISTER, MISSING | MINOR)` on a file mapping,
    /// with the class taken from what the kernel does: a mask without
    /// `UFFDIO_COPY` makes it CONTINUE-only; a mask with it is only an upper
    /// bound, so a `UFFDIO_COPY` is tried on a scratch one-page mapping of
    /// the file (on a page the file's state holds meanwhile, restored
    /// afterwards): refused with `EINVAL`, the region is CONTINUE-only.
    ///
    /// # Safety
    ///
    /// As for [`Uffd::register`].
    ///
    /// # Errors
    ///
    /// The registration's errors; `Unsupported` when the mask has neither;
    /// the errors of the trial copy's scratch userfaultfd and mapping.
    pub unsafe fn register(uffd: Arc<Uffd>, mapping: Arc<BackedMapping<B>>) -> Result<Self> {
        let mode = RegisterMode::MISSING | RegisterMode::MINOR;
        // SAFETY: forwarded to this function's contract.
        let copy = unsafe { Region::copy_capable_file(uffd.clone(), mapping.clone(), mode) };
        match copy {
            Ok(region) => {
                if copy_works(&mapping)? {
                    return Ok(AnyRegion::CopyCapable(region));
                }
                drop(region);
                // SAFETY: forwarded to this function's contract.
                let region = unsafe { Region::continue_only(uffd, mapping) }?;
                Ok(AnyRegion::ContinueOnly(region))
            }
            // No COPY in the mask (the region unregistered itself): try the
            // class that needs only CONTINUE.
            Err(Error::Unsupported { .. }) => {
                // SAFETY: forwarded to this function's contract.
                let region = unsafe { Region::continue_only(uffd, mapping) }.map_err(|e| match e {
                    Error::Unsupported { .. } => Error::unsupported(
                        "fault resolution on this range",
                        None,
                        "the kernel's ioctl mask offers neither UFFDIO_COPY nor UFFDIO_CONTINUE",
                    ),
                    e => e,
                })?;
                Ok(AnyRegion::ContinueOnly(region))
            }
            Err(e) => Err(e),
        }
    }
}

/// Does `UFFDIO_COPY` into a mapping of this file work? Tried on a scratch
/// one-page shared mapping of the mapping's first page, registered MISSING
/// with a scratch userfaultfd, while the page state holds that page: `Ok`
/// or `EEXIST` (the page is there) mean yes, `EINVAL` no. A page the copy
/// brought into the file is punched out again.
fn copy_works<B: Backing>(mapping: &BackedMapping<B>) -> Result<bool> {
    let state = mapping.state();
    let page = state.page_size();
    let offset = mapping.file_offset();
    let claim = state.claim_any(offset / page as u64);
    let scratch_uffd = Uffd::builder().non_blocking(true).create()?;
    let scratch = Mapping::file(state.backing().as_fd(), offset, page, Sharing::Shared)?;
    // SAFETY: `scratch` is a fresh mapping private to this function that no
    // Rust reference points into and nothing accesses; only the copy below
    // touches it.
    let reg = unsafe { scratch_uffd.register(scratch.addr(), page, RegisterMode::MISSING)? };
    let zeros = vec![0u8; page];
    let works = match scratch_uffd.copy(&reg, scratch.addr(), &zeros, CopyMode::DONTWAKE) {
        Ok(_) => {
            if claim.prev() != FILLED {
                // The page was not in the file: take the zeros out again.
                state
                    .backing()
                    .punch_hole(offset, page as u64, Claimed::new())?;
            }
            true
        }
        Err(e) if e.is_exists() => true,
        Err(e) if e.errno() == Some(Errno::EINVAL) => false,
        Err(e) => return Err(e),
    };
    drop(claim);
    Ok(works)
}

impl<B> AnyRegion<B> {
    /// The class's name (`"copy-capable"` or `"CONTINUE-only"`).
    pub fn class_name(&self) -> &'static str {
        match self {
            AnyRegion::CopyCapable(_) => CopyCapable::NAME,
            AnyRegion::ContinueOnly(_) => ContinueOnly::NAME,
        }
    }

    /// The registration.
    pub fn registration(&self) -> &Registration {
        match self {
            AnyRegion::CopyCapable(r) => r.registration(),
            AnyRegion::ContinueOnly(r) => r.registration(),
        }
    }

    /// A fault of this region, typed at run time, taking the event as
    /// [`Region::fault`] does; `None` (the event left untaken) for another
    /// event, another userfaultfd's fault or an address outside the region.
    pub fn fault(&self, event: &Event<'_>) -> Option<AnyFault<'_, B>> {
        Some(match self {
            AnyRegion::CopyCapable(r) => AnyFault::CopyCapable(r.fault(event)?),
            AnyRegion::ContinueOnly(r) => AnyFault::ContinueOnly(r.fault(event)?),
        })
    }

    /// A fault at `address` of `kind`, for a fault decoded elsewhere; `None`
    /// when the address is outside the region.
    pub fn fault_at(&self, address: usize, kind: FaultKind) -> Option<AnyFault<'_, B>> {
        Some(match self {
            AnyRegion::CopyCapable(r) => AnyFault::CopyCapable(r.fault_at(address, kind)?),
            AnyRegion::ContinueOnly(r) => AnyFault::ContinueOnly(r.fault_at(address, kind)?),
        })
    }
}

/// A fault whose region's class is known only at run time: the escape
/// hatch. Each method checks what the typed API enforces at compile time
/// and returns an error for a resolution the class does not allow (the
/// fault is then woken, not lost).
#[derive(Debug)]
pub enum AnyFault<'r, B> {
    /// A fault of a copy-capable region.
    CopyCapable(Fault<'r, CopyCapable, B>),
    /// A fault of a CONTINUE-only region.
    ContinueOnly(Fault<'r, ContinueOnly, B>),
}

fn not_allowed(op: &'static str, what: &str) -> Error {
    Error::invalid(
        op,
        format!("{what}; the fault was woken and will be raised again"),
    )
}

impl<B: Backing> AnyFault<'_, B> {
    /// Resolves a MISSING fault with `UFFDIO_COPY`.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when the fault is not MISSING or its region is
    /// CONTINUE-only; otherwise as [`MissingFault::copy`](super::MissingFault::copy).
    pub fn copy(self, data: &[u8]) -> Result<Resolution> {
        match self {
            AnyFault::CopyCapable(Fault::Missing(f)) => f.copy(data),
            AnyFault::ContinueOnly(Fault::Missing(_)) => Err(not_allowed(
                "UFFDIO_COPY",
                "a MISSING fault on a CONTINUE-only range is resolved by write_then_continue, never UFFDIO_COPY",
            )),
            _ => Err(not_allowed(
                "UFFDIO_COPY",
                "only MISSING faults are resolved by copying",
            )),
        }
    }

    /// Resolves a MISSING fault by filling the backing and `UFFDIO_CONTINUE`.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when the fault is not MISSING or its region is
    /// copy-capable; otherwise as
    /// [`MissingFault::write_then_continue`](super::MissingFault::write_then_continue).
    pub fn write_then_continue(self, data: &[u8]) -> Result<Resolution> {
        match self {
            AnyFault::ContinueOnly(Fault::Missing(f)) => f.write_then_continue(data),
            AnyFault::CopyCapable(Fault::Missing(_)) => Err(not_allowed(
                "write_then_continue",
                "the region is copy-capable; resolve its MISSING faults with copy",
            )),
            _ => Err(not_allowed(
                "write_then_continue",
                "only MISSING faults are resolved by writing",
            )),
        }
    }

    /// Resolves a MINOR fault with `UFFDIO_CONTINUE`.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when the fault is not MINOR; otherwise as
    /// [`MinorFault::map`](super::MinorFault::map).
    pub fn map(self) -> Result<Resolution> {
        match self {
            AnyFault::CopyCapable(Fault::Minor(f)) => f.map(),
            AnyFault::ContinueOnly(Fault::Minor(f)) => f.map(),
            _ => Err(not_allowed(
                "UFFDIO_CONTINUE",
                "only MINOR faults are resolved by mapping",
            )),
        }
    }

    /// True for a MISSING fault.
    pub fn is_missing(&self) -> bool {
        matches!(
            self,
            AnyFault::CopyCapable(Fault::Missing(_)) | AnyFault::ContinueOnly(Fault::Missing(_))
        )
    }

    /// The faulting page's file offset, where the region has a backing.
    pub fn file_offset(&self) -> Option<u64> {
        match self {
            AnyFault::CopyCapable(Fault::Missing(f)) => f.backing_offset(),
            AnyFault::CopyCapable(Fault::Minor(f)) => f.backing_offset(),
            AnyFault::CopyCapable(Fault::WriteProtect(f)) => f.backing_offset(),
            AnyFault::ContinueOnly(Fault::Missing(f)) => Some(f.file_offset()),
            AnyFault::ContinueOnly(Fault::Minor(f)) => Some(f.file_offset()),
            AnyFault::ContinueOnly(Fault::WriteProtect(f)) => f.backing_offset(),
            AnyFault::CopyCapable(Fault::Rwp(f)) => f.backing_offset(),
            AnyFault::ContinueOnly(Fault::Rwp(f)) => f.backing_offset(),
            AnyFault::CopyCapable(Fault::Unknown(f)) => f.backing_offset(),
            AnyFault::ContinueOnly(Fault::Unknown(f)) => f.backing_offset(),
        }
    }
}
