//! Page sources: where the contents of guest memory come from.
//!
//! | source | what it serves |
//! |---|---|
//! | [`FileSource`] | a snapshot file, read with `pread(2)`; its holes are known to be zero |
//! | [`MappedSource`] | a snapshot file through a private mapping of it: `UFFDIO_COPY` copies straight from the page cache |
//! | [`ZeroSource`] | zeros (a fresh guest, or memory that must start cleared) |
//! | [`LayeredSource`] | a diff snapshot over a base: the diff's data where it has any, the base in its holes |
//!
//! The server asks [`PageSource::is_zero`] before reading: a range that is
//! known to be zero (a hole in a sparse snapshot) is resolved with
//! `UFFDIO_ZEROPAGE` without reading or copying anything. Pages that are
//! read and turn out all zero are resolved the same way.
//!
//! A source that is a mapping ([`PageSource::mapped`]) is never read: the
//! kernel copies each resolved range from it in one step (one copy of each
//! byte, where `read_at` into a buffer and `UFFDIO_COPY` from it make two).
//! Its zero pages are known from its holes alone.

use std::fmt;
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::AsFd as _;
use std::path::Path;
use std::sync::Arc;

use userfault::mem::{Mapping, Sharing};

/// Where page contents come from, addressed by byte offset.
///
/// Implementations must be safe to call from several threads at once.
pub trait PageSource: Send + Sync + fmt::Debug {
    /// Length in bytes. Reads past it return zeros.
    fn len(&self) -> u64;

    /// True when the source has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` with the bytes at `offset` (zeros past [`len`](Self::len)).
    ///
    /// # Errors
    ///
    /// The I/O error of the underlying read (`pread(2)`), naming the offset.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// True when `[offset, offset + len)` is known to be all zeros without
    /// reading it (a hole, or past the end). False means "unknown".
    fn is_zero(&self, offset: u64, len: u64) -> bool {
        let _ = (offset, len);
        false
    }

    /// The extent `[start, end)` around byte `offset` in which no range is
    /// known to be all zeros ([`is_zero`](Self::is_zero) is false for every
    /// part of it): a data extent of the file, for a caller that resolves
    /// page after page of it to check each page with two compares instead
    /// of asking again. `None` (the default) when the source cannot say, or
    /// `offset` is in a hole.
    fn data_extent(&self, offset: u64) -> Option<(u64, u64)> {
        let _ = offset;
        None
    }

    /// The bytes `[offset, offset + len)` as a range of the source's own
    /// file mapping, for `UFFDIO_COPY` to copy from directly; `None` (the
    /// default) when the source is not a mapping or the range is not all
    /// inside it, and the bytes are then read with
    /// [`read_at`](Self::read_at).
    ///
    /// Only [`MappedSource`] (and a [`LayeredSource`] over one, for a range
    /// inside one layer) hands out a [`Mapped`]. An implementation must
    /// hand out one mapping laid out as the source: when `mapped(0, len)`
    /// is `Some`, the byte at any `offset` is at its address plus `offset`
    /// (the server copies single pages from there).
    fn mapped(&self, offset: u64, len: usize) -> Option<Mapped<'_>> {
        let _ = (offset, len);
        None
    }
}

impl<T: PageSource + ?Sized> PageSource for Arc<T> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
    fn is_zero(&self, offset: u64, len: u64) -> bool {
        (**self).is_zero(offset, len)
    }
    fn data_extent(&self, offset: u64) -> Option<(u64, u64)> {
        (**self).data_extent(offset)
    }
    fn mapped(&self, offset: u64, len: usize) -> Option<Mapped<'_>> {
        (**self).mapped(offset, len)
    }
}

/// A range of a [`MappedSource`]'s private file mapping
/// ([`PageSource::mapped`]): an address and a length the kernel copies
/// from, never a reference (the file's pages can change or vanish under a
/// mapping, so Rust code never reads them).
#[derive(Debug, Clone, Copy)]
pub struct Mapped<'a> {
    addr: *const u8,
    len: usize,
    _mapping: PhantomData<&'a Mapping>,
}

impl Mapped<'_> {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty range.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The part from `at`, `len` bytes long (clipped to this range).
    pub(crate) fn slice(&self, at: usize, len: usize) -> Mapped<'_> {
        let at = at.min(self.len);
        Mapped {
            addr: self.addr.wrapping_add(at),
            len: len.min(self.len - at),
            _mapping: PhantomData,
        }
    }

    /// The first address, for `UFFDIO_COPY`.
    pub(crate) fn addr(&self) -> *const u8 {
        self.addr
    }
}

/// A snapshot file read with `pread(2)`.
///
/// Where its holes are is read once, when it is opened
/// (`lseek(SEEK_DATA/SEEK_HOLE)` over the whole file), so that asking
/// whether a range is zero costs no system call while serving: a snapshot
/// file must not change while it is served.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    len: u64,
    /// The extents `[start, end)` that hold data, in order.
    data: Vec<(u64, u64)>,
}

impl FileSource {
    /// `open(path, O_RDONLY)`, `fstat` and a walk of its holes: serves the
    /// file as it is now.
    ///
    /// # Errors
    ///
    /// The `open` or `fstat` error, naming the path.
    pub fn open(path: impl AsRef<Path>) -> io::Result<FileSource> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| context(e, format!("open {}", path.display())))?;
        FileSource::new(file).map_err(|e| context(e, format!("fstat {}", path.display())))
    }

    /// Serves an open file (its length as `fstat` reports it now, its holes
    /// as `lseek(SEEK_DATA/SEEK_HOLE)` finds them now).
    ///
    /// # Errors
    ///
    /// The `fstat` error.
    pub fn new(file: File) -> io::Result<FileSource> {
        let len = file.metadata()?.len();
        let mut data = Vec::new();
        let mut at = 0;
        while at < len {
            let start = match rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(at)) {
                Ok(start) => start,
                Err(rustix::io::Errno::NXIO) => break,
                // A file system without SEEK_DATA: all data.
                Err(_) => {
                    data = vec![(0, len)];
                    break;
                }
            };
            let end = rustix::fs::seek(&file, rustix::fs::SeekFrom::Hole(start))
                .unwrap_or(len)
                .clamp(start + 1, len.max(start + 1));
            data.push((start, end));
            at = end;
        }
        Ok(FileSource { file, len, data })
    }

    /// The file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The first offset at or after `offset` that holds data, or `None`
    /// when only holes follow.
    fn next_data(&self, offset: u64) -> Option<u64> {
        let i = self.data.partition_point(|e| e.1 <= offset);
        self.data.get(i).map(|e| e.0.max(offset))
    }

    /// The first hole at or after `offset` (the end of the file counts as a
    /// hole).
    fn next_hole(&self, offset: u64) -> u64 {
        let i = self.data.partition_point(|e| e.1 <= offset);
        match self.data.get(i) {
            Some(&(start, end)) if start <= offset => end,
            _ => offset.min(self.len),
        }
    }
}

impl PageSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let avail = self.len.saturating_sub(offset);
        let n = buf.len().min(usize::try_from(avail).unwrap_or(usize::MAX));
        let (mut head, tail) = buf.split_at_mut(n);
        let mut at = offset;
        while !head.is_empty() {
            match rustix::io::pread(&self.file, &mut *head, at) {
                Ok(0) => {
                    return Err(context(
                        io::ErrorKind::UnexpectedEof.into(),
                        format!("pread {} bytes at {at:#x}: the file shrank", head.len()),
                    ));
                }
                Ok(got) => {
                    head = &mut head[got..];
                    at += got as u64;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(context(
                        e.into(),
                        format!("pread {} bytes at {at:#x}", head.len()),
                    ));
                }
            }
        }
        if !tail.is_empty() {
            tail.fill(0);
        }
        Ok(())
    }

    fn is_zero(&self, offset: u64, len: u64) -> bool {
        offset >= self.len
            || self
                .next_data(offset)
                .is_none_or(|at| at >= offset.saturating_add(len))
    }

    fn data_extent(&self, offset: u64) -> Option<(u64, u64)> {
        let i = self.data.partition_point(|e| e.1 <= offset);
        self.data.get(i).copied().filter(|e| e.0 <= offset)
    }
}

/// How much of a [`MappedSource`]'s file is brought in when it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Prefault {
    /// Nothing: each resolution faults in the source pages it copies.
    None,
    /// `madvise(MADV_WILLNEED)`: the file is read ahead into the page
    /// cache, the mapping's page tables are filled as resolutions copy.
    WillNeed,
    /// `madvise(MADV_POPULATE_READ)` (Linux 5.14): the page cache and the
    /// mapping's page tables are filled before serving, so a resolution
    /// copies without a single fault on the source (kernels without it:
    /// as [`WillNeed`](Self::WillNeed)). What Firecracker's example handler
    /// does with `MAP_POPULATE`.
    Populate,
}

/// A snapshot file served through a private mapping of it (`mmap(2)`):
/// `UFFDIO_COPY` copies each resolved range straight from the page cache,
/// one copy of each byte instead of `pread(2)` into a buffer and a copy
/// from it.
///
/// Its holes are mapped once at open as [`FileSource`]'s are, and are its
/// only zero detection: the pager never reads the mapping itself, so data
/// pages that happen to be all zero are copied (a [`FileSource`] maps them
/// as zero pages after reading them).
///
/// The file must not change while it is served, as for [`FileSource`]. If
/// it is truncated anyway, a resolution from the vanished part fails with
/// `EFAULT` (the kernel cannot read the source) and the server stops with
/// that error; nothing in this process touches the mapping, so there is no
/// `SIGBUS`.
#[derive(Debug)]
pub struct MappedSource {
    file: FileSource,
    /// `None` for an empty file (a mapping has at least one byte).
    map: Option<Mapping>,
}

impl MappedSource {
    /// `open(path, O_RDONLY)`, its hole map, and a private mapping of the
    /// whole file, prefaulted as `prefault` says.
    ///
    /// # Errors
    ///
    /// The `open`, `fstat` or `mmap` error, naming the path.
    pub fn open(path: impl AsRef<Path>, prefault: Prefault) -> io::Result<MappedSource> {
        let path = path.as_ref();
        MappedSource::new(FileSource::open(path)?, prefault)
            .map_err(|e| context(e, format!("mmap {}", path.display())))
    }

    /// Maps an open [`FileSource`]'s file (`mmap(MAP_PRIVATE)` of its
    /// length as it was opened), prefaulted as `prefault` says.
    ///
    /// # Errors
    ///
    /// The `mmap` error (`ENODEV`: the file system cannot map files), or
    /// `EFBIG` for a file larger than the address space. A prefault the
    /// kernel refuses is not an error: it only costs faults later.
    pub fn new(file: FileSource, prefault: Prefault) -> io::Result<MappedSource> {
        let len =
            usize::try_from(file.len).map_err(|_| io::Error::from(userfault::Errno::EFBIG))?;
        let map = if len == 0 {
            None
        } else {
            let map =
                Mapping::file(file.file.as_fd(), 0, len, Sharing::Private).map_err(|e| match e
                    .errno()
                {
                    Some(errno) => io::Error::from(errno),
                    None => io::Error::other(e.to_string()),
                })?;
            let advise = |advice| {
                // SAFETY: advice that changes no contents (read-ahead, or
                // read faults that map page-cache pages), on the whole
                // range of a mapping this value owns and nothing else uses.
                unsafe { rustix::mm::madvise(map.as_ptr().cast(), map.len(), advice) }
            };
            match prefault {
                Prefault::None => {}
                Prefault::WillNeed => {
                    let _ = advise(rustix::mm::Advice::WillNeed);
                }
                Prefault::Populate => {
                    if advise(rustix::mm::Advice::LinuxPopulateRead).is_err() {
                        let _ = advise(rustix::mm::Advice::WillNeed);
                    }
                }
            }
            Some(map)
        };
        Ok(MappedSource { file, map })
    }

    /// The file.
    pub fn file(&self) -> &File {
        self.file.file()
    }
}

impl PageSource for MappedSource {
    fn len(&self) -> u64 {
        self.file.len
    }

    /// Reads with `pread(2)`, as [`FileSource`] (for callers that want the
    /// bytes; the server copies from [`mapped`](PageSource::mapped)).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_at(offset, buf)
    }

    fn is_zero(&self, offset: u64, len: u64) -> bool {
        self.file.is_zero(offset, len)
    }

    fn data_extent(&self, offset: u64) -> Option<(u64, u64)> {
        self.file.data_extent(offset)
    }

    fn mapped(&self, offset: u64, len: usize) -> Option<Mapped<'_>> {
        let map = self.map.as_ref()?;
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(len)?;
        if len == 0 || end > map.len() {
            return None;
        }
        Some(Mapped {
            addr: map.as_ptr().wrapping_add(start).cast_const(),
            len,
            _mapping: PhantomData,
        })
    }
}

/// Zeros, `len` bytes of them.
#[derive(Debug, Clone, Copy)]
pub struct ZeroSource {
    len: u64,
}

impl ZeroSource {
    /// A source of `len` zero bytes.
    pub fn new(len: u64) -> ZeroSource {
        ZeroSource { len }
    }
}

impl PageSource for ZeroSource {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, _offset: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn is_zero(&self, _offset: u64, _len: u64) -> bool {
        true
    }
}

/// A diff snapshot over a base: the diff file's data where it has any,
/// the base where the diff has holes.
///
/// This is how diff snapshots are laid out (Firecracker writes only the
/// dirty pages of a diff snapshot into a sparse file of the guest's size):
/// which pages the diff holds is read from the file system with
/// `lseek(SEEK_DATA/SEEK_HOLE)`, so the diff must be on a file system that
/// keeps holes (ext4, xfs, btrfs, tmpfs).
#[derive(Debug)]
pub struct LayeredSource {
    diff: FileSource,
    base: Arc<dyn PageSource>,
}

impl LayeredSource {
    /// `diff` over `base`.
    pub fn new(diff: FileSource, base: Arc<dyn PageSource>) -> LayeredSource {
        LayeredSource { diff, base }
    }

    /// Calls `f(offset, len, from_diff)` for the pieces of `[offset, offset + len)`.
    fn pieces(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(u64, u64, bool) -> io::Result<()>,
    ) -> io::Result<()> {
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let data = self.diff.next_data(at).unwrap_or(end).min(end);
            if data > at {
                f(at, data - at, false)?;
                at = data;
                continue;
            }
            let hole = self.diff.next_hole(at).min(end).max(at + 1);
            f(at, hole - at, true)?;
            at = hole;
        }
        Ok(())
    }
}

impl PageSource for LayeredSource {
    fn len(&self) -> u64 {
        self.diff.len().max(self.base.len())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.pieces(offset, buf.len() as u64, |at, len, from_diff| {
            let start = (at - offset) as usize;
            let out = &mut buf[start..start + len as usize];
            if from_diff {
                self.diff.read_at(at, out)
            } else {
                self.base.read_at(at, out)
            }
        })
    }

    fn is_zero(&self, offset: u64, len: u64) -> bool {
        let mut zero = true;
        let _ = self.pieces(offset, len, |at, len, from_diff| {
            zero &= !from_diff && self.base.is_zero(at, len);
            Ok(())
        });
        zero
    }

    /// The base's mapping, for a range that lies wholly in the diff's holes
    /// (the diff itself is read with `pread(2)`).
    fn mapped(&self, offset: u64, len: usize) -> Option<Mapped<'_>> {
        let in_base = self
            .diff
            .next_data(offset)
            .is_none_or(|at| at >= offset.saturating_add(len as u64));
        if in_base {
            self.base.mapped(offset, len)
        } else {
            None
        }
    }
}

/// True when every byte of `page` is zero.
pub(crate) fn all_zero(page: &[u8]) -> bool {
    // OR-folding fixed-size blocks vectorises; the early exit per block
    // keeps data pages cheap.
    page.chunks(256)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

fn context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::os::unix::fs::FileExt as _;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("userfault-pager-src-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn file_source_reads_and_zero_fills_past_the_end() {
        let path = temp("plain");
        std::fs::write(&path, [7u8; 5000]).unwrap();
        let src = FileSource::open(&path).unwrap();
        assert_eq!(src.len(), 5000);
        let mut buf = [1u8; 8192];
        src.read_at(0, &mut buf).unwrap();
        assert!(buf[..5000].iter().all(|&b| b == 7));
        assert!(buf[5000..].iter().all(|&b| b == 0));
        assert!(src.is_zero(8192, 4096));
        assert!(!src.is_zero(0, 4096));
    }

    #[test]
    fn open_names_the_path() {
        let err = FileSource::open("/nonexistent/snapshot").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/snapshot"), "{err}");
    }

    #[test]
    fn layered_source_takes_the_diff_where_it_has_data() {
        const PAGE: u64 = 4096;
        let base_path = temp("base");
        std::fs::write(&base_path, vec![0xbb; 8 * PAGE as usize]).unwrap();
        // A sparse diff of 8 pages with data in pages 2 and 5.
        let diff_path = temp("diff");
        let f = File::create(&diff_path).unwrap();
        f.set_len(8 * PAGE).unwrap();
        f.write_all_at(&[0xd2; PAGE as usize], 2 * PAGE).unwrap();
        f.write_all_at(&[0xd5; PAGE as usize], 5 * PAGE).unwrap();
        (&f).flush().unwrap();
        let diff = FileSource::open(&diff_path).unwrap();
        // Only a file system that keeps holes can tell the layers apart.
        if diff.next_data(0) != Some(2 * PAGE) {
            eprintln!(
                "SKIP layered_source_takes_the_diff_where_it_has_data: no holes in {}",
                diff_path.display()
            );
            return;
        }
        let base: Arc<dyn PageSource> = Arc::new(FileSource::open(&base_path).unwrap());
        let layered = LayeredSource::new(diff, base);
        let mut buf = vec![0u8; 8 * PAGE as usize];
        layered.read_at(0, &mut buf).unwrap();
        for (i, page) in buf.chunks(PAGE as usize).enumerate() {
            let want = match i {
                2 => 0xd2,
                5 => 0xd5,
                _ => 0xbb,
            };
            assert!(page.iter().all(|&b| b == want), "page {i}");
        }
        // A read that starts inside a diff page and ends in the base.
        let mut part = vec![0u8; 2 * PAGE as usize];
        layered.read_at(5 * PAGE + 100, &mut part).unwrap();
        assert!(part[..PAGE as usize - 100].iter().all(|&b| b == 0xd5));
        assert!(part[PAGE as usize - 100..].iter().all(|&b| b == 0xbb));
        assert!(!layered.is_zero(0, PAGE));
    }

    #[test]
    fn file_source_maps_its_holes_at_open() {
        const PAGE: u64 = 4096;
        let path = temp("sparse");
        let f = File::create(&path).unwrap();
        f.set_len(8 * PAGE).unwrap();
        f.write_all_at(&[0x22; PAGE as usize], 2 * PAGE).unwrap();
        f.write_all_at(&[0x55; PAGE as usize], 5 * PAGE).unwrap();
        let src = FileSource::open(&path).unwrap();
        if src.next_data(0) != Some(2 * PAGE) {
            eprintln!(
                "SKIP file_source_maps_its_holes_at_open: no holes in {}",
                path.display()
            );
            return;
        }
        assert!(src.is_zero(0, 2 * PAGE));
        assert!(!src.is_zero(0, 3 * PAGE));
        assert!(!src.is_zero(2 * PAGE + 100, 10));
        assert!(src.is_zero(3 * PAGE, 2 * PAGE));
        assert!(!src.is_zero(4 * PAGE, 2 * PAGE));
        assert!(src.is_zero(6 * PAGE, 2 * PAGE));
        assert!(src.is_zero(8 * PAGE, PAGE));
        assert_eq!(src.next_hole(2 * PAGE), 3 * PAGE);
        assert_eq!(src.next_hole(5 * PAGE + 1), 6 * PAGE);
        assert_eq!(src.next_data(3 * PAGE), Some(5 * PAGE));
        assert_eq!(src.next_data(6 * PAGE), None);
        // The map is what the file was at open: later writes are not seen.
        f.write_all_at(&[0x77; PAGE as usize], 0).unwrap();
        assert!(src.is_zero(0, PAGE));
        let mut buf = vec![0u8; 3 * PAGE as usize];
        src.read_at(PAGE, &mut buf).unwrap();
        assert!(buf[..PAGE as usize].iter().all(|&b| b == 0));
        assert!(
            buf[PAGE as usize..2 * PAGE as usize]
                .iter()
                .all(|&b| b == 0x22)
        );
    }

    #[test]
    fn mapped_source_hands_out_ranges_inside_the_file_only() {
        const PAGE: u64 = 4096;
        let path = temp("mapped");
        let f = File::create(&path).unwrap();
        f.set_len(8 * PAGE).unwrap();
        f.write_all_at(&[0x33; PAGE as usize], 3 * PAGE).unwrap();
        for prefault in [Prefault::None, Prefault::WillNeed, Prefault::Populate] {
            let src = MappedSource::open(&path, prefault).unwrap();
            assert_eq!(src.len(), 8 * PAGE);
            let whole = src.mapped(0, 8 * PAGE as usize).unwrap();
            assert_eq!(whole.len(), 8 * PAGE as usize);
            let part = src.mapped(3 * PAGE, PAGE as usize).unwrap();
            assert_eq!(part.addr(), whole.addr().wrapping_add(3 * PAGE as usize));
            assert_eq!(
                whole.slice(7 * PAGE as usize, 2 * PAGE as usize).len(),
                PAGE as usize
            );
            // Past the end, across it, or empty: no mapping (the caller
            // reads, and gets zeros past the end).
            assert!(src.mapped(8 * PAGE, PAGE as usize).is_none());
            assert!(src.mapped(7 * PAGE, 2 * PAGE as usize).is_none());
            assert!(src.mapped(0, 0).is_none());
            assert!(src.mapped(u64::MAX, 1).is_none());
            let mut buf = vec![0u8; 2 * PAGE as usize];
            src.read_at(3 * PAGE, &mut buf).unwrap();
            assert!(buf[..PAGE as usize].iter().all(|&b| b == 0x33));
            assert!(buf[PAGE as usize..].iter().all(|&b| b == 0));
            assert!(!src.is_zero(3 * PAGE, PAGE));
            assert!(src.is_zero(8 * PAGE, PAGE));
        }
        let empty = temp("mapped-empty");
        File::create(&empty).unwrap();
        let src = MappedSource::open(&empty, Prefault::Populate).unwrap();
        assert_eq!(src.len(), 0);
        assert!(src.mapped(0, 4096).is_none());
        let err = MappedSource::open("/nonexistent/snapshot", Prefault::None).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/snapshot"), "{err}");
    }

    #[test]
    fn layered_source_maps_only_what_lies_in_the_base() {
        const PAGE: u64 = 4096;
        let base_path = temp("mapped-base");
        std::fs::write(&base_path, vec![0xbb; 8 * PAGE as usize]).unwrap();
        let diff_path = temp("mapped-diff");
        let f = File::create(&diff_path).unwrap();
        f.set_len(8 * PAGE).unwrap();
        f.write_all_at(&[0xd2; PAGE as usize], 2 * PAGE).unwrap();
        let diff = FileSource::open(&diff_path).unwrap();
        if diff.next_data(0) != Some(2 * PAGE) {
            eprintln!(
                "SKIP layered_source_maps_only_what_lies_in_the_base: no holes in {}",
                diff_path.display()
            );
            return;
        }
        let base: Arc<dyn PageSource> =
            Arc::new(MappedSource::open(&base_path, Prefault::None).unwrap());
        let layered = LayeredSource::new(diff, base);
        assert!(layered.mapped(0, 2 * PAGE as usize).is_some());
        assert!(layered.mapped(3 * PAGE, 5 * PAGE as usize).is_some());
        assert!(layered.mapped(PAGE, 2 * PAGE as usize).is_none());
        assert!(layered.mapped(2 * PAGE, PAGE as usize).is_none());
    }

    #[test]
    fn zero_detection() {
        let mut page = vec![0u8; 4096];
        assert!(all_zero(&page));
        page[4095] = 1;
        assert!(!all_zero(&page));
        assert!(ZeroSource::new(10).is_zero(0, 10));
    }
}
