//! Crash-safe file writing: the one way percept writes a file that must never be seen torn
//! (shards, manifests, checkpoints, model files, configs, reports, summaries).
//!
//! The bytes go to a temporary file beside the destination, named uniquely per process and
//! write (`.<name>.<pid>.<n>.tmp`), so concurrent writers never share one; [`AtomicFile::commit`]
//! flushes, fsyncs the file, renames it over the destination and fsyncs the directory, so a
//! crash at any point leaves either the old file or the new one. A temporary file that was not
//! committed (an error, a panic, a dropped writer) is removed; one left by a killed process
//! ends in `.tmp` and starts with a dot, and [`is_temporary`] tells it from data.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{DataError, Result};

/// A file being written to a temporary name; it appears at its destination on
/// [`commit`](Self::commit) and never otherwise.
#[derive(Debug)]
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    /// `None` once committed.
    file: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Starts a file that will appear at `path`; creates `path`'s directory if needed.
    pub fn create(path: impl AsRef<Path>) -> Result<AtomicFile> {
        let path = path.as_ref().to_path_buf();
        let dir = parent_dir(&path);
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| DataError::io(&tmp, e))?;
        Ok(AtomicFile {
            path,
            tmp,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// The destination.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary file the bytes go to until the commit.
    pub fn temporary_path(&self) -> &Path {
        &self.tmp
    }

    /// Appends `bytes`; an error names the temporary file.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let tmp = &self.tmp;
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| DataError::io(tmp, std::io::Error::other("already committed")))?;
        file.write_all(bytes).map_err(|e| DataError::io(tmp, e))
    }

    /// Flushes and fsyncs the file, renames it to its destination (replacing what was there)
    /// and fsyncs the directory.
    pub fn commit(self) -> Result<()> {
        self.commit_verified(|_| Ok::<(), DataError>(()))
            .map_err(|e| match e {
                VerifiedCommitError::Write(e) | VerifiedCommitError::Verify(e) => e,
            })
    }

    /// As [`commit`](Self::commit), but first calls `verify` with the temporary file, flushed
    /// and fsynced, so a reader can check what was really written (an export reads it back)
    /// before it replaces anything; when `verify` fails the temporary file is removed and the
    /// destination is left as it was.
    pub fn commit_verified<E>(
        mut self,
        verify: impl FnOnce(&Path) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), VerifiedCommitError<E>> {
        let tmp = self.tmp.clone();
        let writer = self.file.take().ok_or_else(|| {
            VerifiedCommitError::Write(DataError::io(
                &tmp,
                std::io::Error::other("already committed"),
            ))
        })?;
        let file = writer
            .into_inner()
            .map_err(|e| VerifiedCommitError::Write(DataError::io(&tmp, e.into_error())))?;
        file.sync_all()
            .map_err(|e| VerifiedCommitError::Write(DataError::io(&tmp, e)))?;
        drop(file);
        // On an error, Drop removes the temporary file.
        verify(&tmp).map_err(VerifiedCommitError::Verify)?;
        std::fs::rename(&tmp, &self.path)
            .map_err(|e| VerifiedCommitError::Write(DataError::io(&self.path, e)))?;
        // Renamed: nothing left for Drop to remove.
        self.tmp = PathBuf::new();
        sync_dir(parent_dir(&self.path)).map_err(VerifiedCommitError::Write)
    }
}

/// Why [`AtomicFile::commit_verified`] did not replace the destination (or, for a `Write`
/// error of the final directory fsync, may not have made the change durable).
#[derive(Debug)]
pub enum VerifiedCommitError<E> {
    /// Writing, syncing or renaming failed.
    Write(DataError),
    /// The check of the written file failed.
    Verify(E),
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            // Close before unlinking; a failure to remove leaves a `.tmp` that is never data.
            self.file = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `path` atomically (see the module docs).
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes)?;
    file.commit()
}

/// Encodes `image` as PNG and writes it atomically.
pub fn save_png_atomic(image: &image::RgbImage, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| DataError::io(path, std::io::Error::other(e)))?;
    write_atomic(path, &png)
}

/// Whether `file_name` is a temporary file of [`AtomicFile`] (committed files never are).
pub fn is_temporary(file_name: &str) -> bool {
    file_name.starts_with('.') && file_name.ends_with(".tmp")
}

/// Removes the temporary files of [`AtomicFile`]s that were never committed (left by a killed
/// process) in `dir` and the directories below it, except this process's own (they may still
/// be in flight); returns the paths removed. Run where a command starts over on a directory it
/// owns (a run's directory, an import's output), so leftovers do not pile up.
pub fn remove_temporaries(dir: &Path) -> Result<Vec<PathBuf>> {
    let own = format!(".{}.", std::process::id());
    let mut removed = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(DataError::io(&dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| DataError::io(&dir, e))?;
            let kind = entry
                .file_type()
                .map_err(|e| DataError::io(entry.path(), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() && is_temporary(&name) && !is_own_temporary(&name, &own) {
                std::fs::remove_file(entry.path()).map_err(|e| DataError::io(entry.path(), e))?;
                removed.push(entry.path());
            }
        }
    }
    removed.sort();
    Ok(removed)
}

/// Whether the temporary `name` (`.<name>.<pid>.<n>.tmp`) is this process's: `own` is
/// `.<pid>.`, and it must come right before the counter.
fn is_own_temporary(name: &str, own: &str) -> bool {
    name.strip_suffix(".tmp")
        .and_then(|rest| rest.rsplit_once('.'))
        .is_some_and(|(before_counter, _)| format!("{before_counter}.").ends_with(own))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// fsync a directory so a rename in it survives a crash (where the platform allows it).
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DataError::io(dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_content_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/x.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(names(p.parent().unwrap()), ["x.json"]);
    }

    #[test]
    fn nothing_appears_before_the_commit_and_a_dropped_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data.bin");
        std::fs::write(&p, b"old").unwrap();
        let mut a = AtomicFile::create(&p).unwrap();
        let mut b = AtomicFile::create(&p).unwrap();
        assert_ne!(a.temporary_path(), b.temporary_path());
        a.write_all(b"new").unwrap();
        b.write_all(b"other").unwrap();
        let tmp = a
            .temporary_path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(is_temporary(&tmp), "{tmp}");
        assert!(!is_temporary("data.bin"));
        // Until the commit, the destination keeps its old bytes.
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        drop(b);
        a.commit().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(names(dir.path()), ["data.bin"]);
    }

    #[test]
    fn a_failed_write_names_the_file_and_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        // A directory in the way of the rename.
        let p = dir.path().join("taken");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("inside"), b"keep").unwrap();
        let err = write_atomic(&p, b"x").unwrap_err();
        assert!(err.to_string().contains("taken"), "{err}");
        assert_eq!(std::fs::read(p.join("inside")).unwrap(), b"keep");
        assert_eq!(names(dir.path()), ["taken"]);
    }

    #[test]
    fn a_failed_verification_leaves_the_destination_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.bin");
        std::fs::write(&p, b"old").unwrap();
        let mut f = AtomicFile::create(&p).unwrap();
        f.write_all(b"new").unwrap();
        let err = f
            .commit_verified(|tmp| {
                // The verifier sees the written bytes under the temporary name.
                assert_eq!(std::fs::read(tmp).unwrap(), b"new");
                Err("mismatch")
            })
            .unwrap_err();
        assert!(matches!(err, VerifiedCommitError::Verify("mismatch")));
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["model.bin"]);
        let mut f = AtomicFile::create(&p).unwrap();
        f.write_all(b"new").unwrap();
        f.commit_verified(|_| Ok::<(), ()>(())).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }

    #[test]
    fn leftover_temporaries_are_removed_but_not_data_or_our_own() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        for name in [
            ".a.json.4242.0.tmp",
            "sub/.b.bin.17.3.tmp",
            "data.tmp",
            "sub/keep.json",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let mut own = AtomicFile::create(dir.path().join("c.json")).unwrap();
        own.write_all(b"in flight").unwrap();
        let removed = remove_temporaries(dir.path()).unwrap();
        assert_eq!(
            removed,
            [
                dir.path().join(".a.json.4242.0.tmp"),
                dir.path().join("sub/.b.bin.17.3.tmp")
            ]
        );
        assert!(own.temporary_path().exists());
        own.commit().unwrap();
        assert_eq!(names(dir.path()), ["c.json", "data.tmp", "sub"]);
        assert_eq!(names(&dir.path().join("sub")), ["keep.json"]);
    }

    #[test]
    fn png_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.png");
        let mut img = image::RgbImage::new(5, 3);
        img.put_pixel(4, 2, image::Rgb([1, 2, 3]));
        save_png_atomic(&img, &p).unwrap();
        assert_eq!(image::open(&p).unwrap().to_rgb8(), img);
    }
}
