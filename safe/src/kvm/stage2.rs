//! Stage-2 (KVM userfault) faults and their one resolution: write the page
//! into the backing, then clear the bitmap bit.

use std::fmt;

use super::{MemoryFault, UserfaultBitmap};
use crate::backing::Backing;
use crate::error::{Error, Result};

/// Turns the `KVM_EXIT_MEMORY_FAULT` exits of one KVM userfault slot into
/// [`Stage2Fault`]s: the slot's bitmap, the file that backs it, and where
/// in that file the slot starts (`guest_memfd_offset` for a guest_memfd
/// slot; the mapping's file offset for a memfd).
pub struct Stage2Resolver<'a, B: Backing + ?Sized> {
    bitmap: &'a UserfaultBitmap,
    backing: &'a B,
    backing_offset: u64,
}

impl<'a, B: Backing + ?Sized> Stage2Resolver<'a, B> {
    /// A resolver for the slot of `bitmap`, whose first page is at
    /// `backing_offset` in `backing`.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when the backing's page size is not the bitmap's
    /// (KVM userfault works in base pages; a hugetlb backing cannot be
    /// filled one base page at a time), when `backing_offset` is not
    /// page-aligned, or when the slot does not fit in the backing.
    pub fn new(
        bitmap: &'a UserfaultBitmap,
        backing: &'a B,
        backing_offset: u64,
    ) -> Result<Stage2Resolver<'a, B>> {
        const OP: &str = "stage-2 resolver";
        if backing.page_size() as u64 != bitmap.page_size() {
            return Err(Error::invalid(
                OP,
                format!(
                    "the backing's pages are {:#x} bytes, KVM userfault's {:#x}",
                    backing.page_size(),
                    bitmap.page_size()
                ),
            ));
        }
        if !backing_offset.is_multiple_of(bitmap.page_size()) {
            return Err(Error::invalid(
                OP,
                format!("backing offset {backing_offset:#x} is not page-aligned"),
            ));
        }
        if backing_offset
            .checked_add(bitmap.memory_size())
            .is_none_or(|end| end > backing.size())
        {
            return Err(Error::invalid(
                OP,
                format!(
                    "the slot ({:#x} bytes from offset {backing_offset:#x}) does not fit in the \
                     backing of {:#x} bytes",
                    bitmap.memory_size(),
                    backing.size()
                ),
            ));
        }
        Ok(Stage2Resolver {
            bitmap,
            backing,
            backing_offset,
        })
    }

    /// The stage-2 fault behind a memory-fault exit, if it is a KVM
    /// userfault (USERFAULT flag) inside this slot; `None` otherwise (an
    /// exit for another slot, or a memory fault of another kind). The fault
    /// is for the page that contains the exit's `gpa`; KVM reports one base
    /// page per exit.
    pub fn fault(&self, exit: &MemoryFault) -> Option<Stage2Fault<'a, B>> {
        if !exit.is_userfault() {
            return None;
        }
        let page = self.bitmap.page_of(exit.gpa())?;
        Some(Stage2Fault {
            bitmap: self.bitmap,
            backing: self.backing,
            page,
            offset: self.backing_offset + page * self.bitmap.page_size(),
            exit: *exit,
        })
    }

    /// The slot's bitmap.
    pub fn bitmap(&self) -> &'a UserfaultBitmap {
        self.bitmap
    }
}

impl<B: Backing + ?Sized> fmt::Debug for Stage2Resolver<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stage2Resolver")
            .field("bitmap", self.bitmap)
            .field("backing_offset", &self.backing_offset)
            .finish_non_exhaustive()
    }
}

/// What [`Stage2Fault::resolve`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// This call wrote the page and cleared its bit.
    Populated,
    /// The page was populated already — by a concurrent resolver, an
    /// earlier one, or another path (the backing refused to overwrite it
    /// with `EEXIST`) — and its bit is clear.
    AlreadyPopulated,
}

/// A vCPU (stage-2) access to a page whose userfault bit is set.
///
/// Its only resolution is [`resolve`](Stage2Fault::resolve), which
/// consumes it: write the page into the backing, then clear the bit with a
/// store-release. Never the other order: KVM maps whatever the backing
/// holds once it sees the bit clear (for guest_memfd, a new zero page if
/// nothing was written). After `resolve`, re-enter the vCPU (`KVM_RUN`).
pub struct Stage2Fault<'a, B: Backing + ?Sized> {
    bitmap: &'a UserfaultBitmap,
    backing: &'a B,
    page: u64,
    offset: u64,
    exit: MemoryFault,
}

impl<B: Backing + ?Sized> Stage2Fault<'_, B> {
    /// The exit this fault came from.
    pub fn exit(&self) -> MemoryFault {
        self.exit
    }

    /// Guest physical address of the faulting page.
    pub fn page_gpa(&self) -> u64 {
        self.bitmap.guest_phys_addr() + self.page * self.bitmap.page_size()
    }

    /// Index of the page in the slot (its bit in the bitmap).
    pub fn page(&self) -> u64 {
        self.page
    }

    /// Offset of the page in the backing: where its data goes.
    pub fn backing_offset(&self) -> u64 {
        self.offset
    }

    /// Size of the page: the length `resolve` wants.
    pub fn len(&self) -> usize {
        self.bitmap.page_size() as usize
    }

    /// Always false: a page has bytes.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes `data` (one page) into the backing at the page's offset
    /// ([`Backing::fill`]: `pwrite` for shmem and guest_memfd), then clears
    /// the page's bit with a store-release.
    ///
    /// Concurrent resolvers of the same page (several vCPUs faulting on it,
    /// or several handler threads) all succeed and the page is written
    /// once: the first to claim the page writes it; the others wait until
    /// it is done and return [`Resolution::AlreadyPopulated`]. A resolver
    /// that finds the bit already clear returns `AlreadyPopulated` at once.
    /// If the write fails, the bit stays set, the claim is released (a
    /// waiting resolver then tries itself) and the error is returned. All
    /// resolvers must pass the same data for the page — the snapshot's.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when `data` is not one page; the error of
    /// [`Backing::fill`] otherwise (for a guest_memfd on a kernel without
    /// guest_memfd `write()`: `Unsupported`). An `EEXIST` from the backing
    /// (a guest_memfd without direct map refuses to overwrite a page) means
    /// the page is there: the bit is cleared and `AlreadyPopulated`
    /// returned.
    pub fn resolve(self, data: &[u8]) -> Result<Resolution> {
        if data.len() != self.len() {
            return Err(Error::invalid(
                "stage-2 resolve",
                format!("data is {} bytes, a page is {}", data.len(), self.len()),
            ));
        }
        let (bitmap, page) = (self.bitmap, self.page);
        let mut spins = 0u32;
        loop {
            if bitmap.test(page) != Some(true) {
                return Ok(Resolution::AlreadyPopulated);
            }
            if let Some(_claim) = Claim::take(bitmap, page) {
                // The bit may have been cleared between the test and the
                // claim by a resolver that has since released its claim.
                if bitmap.test(page) != Some(true) {
                    return Ok(Resolution::AlreadyPopulated);
                }
                return match self.backing.fill(self.offset, data) {
                    Ok(()) => {
                        bitmap.clear(page);
                        Ok(Resolution::Populated)
                    }
                    Err(e) if e.is_exists() => {
                        bitmap.clear(page);
                        Ok(Resolution::AlreadyPopulated)
                    }
                    Err(e) => Err(e),
                };
            }
            // Another resolver is writing the page: wait for it.
            while bitmap.is_claimed(page) {
                if spins < 64 {
                    std::hint::spin_loop();
                    spins += 1;
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// A resolver's claim on a page, released when dropped — also when the
/// backing's `fill` panics, so that waiting resolvers never wait forever.
struct Claim<'a> {
    bitmap: &'a UserfaultBitmap,
    page: u64,
}

impl<'a> Claim<'a> {
    fn take(bitmap: &'a UserfaultBitmap, page: u64) -> Option<Claim<'a>> {
        if bitmap.try_claim(page) {
            Some(Claim { bitmap, page })
        } else {
            None
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.bitmap.release_claim(self.page);
    }
}

impl<B: Backing + ?Sized> fmt::Debug for Stage2Fault<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stage2Fault")
            .field("exit", &self.exit)
            .field("page", &self.page)
            .field("backing_offset", &format_args!("{:#x}", self.offset))
            .finish_non_exhaustive()
    }
}
