//! Compaction: a day's many small event files become few, without a reader ever seeing an event
//! twice or missing one.
//!
//! The sink writes a file per partition and flush (every second while events flow), so a busy
//! day has tens of thousands of files, and every query pays for opening each. Every
//! `analytics.compact_interval` the sink (between two flushes, so nothing else writes meanwhile)
//! merges, per partition, runs of consecutive small files (under an eighth of
//! `compact_target_bytes`) into files of up to `compact_target_bytes`. A merged file is named by
//! the union of its inputs' ranges, so [`super::files::recover`] reads it like any other.
//!
//! No set of renames replaces several files with one atomically, so a day is replaced whole:
//! 1. the new day is built in `<data-dir>/.events-compaction/building/date=D/`, outside
//!    `events/` (no glob of `events/**/*.parquet` reaches it): merged files written and synced,
//!    the files left as they are hard-linked;
//! 2. it is swapped with `events/date=D` in one `renameat2(RENAME_EXCHANGE)`: a reader lists
//!    either the old day or the new one, never both and never neither;
//! 3. the old day, now in the staging area, is retired and deleted at the next compaction (or
//!    start), not at once: a reader that opened a file of it, or is in the middle of listing
//!    it, keeps a complete old day.
//!
//! A reader that listed the old day and opens a file by its path *after* the swap gets "not
//! found" for a merged-away file: an error, not a wrong count; reading again gives the new day.
//! `herald sql` does that itself. A crash anywhere leaves `events/` with the old day or the new
//! one, whole; whatever is in the staging area is deleted on start.

use super::files::{FileRange, day_dir};
use super::sink::{SinkError, writer_properties};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What one compaction did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// Days replaced.
    pub days: usize,
    /// Files merged away, and the files they became.
    pub files_in: usize,
    pub files_out: usize,
}

/// The staging area beside `root` (`<data-dir>/.events-compaction` for `<data-dir>/events`).
pub fn staging(root: &Path) -> PathBuf {
    root.parent().unwrap_or(root).join(".events-compaction")
}

/// Deletes the staging area: a day being built (never swapped in) or an old day swapped out.
pub fn clear_staging(root: &Path) -> std::io::Result<()> {
    remove_all(&staging(root))
}

/// Deletes `dir` and everything in it; a missing `dir` is fine.
fn remove_all(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The error of an operation on `dir`.
fn io(dir: &Path) -> impl Fn(std::io::Error) -> SinkError {
    let dir = dir.to_path_buf();
    move |source| SinkError::Io { dir: dir.clone(), source }
}

/// A final file of a day, with its size.
struct DayFile {
    range: FileRange,
    name: String,
    path: PathBuf,
    bytes: u64,
}

/// Compacts every day under `root` that has a run of small files to merge; deletes the days
/// retired by the previous compaction first.
pub fn compact(root: &Path, target_bytes: u64) -> Result<Compacted, SinkError> {
    let retired = staging(root).join("retired");
    remove_all(&retired).map_err(io(&retired))?;
    let mut done = Compacted::default();
    let days = match std::fs::read_dir(root) {
        Ok(days) => days,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(io(root)(e)),
    };
    let mut names = Vec::new();
    for day in days {
        let day = day.map_err(io(root))?;
        let name = day.file_name().to_string_lossy().into_owned();
        if let Some(date) = name.strip_prefix("date=") {
            names.push(date.to_string());
        }
    }
    names.sort();
    for date in names {
        let (files_in, files_out) = compact_day(root, &date, target_bytes)?;
        if files_in > 0 {
            done.days += 1;
            done.files_in += files_in;
            done.files_out += files_out;
        }
    }
    Ok(done)
}

/// The runs of files to merge: per partition, in offset order, consecutive files each under an
/// eighth of the target, grouped up to the target; runs of one are left alone.
fn plan(files: &[DayFile], target_bytes: u64) -> Vec<Vec<usize>> {
    let small = target_bytes / 8;
    let mut by_partition: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        by_partition.entry(f.range.partition).or_default().push(i);
    }
    let mut groups = Vec::new();
    for mut indices in by_partition.into_values() {
        indices.sort_by_key(|&i| (files[i].range.from, files[i].range.to));
        let mut run: Vec<usize> = Vec::new();
        let mut run_bytes = 0;
        for i in indices {
            let f = &files[i];
            if f.bytes >= small || run_bytes + f.bytes > target_bytes {
                if run.len() > 1 {
                    groups.push(std::mem::take(&mut run));
                }
                run.clear();
                run_bytes = 0;
            }
            if f.bytes < small {
                run.push(i);
                run_bytes += f.bytes;
            }
        }
        if run.len() > 1 {
            groups.push(run);
        }
    }
    groups
}

/// Compacts one day; returns (files merged away, files written), (0, 0) when nothing to do.
fn compact_day(root: &Path, date: &str, target_bytes: u64) -> Result<(usize, usize), SinkError> {
    let day = day_dir(root, date);
    let files = final_files(&day)?;
    let groups = plan(&files, target_bytes);
    if groups.is_empty() {
        return Ok((0, 0));
    }
    let building = staging(root).join("building").join(format!("date={date}"));
    remove_all(&building).map_err(io(&building))?;
    std::fs::create_dir_all(&building).map_err(io(&building))?;
    let mut merged = vec![false; files.len()];
    for group in &groups {
        let inputs: Vec<&DayFile> = group.iter().map(|&i| &files[i]).collect();
        let range = FileRange {
            partition: inputs[0].range.partition,
            from: inputs.iter().map(|f| f.range.from).min().unwrap_or(0),
            to: inputs.iter().map(|f| f.range.to).max().unwrap_or(0),
        };
        merge(&inputs, &building.join(range.file_name()))?;
        group.iter().for_each(|&i| merged[i] = true);
    }
    for (f, _) in files.iter().zip(&merged).filter(|(_, merged)| !**merged) {
        std::fs::hard_link(&f.path, building.join(&f.name)).map_err(io(&building))?;
    }
    // Files written after the listing (none: the sink compacts between its flushes) would be
    // dropped by the swap; the new day must hold every file the old one has.
    if final_files(&day)?.len() != files.len() {
        return Err(io(&day)(std::io::Error::other("the day changed while it was compacted")));
    }
    std::fs::File::open(&building).and_then(|d| d.sync_all()).map_err(io(&building))?;
    rustix::fs::renameat_with(rustix::fs::CWD, &building, rustix::fs::CWD, &day, rustix::fs::RenameFlags::EXCHANGE)
        .map_err(|errno| io(&day)(std::io::Error::from(errno)))?;
    std::fs::File::open(root).and_then(|d| d.sync_all()).map_err(io(root))?;
    // `building` now holds the old day: retire it, for deletion at the next compaction.
    let retired = staging(root).join("retired");
    std::fs::create_dir_all(&retired).map_err(io(&retired))?;
    std::fs::rename(&building, retired.join(format!("date={date}"))).map_err(io(&retired))?;
    let files_out = groups.len();
    let files_in = groups.iter().map(Vec::len).sum();
    tracing::info!(date, files_in, files_out, "analytics day compacted");
    Ok((files_in, files_out))
}

/// The final files of a day (temporaries of an interrupted write are not), with their sizes.
fn final_files(day: &Path) -> Result<Vec<DayFile>, SinkError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(day).map_err(io(day))? {
        let entry = entry.map_err(io(day))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(range) = FileRange::parse(&name) {
            let bytes = entry.metadata().map_err(io(day))?.len();
            files.push(DayFile { range, name, path: entry.path(), bytes });
        }
    }
    Ok(files)
}

/// Streams the inputs' rows, in order, into one Parquet file at `to`, synced.
fn merge(inputs: &[&DayFile], to: &Path) -> Result<(), SinkError> {
    let io = |source| io(to)(source);
    let mut writer: Option<ArrowWriter<std::fs::File>> = None;
    for input in inputs {
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&input.path).map_err(io)?)?.build()?;
        for batch in reader {
            let batch = batch?;
            let writer = match &mut writer {
                Some(writer) => writer,
                None => writer.insert(ArrowWriter::try_new(
                    std::fs::File::create(to).map_err(io)?,
                    batch.schema(),
                    Some(writer_properties()?),
                )?),
            };
            writer.write(&batch)?;
        }
    }
    if let Some(writer) = writer {
        let file = writer.into_inner()?;
        file.sync_all().map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(partition: u32, from: u64, to: u64, bytes: u64) -> DayFile {
        let range = FileRange { partition, from, to };
        DayFile { range, name: range.file_name(), path: PathBuf::new(), bytes }
    }

    #[test]
    fn runs_of_small_files_are_grouped_up_to_the_target_per_partition() {
        let files = vec![
            file(0, 0, 10, 10),
            file(0, 10, 20, 10),
            file(0, 20, 30, 500), // large: ends the run
            file(0, 30, 40, 10),
            file(1, 0, 5, 10),
            file(0, 40, 50, 10),
            file(0, 50, 60, 10),
            file(0, 60, 70, 10),
        ];
        let groups = plan(&files, 800);
        let ranges: Vec<Vec<(u32, u64)>> = groups
            .iter()
            .map(|g| g.iter().map(|&i| (files[i].range.partition, files[i].range.from)).collect())
            .collect();
        assert_eq!(ranges, vec![vec![(0, 0), (0, 10)], vec![(0, 30), (0, 40), (0, 50), (0, 60)]]);
        // Nine-byte files under a target of 80 (small: under 10): runs of at most 80 bytes.
        let many: Vec<DayFile> = (0..10).map(|i| file(0, i * 10, i * 10 + 10, 9)).collect();
        let sizes: Vec<usize> = plan(&many, 80).iter().map(Vec::len).collect();
        assert_eq!(sizes, [8, 2]);
        assert!(plan(&[file(0, 0, 1, 10)], 800).is_empty());
    }
}
