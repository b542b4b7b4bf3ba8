//! Working sets: the order in which a guest first needed its pages, saved
//! to prefetch them first on the next restore.
//!
//! The file format is documented on [`WorkingSet`].

use std::io;
use std::path::Path;

const MAGIC: &[u8; 8] = b"UFPGWSET";
const VERSION: u32 = 1;
const HEADER: usize = 24;

/// The pages a guest needed, in the order it first needed them.
///
/// # File format (version 1)
///
/// All integers little-endian:
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | magic `UFPGWSET` |
/// | 8 | 4 | version, `1` |
/// | 12 | 4 | page size in bytes (the unit of the entries, a power of two) |
/// | 16 | 8 | entry count `n` |
/// | 24 | 8 × `n` | page numbers in the snapshot file (byte offset / page size), in the order first needed, no duplicates |
/// | 24 + 8`n` | 8 | FNV-1a 64 of every byte before it |
///
/// Entries name file pages, not addresses, so a set recorded on one
/// restore applies to the next, wherever the VMM maps guest memory.
/// Readers refuse other versions, a wrong checksum and a truncated file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingSet {
    page_size: u32,
    pages: Vec<u64>,
}

impl WorkingSet {
    /// An empty set counted in pages of `page_size` bytes.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] unless `page_size` is a power of two.
    pub fn new(page_size: u32) -> io::Result<WorkingSet> {
        if !page_size.is_power_of_two() {
            return Err(invalid(format!(
                "page size {page_size} is not a power of two"
            )));
        }
        Ok(WorkingSet {
            page_size,
            pages: Vec::new(),
        })
    }

    /// A set of the given file pages (duplicates after the first are dropped).
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn from_pages(
        page_size: u32,
        pages: impl IntoIterator<Item = u64>,
    ) -> io::Result<WorkingSet> {
        let mut set = WorkingSet::new(page_size)?;
        let mut seen = std::collections::HashSet::new();
        set.pages = pages.into_iter().filter(|p| seen.insert(*p)).collect();
        Ok(set)
    }

    /// The unit of the entries, in bytes.
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// File page numbers (byte offset / [`page_size`](Self::page_size)),
    /// in the order first needed.
    pub fn pages(&self) -> &[u64] {
        &self.pages
    }

    /// Number of pages.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// True when no page was recorded.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// The file's bytes (the format is above).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 8 * self.pages.len() + 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.page_size.to_le_bytes());
        out.extend_from_slice(&(self.pages.len() as u64).to_le_bytes());
        for p in &self.pages {
            out.extend_from_slice(&p.to_le_bytes());
        }
        let sum = fnv1a(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Parses a working-set file's bytes.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidData`] naming what is wrong: the magic, the
    /// version, the page size, the length or the checksum.
    pub fn from_bytes(bytes: &[u8]) -> io::Result<WorkingSet> {
        if bytes.len() < HEADER + 8 || &bytes[..8] != MAGIC {
            return Err(bad("not a working-set file (no UFPGWSET header)"));
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let version = u32_at(8);
        if version != VERSION {
            return Err(bad(format!(
                "working-set file version {version}; this reader knows version {VERSION}"
            )));
        }
        let page_size = u32_at(12);
        if !page_size.is_power_of_two() {
            return Err(bad(format!("page size {page_size} is not a power of two")));
        }
        let count = u64_at(16);
        let want = count
            .checked_mul(8)
            .and_then(|n| n.checked_add((HEADER + 8) as u64));
        if want != Some(bytes.len() as u64) {
            return Err(bad(format!(
                "{} bytes for {count} entries (truncated or corrupt)",
                bytes.len()
            )));
        }
        let body = bytes.len() - 8;
        if fnv1a(&bytes[..body]) != u64_at(body) {
            return Err(bad("checksum mismatch (corrupt working-set file)"));
        }
        let pages = (0..count as usize)
            .map(|i| u64_at(HEADER + 8 * i))
            .collect();
        Ok(WorkingSet { page_size, pages })
    }

    /// Reads a working-set file.
    ///
    /// # Errors
    ///
    /// The read error, or as [`from_bytes`](Self::from_bytes); both name the path.
    pub fn load(path: impl AsRef<Path>) -> io::Result<WorkingSet> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| io::Error::new(e.kind(), format!("read {}: {e}", path.display())))?;
        WorkingSet::from_bytes(&bytes)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    /// Writes the file atomically: to a temporary file beside it, then
    /// `rename(2)`.
    ///
    /// # Errors
    ///
    /// The write or rename error, naming the path.
    pub fn save(&self, path: impl AsRef<Path>) -> io::Result<()> {
        let path = path.as_ref();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let name =
            |e: io::Error| io::Error::new(e.kind(), format!("write {}: {e}", path.display()));
        std::fs::write(&tmp, self.to_bytes()).map_err(name)?;
        std::fs::rename(&tmp, path).map_err(name)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_order() {
        let set = WorkingSet::from_pages(4096, [9, 3, 9, 0, 7]).unwrap();
        assert_eq!(set.pages(), &[9, 3, 0, 7]);
        let bytes = set.to_bytes();
        assert_eq!(bytes.len(), 24 + 4 * 8 + 8);
        assert_eq!(WorkingSet::from_bytes(&bytes).unwrap(), set);
    }

    #[test]
    fn refuses_damage() {
        let bytes = WorkingSet::from_pages(4096, [1, 2, 3]).unwrap().to_bytes();
        let err = |b: &[u8]| WorkingSet::from_bytes(b).unwrap_err().to_string();
        assert!(err(&bytes[..bytes.len() - 1]).contains("truncated"));
        let mut flipped = bytes.clone();
        flipped[30] ^= 1;
        assert!(err(&flipped).contains("checksum"));
        let mut v2 = bytes.clone();
        v2[8] = 2;
        assert!(err(&v2).contains("version 2"));
        assert!(err(b"hello").contains("not a working-set file"));
        assert!(WorkingSet::new(3000).is_err());
    }
}
