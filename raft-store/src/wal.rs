//! An append-only write-ahead log of numbered records in segment files: the storage of the Raft
//! log. Hand-written because what the log needs is exactly one sequential write and one
//! `fdatasync` per batch, which a B-tree engine cannot give (redb, tried first, spent most of a
//! member's CPU on page management and on syncing scattered pages).
//!
//! Layout: `DIR/{seq:016x}.wal`, each a sequence of frames. A frame is what one `append` wrote:
//!
//! ```text
//! frame  = len:u32 | crc(payload):u32 | crc(len, crc):u32 | payload[len]
//! payload = (index:u64 | size:u32 | bytes[size])*
//! ```
//!
//! Record indexes are contiguous across frames and segments. On open every frame is checked.
//! A bad frame at the very end of the last segment is a torn write — a batch whose `fdatasync`
//! never returned, so nobody was told it was stored — and is cut off. A bad frame anywhere
//! else is corruption of acknowledged data and opening fails.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const HEADER: usize = 12;
const RECORD_HEADER: usize = 12;
/// Start a new segment once the current one is this big.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where one record's bytes are. Holds the file open, so a segment deleted by a purge stays
/// readable for whoever located a record in it just before.
#[derive(Clone)]
pub struct Location {
    file: Arc<File>,
    segment: u64,
    frame: u64,
    offset: u64,
    size: u32,
}

impl Location {
    pub fn read(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; self.size as usize];
        self.file.read_exact_at(&mut buf, self.offset)?;
        Ok(buf)
    }
}

struct Segment {
    seq: u64,
    path: PathBuf,
    file: Arc<File>,
    len: u64,
    first_index: Option<u64>,
}

pub struct Wal {
    dir: PathBuf,
    segments: Vec<Segment>,
    index: BTreeMap<u64, Location>,
    /// Bytes cut off a torn tail when the log was opened (for the caller to report).
    pub repaired_bytes: u64,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn header_crc(len: u32, crc: u32) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&crc.to_le_bytes());
    h.finalize()
}

impl Wal {
    /// Opens the log in `dir`, checking every frame; records at or below `purged` are not
    /// indexed (they may linger in the first segment).
    pub fn open(dir: &Path, purged: Option<u64>) -> Result<Wal, WalError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut seqs: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                u64::from_str_radix(name.strip_suffix(".wal")?, 16).ok()
            })
            .collect();
        seqs.sort_unstable();
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            segments: Vec::new(),
            index: BTreeMap::new(),
            repaired_bytes: 0,
        };
        let mut expected: Option<u64> = None;
        for (i, seq) in seqs.iter().enumerate() {
            let last = i + 1 == seqs.len();
            wal.load_segment(*seq, last, purged, &mut expected)?;
        }
        if wal.segments.is_empty() {
            wal.new_segment(0).map_err(io_err(dir))?;
        }
        Ok(wal)
    }

    fn segment_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:016x}.wal"))
    }

    fn load_segment(
        &mut self,
        seq: u64,
        last: bool,
        purged: Option<u64>,
        expected: &mut Option<u64>,
    ) -> Result<(), WalError> {
        let path = self.segment_path(seq);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        let file = Arc::new(file);
        let corrupt = |offset: usize, reason: String| WalError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            reason,
        };
        let mut first_index = None;
        let mut pos = 0usize;
        let mut torn_at = None;
        while pos < bytes.len() {
            let rest = &bytes[pos..];
            // A frame that stops early, or a header of zeros up to the end, is a torn write —
            // but only at the end of the last segment.
            let torn = |why: &str| -> Result<(), WalError> {
                if last {
                    Ok(())
                } else {
                    Err(corrupt(
                        pos,
                        format!("{why} in a segment that is not the last"),
                    ))
                }
            };
            if rest.len() < HEADER {
                torn("a partial frame header")?;
                torn_at = Some(pos);
                break;
            }
            let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
            let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
            let hcrc = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
            if hcrc != header_crc(len, crc) {
                if rest.iter().all(|b| *b == 0) {
                    torn("a zeroed frame")?;
                    torn_at = Some(pos);
                    break;
                }
                return Err(corrupt(pos, "frame header checksum mismatch".into()));
            }
            let end = HEADER + len as usize;
            if rest.len() < end {
                torn("a partial frame")?;
                torn_at = Some(pos);
                break;
            }
            let payload = &rest[HEADER..end];
            if crc32fast::hash(payload) != crc {
                if last && pos + end == bytes.len() {
                    torn_at = Some(pos);
                    break;
                }
                return Err(corrupt(pos, "frame checksum mismatch".into()));
            }
            let mut p = 0usize;
            while p < payload.len() {
                if payload.len() - p < RECORD_HEADER {
                    return Err(corrupt(pos, "a record header runs past its frame".into()));
                }
                let index = u64::from_le_bytes(payload[p..p + 8].try_into().expect("8 bytes"));
                let size = u32::from_le_bytes(payload[p + 8..p + 12].try_into().expect("4 bytes"));
                let start = p + RECORD_HEADER;
                if payload.len() - start < size as usize {
                    return Err(corrupt(pos, "a record runs past its frame".into()));
                }
                if expected.is_some_and(|e| e != index) {
                    return Err(corrupt(
                        pos,
                        format!(
                            "record {index} follows record {}",
                            expected.unwrap_or(0) - 1
                        ),
                    ));
                }
                *expected = Some(index + 1);
                first_index.get_or_insert(index);
                if purged.is_none_or(|p| index > p) {
                    self.index.insert(
                        index,
                        Location {
                            file: file.clone(),
                            segment: seq,
                            frame: pos as u64,
                            offset: (pos + HEADER + start) as u64,
                            size,
                        },
                    );
                }
                p = start + size as usize;
            }
            pos += end;
        }
        if let Some(at) = torn_at {
            file.set_len(at as u64).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
            self.repaired_bytes += (bytes.len() - at) as u64;
        }
        let len = torn_at.unwrap_or(bytes.len()) as u64;
        self.segments.push(Segment {
            seq,
            path,
            file,
            len,
            first_index,
        });
        Ok(())
    }

    fn new_segment(&mut self, seq: u64) -> io::Result<()> {
        let path = self.segment_path(seq);
        let file = crate::files::private_file()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        sync_dir(&self.dir)?;
        self.segments.push(Segment {
            seq,
            path,
            file: Arc::new(file),
            len: 0,
            first_index: None,
        });
        Ok(())
    }

    fn current(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a wal always has a segment")
    }

    pub fn last_index(&self) -> Option<u64> {
        self.index.keys().next_back().copied()
    }

    /// Writes the records as one frame at the end of the log. Not durable until [`Wal::current_file`] is synced.
    pub fn append(&mut self, records: &[(u64, &[u8])]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        if self.current().len >= SEGMENT_BYTES {
            let seq = self.current().seq + 1;
            self.new_segment(seq)?;
        }
        let mut payload =
            Vec::with_capacity(records.iter().map(|(_, b)| b.len() + RECORD_HEADER).sum());
        let mut offsets = Vec::with_capacity(records.len());
        for (index, bytes) in records {
            payload.extend_from_slice(&index.to_le_bytes());
            payload.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            offsets.push((*index, payload.len(), bytes.len() as u32));
            payload.extend_from_slice(bytes);
        }
        let len = payload.len() as u32;
        let crc = crc32fast::hash(&payload);
        let mut frame = Vec::with_capacity(HEADER + payload.len());
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&crc.to_le_bytes());
        frame.extend_from_slice(&header_crc(len, crc).to_le_bytes());
        frame.extend_from_slice(&payload);
        let seg = self.current();
        let at = seg.len;
        seg.file.write_all_at(&frame, at)?;
        seg.len += frame.len() as u64;
        seg.first_index.get_or_insert(records[0].0);
        let (file, seq) = (seg.file.clone(), seg.seq);
        for (index, offset, size) in offsets {
            let loc = Location {
                file: file.clone(),
                segment: seq,
                frame: at,
                offset: at + (HEADER + offset) as u64,
                size,
            };
            self.index.insert(index, loc);
        }
        Ok(())
    }

    /// The file to `sync_data` to make everything appended so far durable. Given out rather
    /// than synced here so the caller can sync without holding whatever guards the
    /// WAL: readers can then locate records while the disk is flushed. Only valid until the
    /// next append (which may open a new segment), so the one writer calls it right after its
    /// append and syncs before appending again.
    pub fn current_file(&mut self) -> Arc<File> {
        self.current().file.clone()
    }

    /// Where the records in `range` are.
    pub fn locate(&self, range: impl RangeBounds<u64>) -> Vec<(u64, Location)> {
        self.index
            .range(range)
            .map(|(i, l)| (*i, l.clone()))
            .collect()
    }

    /// Removes every record from `from` on, durably.
    pub fn truncate(&mut self, from: u64) -> io::Result<()> {
        let Some(loc) = self.index.get(&from).cloned() else {
            return Ok(());
        };
        // Records of the same frame before `from` are rewritten as a new frame.
        let keep: Vec<(u64, Vec<u8>)> = self
            .index
            .range(..from)
            .rev()
            .take_while(|(_, l)| l.segment == loc.segment && l.frame == loc.frame)
            .map(|(i, l)| Ok((*i, l.read()?)))
            .collect::<io::Result<_>>()?;
        while self.current().seq > loc.segment {
            let seg = self.segments.pop().expect("checked above");
            std::fs::remove_file(&seg.path)?;
        }
        sync_dir(&self.dir)?;
        let seg = self.current();
        seg.file.set_len(loc.frame)?;
        seg.len = loc.frame;
        if seg.len == 0 {
            seg.first_index = None;
        }
        self.index.split_off(&from);
        let mut keep = keep;
        keep.reverse();
        for (i, _) in &keep {
            self.index.remove(i);
        }
        let records: Vec<(u64, &[u8])> = keep.iter().map(|(i, b)| (*i, b.as_slice())).collect();
        self.append(&records)?;
        self.current().file.sync_all()
    }

    /// Forgets records up to and including `upto`; whole segments that hold nothing newer are
    /// deleted. The caller must have recorded `upto` durably first, so a crash in between
    /// reopens with the right records skipped.
    pub fn purge(&mut self, upto: u64) -> io::Result<()> {
        self.index = self.index.split_off(&(upto + 1));
        let mut removed = false;
        while self.segments.len() > 1 {
            let next_first = self.segments[1].first_index;
            if next_first.is_some_and(|f| f <= upto + 1) {
                let seg = self.segments.remove(0);
                std::fs::remove_file(&seg.path)?;
                removed = true;
            } else {
                break;
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(wal: &Wal) -> Vec<(u64, Vec<u8>)> {
        wal.locate(..)
            .into_iter()
            .map(|(i, l)| (i, l.read().unwrap()))
            .collect()
    }

    fn append(wal: &mut Wal, from: u64, to: u64) {
        let data: Vec<(u64, Vec<u8>)> = (from..=to)
            .map(|i| (i, format!("entry-{i}").into_bytes()))
            .collect();
        let refs: Vec<(u64, &[u8])> = data.iter().map(|(i, b)| (*i, b.as_slice())).collect();
        wal.append(&refs).unwrap();
        wal.current_file().sync_data().unwrap();
    }

    #[test]
    fn appends_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), None).unwrap();
        append(&mut wal, 1, 3);
        append(&mut wal, 4, 4);
        drop(wal);
        let wal = Wal::open(dir.path(), None).unwrap();
        assert_eq!(records(&wal).len(), 4);
        assert_eq!(records(&wal)[3], (4, b"entry-4".to_vec()));
        assert_eq!(wal.last_index(), Some(4));
    }

    #[test]
    fn truncate_in_the_middle_of_a_frame_keeps_the_records_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), None).unwrap();
        append(&mut wal, 1, 5);
        append(&mut wal, 6, 8);
        wal.truncate(3).unwrap();
        assert_eq!(wal.last_index(), Some(2));
        append(&mut wal, 3, 3);
        drop(wal);
        let wal = Wal::open(dir.path(), None).unwrap();
        let got: Vec<u64> = records(&wal).iter().map(|(i, _)| *i).collect();
        assert_eq!(got, vec![1, 2, 3]);
    }

    #[test]
    fn a_torn_tail_is_cut_but_mid_log_corruption_fails() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), None).unwrap();
        append(&mut wal, 1, 2);
        append(&mut wal, 3, 4);
        let path = wal.segments[0].path.clone();
        drop(wal);
        let full = std::fs::read(&path).unwrap();
        // Torn: the last frame only half written.
        std::fs::write(&path, &full[..full.len() - 5]).unwrap();
        let wal = Wal::open(dir.path(), None).unwrap();
        assert_eq!(wal.last_index(), Some(2));
        assert!(wal.repaired_bytes > 0);
        drop(wal);
        // Corrupt: a flipped byte inside the first (acknowledged) frame.
        let mut bad = full.clone();
        bad[HEADER + 2] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        let err = Wal::open(dir.path(), None)
            .err()
            .expect("corruption must fail");
        assert!(err.to_string().contains("corrupt at byte 0"), "{err}");
    }

    #[test]
    fn purge_drops_old_segments_and_skips_purged_records_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), None).unwrap();
        append(&mut wal, 1, 3);
        let seq = wal.current().seq + 1;
        wal.new_segment(seq).unwrap();
        append(&mut wal, 4, 6);
        wal.purge(4).unwrap();
        assert_eq!(wal.segments.len(), 1);
        assert_eq!(
            records(&wal).iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![5, 6]
        );
        drop(wal);
        let wal = Wal::open(dir.path(), Some(4)).unwrap();
        assert_eq!(
            records(&wal).iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![5, 6]
        );
    }
}
