//! The analytics files on disk: `events/date=YYYY-MM-DD/p{partition}-{from}-{to}.parquet`.
//!
//! A file holds the events of one partition of `herald-events` at offsets `from..to` (every
//! record in that range that was an event of that day), so its name says exactly what it covers.
//! That is what makes the files exactly once without a second commit protocol:
//!
//! 1. the sink writes `.p…-{from}-{to}.parquet.tmp` (a hidden name that does not end in
//!    `.parquet`, so a reader globbing `events/**/*.parquet` never sees it), syncs it,
//! 2. renames it to its final name (atomic) and syncs the directory,
//! 3. commits `to` as the sink's position in the partition.
//!
//! On start ([`recover`]) the sink deletes leftover temporary files and resumes each partition at
//! the furthest `to` of its files, or its committed offset if that is further. A crash between
//! 2 and 3 therefore never writes the range again, and a crash before 2 leaves nothing a reader
//! sees. A day boundary inside a flush gives two files whose ranges follow each other.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What a final file covers, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRange {
    pub partition: u32,
    pub from: u64,
    pub to: u64,
}

impl FileRange {
    /// `p0003-00000000000000001000-00000000000000002000.parquet`: fixed widths sort by offset.
    pub fn file_name(&self) -> String {
        format!("p{:04}-{:020}-{:020}.parquet", self.partition, self.from, self.to)
    }

    pub fn parse(name: &str) -> Option<FileRange> {
        let stem = name.strip_suffix(".parquet")?.strip_prefix('p')?;
        let mut parts = stem.split('-');
        let partition = parts.next()?.parse().ok()?;
        let from = parts.next()?.parse().ok()?;
        let to = parts.next()?.parse().ok()?;
        if parts.next().is_some() || from >= to {
            return None;
        }
        Some(FileRange { partition, from, to })
    }
}

/// The directory of one day: `date=YYYY-MM-DD` (hive partitioning, so SQL engines see a `date`
/// column).
pub fn day_dir(root: &Path, day: &str) -> PathBuf {
    root.join(format!("date={day}"))
}

/// The UTC day of a time in ms since the Unix epoch, as `YYYY-MM-DD`.
pub fn utc_day(at_ms: u64) -> String {
    let at =
        jiff::Timestamp::from_millisecond(i64::try_from(at_ms).unwrap_or(i64::MAX)).unwrap_or(jiff::Timestamp::MAX);
    at.strftime("%Y-%m-%d").to_string()
}

/// What [`recover`] found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Per partition, the furthest offset a final file covers.
    pub ends: HashMap<u32, u64>,
    /// Per partition, its final files, in offset order.
    pub by_partition: HashMap<u32, Vec<(FileRange, PathBuf)>>,
    pub files: usize,
    /// Temporary files of an interrupted write, deleted.
    pub removed_temporaries: usize,
}

/// Scans `root` (creating it if missing): deletes temporary files, and finds where each
/// partition's files end.
pub fn recover(root: &Path) -> std::io::Result<Recovered> {
    std::fs::create_dir_all(root)?;
    let mut found = Recovered::default();
    for day in std::fs::read_dir(root)? {
        let day = day?;
        if !day.file_type()?.is_dir() || !day.file_name().to_string_lossy().starts_with("date=") {
            continue;
        }
        for entry in std::fs::read_dir(day.path())? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                std::fs::remove_file(entry.path())?;
                found.removed_temporaries += 1;
            } else if let Some(range) = FileRange::parse(&name) {
                let end = found.ends.entry(range.partition).or_insert(0);
                *end = (*end).max(range.to);
                found.by_partition.entry(range.partition).or_default().push((range, entry.path()));
                found.files += 1;
            }
        }
    }
    for files in found.by_partition.values_mut() {
        files.sort_by_key(|(range, _)| (range.to, range.from));
    }
    Ok(found)
}

/// Writes `bytes` as `dir/name` atomically and durably: a hidden temporary file, synced, renamed,
/// and the directory synced.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let temp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_offset() {
        let r = FileRange { partition: 3, from: 1000, to: 2000 };
        assert_eq!(FileRange::parse(&r.file_name()), Some(r));
        let later = FileRange { partition: 3, from: 2000, to: 10_000 };
        assert!(r.file_name() < later.file_name());
        for bad in ["p3-1-1.parquet", "p3-2-1.parquet", "x3-1-2.parquet", "p3-1-2.parquet.tmp", "p3-1-2-4.parquet"] {
            assert_eq!(FileRange::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn days_are_utc_calendar_days() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(951_782_400_000), "2000-02-29");
        assert_eq!(utc_day(1_795_737_599_999), "2026-11-26");
        assert_eq!(utc_day(1_795_737_600_000), "2026-11-27");
    }

    #[test]
    fn recovery_removes_temporaries_and_finds_each_partition_end() {
        let root = tempfile::tempdir().unwrap();
        let day = day_dir(root.path(), "2026-11-26");
        write_atomically(&day, &FileRange { partition: 0, from: 0, to: 10 }.file_name(), b"a").unwrap();
        write_atomically(&day, &FileRange { partition: 0, from: 10, to: 25 }.file_name(), b"b").unwrap();
        write_atomically(&day, &FileRange { partition: 2, from: 5, to: 7 }.file_name(), b"c").unwrap();
        std::fs::write(day.join(".p0000-00000000000000000025-00000000000000000030.parquet.tmp"), b"torn").unwrap();
        let found = recover(root.path()).unwrap();
        assert_eq!(found.files, 3);
        assert_eq!(found.removed_temporaries, 1);
        assert_eq!(found.ends.get(&0), Some(&25));
        assert_eq!(found.ends.get(&2), Some(&7));
        assert_eq!(found.ends.get(&1), None);
        let zero: Vec<_> = found.by_partition[&0].iter().map(|(r, _)| (r.from, r.to)).collect();
        assert_eq!(zero, [(0, 10), (10, 25)]);
        let names: Vec<_> = std::fs::read_dir(&day).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.iter().all(|n| n.to_string_lossy().ends_with(".parquet")), "{names:?}");
    }
}
