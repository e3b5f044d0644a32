//! bbolt's file format, the subset etcd's backend files need: a writer that
//! lays out a database of sorted buckets page by page, and a reader that
//! walks one. etcd's snapshots (`etcdctl snapshot save`) are such files.
//!
//! ```text
//! page:    id u64 | flags u16 | count u16 | overflow u32 | data      (16-byte header)
//!          a page spans 1 + overflow units of the page size
//! meta:    magic 0xED0CDAED u32 | version 2 u32 | page_size u32 | flags u32 |
//!          root bucket (root pgid u64, sequence u64) | freelist pgid u64 |
//!          high water mark pgid u64 | txid u64 | checksum u64 (FNV-1a 64 of
//!          the 64 bytes before it)                  (pages 0 and 1; the valid
//!                                                    one with the higher txid)
//! leaf:    count x (flags u32 | pos u32 | ksize u32 | vsize u32), then keys
//!          and values; pos counts from the element itself. flags 1: the
//!          value is a sub-bucket's header (root pgid u64, sequence u64),
//!          followed by an inline page when root is 0.
//! branch:  count x (pos u32 | ksize u32 | pgid u64), then keys; each key is
//!          the first key of its child.
//! freelist: count x pgid u64 (count 0xFFFF: the first u64 is the count)
//! ```
//!
//! All integers little-endian (bbolt writes the machine's order; etcd runs
//! on little-endian machines, as keel does).

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const PAGE_SIZE: usize = 4096;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;

const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const FREELIST_PAGE: u16 = 0x10;
const BUCKET_LEAF: u32 = 0x01;

/// Pages 0 and 1 hold the meta, page 2 the (empty) freelist.
const FIRST_DATA_PAGE: u64 = 3;
const FREELIST_PGID: u64 = 2;

/// A B+tree deeper than this is not a file bbolt wrote.
const MAX_DEPTH: usize = 32;

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn page_units(bytes: usize) -> usize {
    bytes.div_ceil(PAGE_SIZE).max(1)
}

/// Writes a bbolt database front to back: each bucket's leaves as its
/// sorted items arrive, then its branch levels, then the root bucket and
/// the meta pages. Memory holds one page and each level's first keys.
pub struct BoltWriter {
    file: BufWriter<File>,
    next_pgid: u64,
    /// (name, root pgid) of the buckets written so far.
    buckets: Vec<(Vec<u8>, u64)>,
}

/// One page being filled: its elements and their key/value bytes.
#[derive(Default)]
struct PageBuilder {
    /// (flags, key, value) for a leaf; (0, key, pgid bytes) for a branch.
    elements: Vec<(u32, Vec<u8>, Vec<u8>)>,
    bytes: usize,
}

impl PageBuilder {
    fn size_with(&self, key: usize, value: usize) -> usize {
        PAGE_HEADER + (self.elements.len() + 1) * ELEMENT + self.bytes + key + value
    }
}

impl BoltWriter {
    /// Starts a database file at `path` (created or truncated).
    pub fn create(path: &Path) -> io::Result<BoltWriter> {
        BoltWriter::new(File::create(path)?)
    }

    /// Starts a database in `file`, which must be empty and writable.
    pub fn new(file: File) -> io::Result<BoltWriter> {
        let mut file = BufWriter::with_capacity(1 << 20, file);
        // The meta pages are written last; the freelist is empty.
        file.write_all(&[0u8; PAGE_SIZE * 2])?;
        let mut freelist = vec![0u8; PAGE_SIZE];
        freelist[..8].copy_from_slice(&FREELIST_PGID.to_le_bytes());
        freelist[8..10].copy_from_slice(&FREELIST_PAGE.to_le_bytes());
        file.write_all(&freelist)?;
        Ok(BoltWriter {
            file,
            next_pgid: FIRST_DATA_PAGE,
            buckets: Vec::new(),
        })
    }

    /// Writes one bucket; `items` must come in strictly increasing key order.
    pub fn bucket<K, V>(
        &mut self,
        name: &[u8],
        items: impl IntoIterator<Item = (K, V)>,
    ) -> io::Result<()>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let mut children: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut page = PageBuilder::default();
        let mut last: Option<Vec<u8>> = None;
        for (k, v) in items {
            let (k, v) = (k.as_ref(), v.as_ref());
            if last.as_deref().is_some_and(|l| l >= k) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "bolt: bucket keys out of order",
                ));
            }
            last = Some(k.to_vec());
            if !page.elements.is_empty() && page.size_with(k.len(), v.len()) > PAGE_SIZE
                || page.elements.len() == usize::from(u16::MAX)
            {
                let first = page.elements[0].1.clone();
                children.push((first, self.write_page(LEAF_PAGE, &page)?));
                page = PageBuilder::default();
            }
            page.bytes += k.len() + v.len();
            page.elements.push((0, k.to_vec(), v.to_vec()));
        }
        // An empty bucket is one empty leaf.
        if !page.elements.is_empty() || children.is_empty() {
            let first = page
                .elements
                .first()
                .map(|e| e.1.clone())
                .unwrap_or_default();
            children.push((first, self.write_page(LEAF_PAGE, &page)?));
        }
        let root = self.branches(children)?;
        self.buckets.push((name.to_vec(), root));
        Ok(())
    }

    /// Writes branch levels over `children` until one page remains; its pgid.
    fn branches(&mut self, mut children: Vec<(Vec<u8>, u64)>) -> io::Result<u64> {
        while children.len() > 1 {
            let mut parents = Vec::new();
            let mut page = PageBuilder::default();
            for (key, pgid) in children {
                if !page.elements.is_empty() && page.size_with(key.len(), 0) > PAGE_SIZE {
                    let first = page.elements[0].1.clone();
                    parents.push((first, self.write_page(BRANCH_PAGE, &page)?));
                    page = PageBuilder::default();
                }
                page.bytes += key.len();
                page.elements.push((0, key, pgid.to_le_bytes().to_vec()));
            }
            let first = page.elements[0].1.clone();
            parents.push((first, self.write_page(BRANCH_PAGE, &page)?));
            children = parents;
        }
        Ok(children[0].1)
    }

    /// Appends one page (with overflow units as needed); its pgid.
    fn write_page(&mut self, kind: u16, page: &PageBuilder) -> io::Result<u64> {
        let body = PAGE_HEADER + page.elements.len() * ELEMENT + page.bytes;
        let units = page_units(body);
        let mut buf = vec![0u8; units * PAGE_SIZE];
        let pgid = self.next_pgid;
        buf[..8].copy_from_slice(&pgid.to_le_bytes());
        buf[8..10].copy_from_slice(&kind.to_le_bytes());
        buf[10..12].copy_from_slice(&(page.elements.len() as u16).to_le_bytes());
        buf[12..16].copy_from_slice(&((units - 1) as u32).to_le_bytes());
        let mut data = PAGE_HEADER + page.elements.len() * ELEMENT;
        for (i, (flags, key, value)) in page.elements.iter().enumerate() {
            let at = PAGE_HEADER + i * ELEMENT;
            let pos = (data - at) as u32;
            if kind == LEAF_PAGE {
                buf[at..at + 4].copy_from_slice(&flags.to_le_bytes());
                buf[at + 4..at + 8].copy_from_slice(&pos.to_le_bytes());
                buf[at + 8..at + 12].copy_from_slice(&(key.len() as u32).to_le_bytes());
                buf[at + 12..at + 16].copy_from_slice(&(value.len() as u32).to_le_bytes());
                buf[data..data + key.len()].copy_from_slice(key);
                data += key.len();
                buf[data..data + value.len()].copy_from_slice(value);
                data += value.len();
            } else {
                buf[at..at + 4].copy_from_slice(&pos.to_le_bytes());
                buf[at + 4..at + 8].copy_from_slice(&(key.len() as u32).to_le_bytes());
                buf[at + 8..at + 16].copy_from_slice(value);
                buf[data..data + key.len()].copy_from_slice(key);
                data += key.len();
            }
        }
        self.file.write_all(&buf)?;
        self.next_pgid += units as u64;
        Ok(pgid)
    }

    /// Writes the root bucket and the meta pages and syncs the file; the
    /// database's size in bytes.
    pub fn finish(self) -> io::Result<u64> {
        let (size, file) = self.finish_file()?;
        file.sync_all()?;
        Ok(size)
    }

    /// Writes the root bucket and the meta pages and hands back the size
    /// and the file, not synced (a file only read back, such as the
    /// unlinked one a snapshot is streamed from, needs no fsync).
    pub fn finish_file(mut self) -> io::Result<(u64, File)> {
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.sort();
        if buckets.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bolt: a bucket written twice",
            ));
        }
        let mut root = PageBuilder::default();
        for (name, pgid) in buckets {
            let mut header = pgid.to_le_bytes().to_vec();
            header.extend_from_slice(&0u64.to_le_bytes());
            root.bytes += name.len() + header.len();
            root.elements.push((BUCKET_LEAF, name, header));
        }
        let root_pgid = self.write_page(LEAF_PAGE, &root)?;
        let high_water = self.next_pgid;
        let mut file = self.file.into_inner().map_err(|e| e.into_error())?;
        for (i, txid) in [(0u64, 1u64), (1, 2)] {
            let mut page = vec![0u8; PAGE_SIZE];
            page[..8].copy_from_slice(&i.to_le_bytes());
            page[8..10].copy_from_slice(&META_PAGE.to_le_bytes());
            let m = &mut page[PAGE_HEADER..PAGE_HEADER + 72];
            m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            m[4..8].copy_from_slice(&VERSION.to_le_bytes());
            m[8..12].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
            m[16..24].copy_from_slice(&root_pgid.to_le_bytes());
            m[32..40].copy_from_slice(&FREELIST_PGID.to_le_bytes());
            m[40..48].copy_from_slice(&high_water.to_le_bytes());
            m[48..56].copy_from_slice(&txid.to_le_bytes());
            let sum = fnv1a64(&m[..56]);
            m[56..64].copy_from_slice(&sum.to_le_bytes());
            file.seek(SeekFrom::Start(i * PAGE_SIZE as u64))?;
            file.write_all(&page)?;
        }
        Ok((high_water * PAGE_SIZE as u64, file))
    }
}

/// A malformed database file.
#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("not a bbolt database: {0}")]
    Invalid(String),
    #[error("bbolt database damaged at page {page}: {reason}")]
    Damaged { page: u64, reason: String },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Called with (flags, key, value) for each item of a bucket.
pub type ItemFn<'a> = dyn FnMut(u32, &[u8], &[u8]) -> Result<(), BoltError> + 'a;

/// Where a bucket's items are: a page tree, or a page inline in its parent.
#[derive(Debug, Clone)]
pub enum BucketRoot {
    Page(u64),
    Inline(Vec<u8>),
}

/// Reads a bbolt database through its valid meta page with the higher txid.
pub struct BoltReader {
    file: File,
    page_size: usize,
    /// Pages below this are the database's (the high water mark).
    pages: u64,
    root: u64,
}

struct Meta {
    page_size: usize,
    root: u64,
    pages: u64,
    txid: u64,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn read_meta(file: &File, offset: u64) -> Result<Meta, String> {
    let mut page = [0u8; PAGE_HEADER + 64];
    file.read_exact_at(&mut page, offset)
        .map_err(|e| e.to_string())?;
    if u16_at(&page, 8) & META_PAGE == 0 {
        return Err("no meta page".into());
    }
    let m = &page[PAGE_HEADER..];
    if u32_at(m, 0) != MAGIC {
        return Err("bad magic".into());
    }
    if u32_at(m, 4) != VERSION {
        return Err(format!("version {} (expected {VERSION})", u32_at(m, 4)));
    }
    let checksum = u64_at(m, 56);
    if checksum != 0 && checksum != fnv1a64(&m[..56]) {
        return Err("meta checksum mismatch".into());
    }
    let page_size = u32_at(m, 8) as usize;
    if !(512..=1 << 20).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("page size {page_size}"));
    }
    Ok(Meta {
        page_size,
        root: u64_at(m, 16),
        pages: u64_at(m, 40),
        txid: u64_at(m, 48),
    })
}

impl BoltReader {
    pub fn open(path: &Path) -> Result<BoltReader, BoltError> {
        let file = File::open(path)?;
        let first = read_meta(&file, 0);
        // The second meta page sits one page in, at the first's page size
        // (or the default when the first is unreadable).
        let size = first.as_ref().map_or(PAGE_SIZE, |m| m.page_size);
        let second = read_meta(&file, size as u64);
        let meta = match (first, second) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(m), Err(_)) | (Err(_), Ok(m)) => m,
            (Err(a), Err(_)) => return Err(BoltError::Invalid(a)),
        };
        let len = file.metadata()?.len();
        if meta.pages.saturating_mul(meta.page_size as u64) > len {
            return Err(BoltError::Invalid(format!(
                "the file ({len} bytes) is shorter than its {} pages",
                meta.pages
            )));
        }
        Ok(BoltReader {
            file,
            page_size: meta.page_size,
            pages: meta.pages,
            root: meta.root,
        })
    }

    /// The database's size as bbolt reports it (pages times page size).
    pub fn size(&self) -> u64 {
        self.pages * self.page_size as u64
    }

    fn damaged(page: u64, reason: impl Into<String>) -> BoltError {
        BoltError::Damaged {
            page,
            reason: reason.into(),
        }
    }

    /// One page with its overflow.
    fn page(&self, pgid: u64) -> Result<Vec<u8>, BoltError> {
        if pgid < 2 || pgid >= self.pages {
            return Err(Self::damaged(pgid, "page id out of range"));
        }
        let mut header = [0u8; PAGE_HEADER];
        let at = pgid * self.page_size as u64;
        self.file.read_exact_at(&mut header, at)?;
        let units = u64::from(u32_at(&header, 12)) + 1;
        if pgid + units > self.pages {
            return Err(Self::damaged(pgid, "overflow past the end"));
        }
        let mut buf = vec![0u8; (units as usize) * self.page_size];
        self.file.read_exact_at(&mut buf, at)?;
        Ok(buf)
    }

    /// The buckets at the top level, in key order.
    pub fn buckets(&self) -> Result<Vec<(Vec<u8>, BucketRoot)>, BoltError> {
        let mut out = Vec::new();
        self.for_each(&BucketRoot::Page(self.root), &mut |flags, k, v| {
            if flags & BUCKET_LEAF != 0 {
                out.push((
                    k.to_vec(),
                    bucket_root(v).ok_or_else(|| Self::damaged(0, "short bucket header"))?,
                ));
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// A top-level bucket by name.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<BucketRoot>, BoltError> {
        Ok(self
            .buckets()?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r))
    }

    /// Calls `f(flags, key, value)` for every item of a bucket in key order.
    pub fn for_each(&self, root: &BucketRoot, f: &mut ItemFn<'_>) -> Result<(), BoltError> {
        match root {
            BucketRoot::Page(pgid) => {
                // A tree visits each page once: more visits mean a loop.
                let mut budget = self.pages;
                self.walk(*pgid, 0, &mut budget, f)
            }
            BucketRoot::Inline(page) => leaf_items(0, page, f),
        }
    }

    fn walk(
        &self,
        pgid: u64,
        depth: usize,
        budget: &mut u64,
        f: &mut ItemFn<'_>,
    ) -> Result<(), BoltError> {
        if depth > MAX_DEPTH || *budget == 0 {
            return Err(Self::damaged(pgid, "pages referenced more than once"));
        }
        *budget -= 1;
        let page = self.page(pgid)?;
        let flags = u16_at(&page, 8);
        let count = usize::from(u16_at(&page, 10));
        if flags & LEAF_PAGE != 0 {
            return leaf_items(pgid, &page, f);
        }
        if flags & BRANCH_PAGE == 0 {
            return Err(Self::damaged(pgid, format!("page type {flags:#x}")));
        }
        if PAGE_HEADER + count * ELEMENT > page.len() {
            return Err(Self::damaged(pgid, "elements past the page"));
        }
        for i in 0..count {
            let child = u64_at(&page, PAGE_HEADER + i * ELEMENT + 8);
            self.walk(child, depth + 1, budget, f)?;
        }
        Ok(())
    }
}

/// A bucket header (root pgid, sequence), with its inline page when root is 0.
fn bucket_root(value: &[u8]) -> Option<BucketRoot> {
    if value.len() < 16 {
        return None;
    }
    match u64_at(value, 0) {
        0 => Some(BucketRoot::Inline(value[16..].to_vec())),
        pgid => Some(BucketRoot::Page(pgid)),
    }
}

fn leaf_items(pgid: u64, page: &[u8], f: &mut ItemFn<'_>) -> Result<(), BoltError> {
    if page.len() < PAGE_HEADER {
        return Err(BoltReader::damaged(pgid, "short page"));
    }
    if u16_at(page, 8) & LEAF_PAGE == 0 {
        return Err(BoltReader::damaged(pgid, "not a leaf page"));
    }
    let count = usize::from(u16_at(page, 10));
    for i in 0..count {
        let at = PAGE_HEADER + i * ELEMENT;
        if at + ELEMENT > page.len() {
            return Err(BoltReader::damaged(pgid, "elements past the page"));
        }
        let flags = u32_at(page, at);
        let key_at = at + u32_at(page, at + 4) as usize;
        let key_end = key_at + u32_at(page, at + 8) as usize;
        let value_end = key_end + u32_at(page, at + 12) as usize;
        if value_end > page.len() {
            return Err(BoltReader::damaged(pgid, "item past the page"));
        }
        f(flags, &page[key_at..key_end], &page[key_end..value_end])?;
    }
    Ok(())
}

/// etcd's `snapshot status` figures for a database: a CRC-32C over every
/// bucket name, key and value in order, the item count, and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbStatus {
    pub hash: u32,
    pub total_keys: u64,
    pub total_size: u64,
}

pub fn status(reader: &BoltReader) -> Result<DbStatus, BoltError> {
    let mut hasher = Crc32c(0);
    let mut total_keys = 0u64;
    for (name, root) in reader.buckets()? {
        hasher.write(&name);
        reader.for_each(&root, &mut |_, k, v| {
            hasher.write(k);
            hasher.write(v);
            total_keys += 1;
            Ok(())
        })?;
    }
    Ok(DbStatus {
        hash: hasher.0,
        total_keys,
        total_size: reader.size(),
    })
}

struct Crc32c(u32);

impl Crc32c {
    fn write(&mut self, b: &[u8]) {
        self.0 = crc32c::crc32c_append(self.0, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(reader: &BoltReader, name: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let root = reader.bucket(name).unwrap().expect("bucket");
        let mut out = Vec::new();
        reader
            .for_each(&root, &mut |_, k, v| {
                out.push((k.to_vec(), v.to_vec()));
                Ok(())
            })
            .unwrap();
        out
    }

    #[test]
    fn buckets_of_every_shape_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut w = BoltWriter::create(&path).unwrap();
        // Many small items: several leaves and two branch levels.
        let many: Vec<(Vec<u8>, Vec<u8>)> = (0..200_000u32)
            .map(|i| (i.to_be_bytes().to_vec(), format!("value {i}").into_bytes()))
            .collect();
        w.bucket(b"many", many.iter().map(|(k, v)| (k, v))).unwrap();
        // Values larger than a page: overflow pages.
        let big: Vec<(Vec<u8>, Vec<u8>)> = (0..5u8).map(|i| (vec![i], vec![i; 10_000])).collect();
        w.bucket(b"big", big.iter().map(|(k, v)| (k, v))).unwrap();
        w.bucket(b"empty", std::iter::empty::<(&[u8], &[u8])>())
            .unwrap();
        let size = w.finish().unwrap();
        assert_eq!(size, std::fs::metadata(&path).unwrap().len());
        assert_eq!(size % PAGE_SIZE as u64, 0);

        let r = BoltReader::open(&path).unwrap();
        let names: Vec<Vec<u8>> = r.buckets().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [b"big".to_vec(), b"empty".to_vec(), b"many".to_vec()]
        );
        assert_eq!(items(&r, b"many"), many);
        assert_eq!(items(&r, b"big"), big);
        assert!(items(&r, b"empty").is_empty());
        assert_eq!(status(&r).unwrap().total_keys, 200_005);
    }

    #[test]
    fn keys_out_of_order_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = BoltWriter::create(&dir.path().join("db")).unwrap();
        let err = w.bucket(b"b", [(b"b", b""), (b"a", b"")]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut w = BoltWriter::create(&path).unwrap();
        let many: Vec<(Vec<u8>, Vec<u8>)> = (0..5_000u32)
            .map(|i| (i.to_be_bytes().to_vec(), vec![7; 100]))
            .collect();
        w.bucket(b"k", many.iter().map(|(k, v)| (k, v))).unwrap();
        w.finish().unwrap();
        let good = std::fs::read(&path).unwrap();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..300 {
            let mut bad = good.clone();
            for _ in 0..8 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                // Spare the meta pages so that the walk itself meets the damage.
                let at = 2 * PAGE_SIZE + (rng as usize) % (bad.len() - 2 * PAGE_SIZE);
                bad[at] ^= (rng >> 32) as u8 | 1;
            }
            std::fs::write(&path, &bad).unwrap();
            if let Ok(r) = BoltReader::open(&path) {
                let _ = status(&r);
            }
        }
        std::fs::write(&path, b"short").unwrap();
        assert!(BoltReader::open(&path).is_err());
    }
}
