//! A dataset split: the shards of one split of a dataset directory, verified against the
//! manifest, behind one global sample index.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::manifest::{Manifest, Split};
use crate::residency::ClearedDataset;
use crate::sample::Sample;
use crate::shard::ShardReader;

/// What to do with a sample or shard that fails verification or decoding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntegrityPolicy {
    /// Stop with the path, shard and sample index (the default).
    #[default]
    Fail,
    /// Skip the sample, count it and record it; the run goes on.
    Skip,
}

/// The result of opening one shard, reported to the caller's audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardCheck {
    /// File name within the dataset directory.
    pub shard: String,
    pub split: Split,
    /// The blake3 the manifest records for the file.
    pub hash: String,
    /// `"ok"`, or what failed (under `skip`, what happens to the shard's samples).
    pub result: String,
}

/// An opened shard, or why it could not be used (only under [`IntegrityPolicy::Skip`]).
#[derive(Debug)]
enum ShardSlot {
    Open(ShardReader),
    Unusable { path: PathBuf, why: String },
}

/// One split of a dataset, opened and verified.
///
/// Samples are numbered globally across the split's shards in manifest order. `Sync`: batches
/// can be decoded on many threads at once.
#[derive(Debug)]
pub struct Dataset {
    dir: PathBuf,
    split: Split,
    manifest: Manifest,
    shards: Vec<ShardSlot>,
    /// `starts[k]` is the global index of shard `k`'s first sample; one extra entry at the end
    /// holds the total.
    starts: Vec<usize>,
    /// Samples known bad at open (index checksum differs from the manifest), under `skip`.
    known_bad: BTreeMap<usize, String>,
}

impl Dataset {
    /// Opens every shard of `split` of a dataset the residency guard cleared, from the manifest
    /// the guard read.
    ///
    /// Each shard file must hash to the manifest's `hash`, hold `samples` records and its index
    /// checksums must equal the manifest's `sample_checksums`; this reads every shard once.
    /// `observer` sees every shard's result, including the one that fails. Under
    /// [`IntegrityPolicy::Skip`], a shard whose file hash differs stays open (each record is
    /// still verified against its checksum on read), an unreadable shard's samples and samples
    /// whose checksum differs from the manifest fail on [`get`](Self::get), and the sample
    /// count stays as the manifest says so indices do not shift.
    pub fn open(
        cleared: &ClearedDataset,
        split: Split,
        integrity: IntegrityPolicy,
        observer: &mut dyn FnMut(&ShardCheck),
    ) -> Result<Dataset> {
        let dir = cleared.dir();
        let manifest = cleared.manifest().clone();
        let mut shards = Vec::new();
        let mut starts = vec![0];
        let mut known_bad = BTreeMap::new();
        for entry in manifest.shards_of(split) {
            let path = dir.join(&entry.file);
            let start = *starts.last().unwrap_or(&0);
            let checked = Self::open_shard(&path, entry);
            let (slot, result) = match checked {
                Ok((reader, bad)) => {
                    let result = match bad.first() {
                        None => "ok".to_string(),
                        Some(problem) => problem.to_string(),
                    };
                    let reported = match (&bad[..], integrity) {
                        ([], _) => result,
                        (_, IntegrityPolicy::Fail) => {
                            observer(&ShardCheck {
                                shard: entry.file.clone(),
                                split,
                                hash: entry.hash.clone(),
                                result,
                            });
                            return Err(bad.into_iter().next().expect("not empty").into_error());
                        }
                        (_, IntegrityPolicy::Skip) => {
                            for problem in &bad {
                                if let ShardProblem::SampleChecksum { k, .. } = problem {
                                    known_bad.insert(start + k, problem.to_string());
                                }
                            }
                            format!("{result}; integrity policy skip: records verified on read")
                        }
                    };
                    (ShardSlot::Open(reader), reported)
                }
                Err(e) => {
                    let result = e.to_string();
                    if integrity == IntegrityPolicy::Fail {
                        observer(&ShardCheck {
                            shard: entry.file.clone(),
                            split,
                            hash: entry.hash.clone(),
                            result,
                        });
                        return Err(e);
                    }
                    let why = result.clone();
                    (
                        ShardSlot::Unusable { path, why },
                        format!("{result}; integrity policy skip: its samples are skipped"),
                    )
                }
            };
            observer(&ShardCheck {
                shard: entry.file.clone(),
                split,
                hash: entry.hash.clone(),
                result,
            });
            starts.push(start + entry.samples);
            shards.push(slot);
        }
        Ok(Dataset {
            dir: dir.to_path_buf(),
            split,
            manifest,
            shards,
            starts,
            known_bad,
        })
    }

    /// Opens one shard and compares it with its manifest entry. Problems that leave the shard
    /// readable record by record come back beside the reader.
    fn open_shard(
        path: &Path,
        entry: &crate::manifest::ShardEntry,
    ) -> Result<(ShardReader, Vec<ShardProblem>)> {
        let reader = ShardReader::open(path)?;
        if reader.len() != entry.samples {
            return Err(DataError::ShardMismatch {
                path: path.to_path_buf(),
                what: format!(
                    "the manifest says {} samples, the shard holds {}",
                    entry.samples,
                    reader.len()
                ),
            });
        }
        let mut problems = Vec::new();
        if let Err(e) = reader.verify_file_hash(&entry.hash) {
            problems.push(ShardProblem::FileHash(e));
        }
        let sums = reader.sample_checksums();
        for (k, (actual, expected)) in sums.iter().zip(&entry.sample_checksums).enumerate() {
            if actual != expected {
                problems.push(ShardProblem::SampleChecksum {
                    path: path.to_path_buf(),
                    k,
                    actual: actual.clone(),
                    expected: expected.clone(),
                });
            }
        }
        // The checks read every byte; the records are read again one by one, when needed.
        reader.release_pages();
        Ok((reader, problems))
    }

    /// Drops every shard's pages from the process's resident set (see
    /// [`ShardReader::release_pages`]). A sequential pass over the split (evaluation) calls it
    /// as it goes, so its resident memory does not grow with the number of samples read.
    pub fn release_pages(&self) {
        for slot in &self.shards {
            if let ShardSlot::Open(reader) = slot {
                reader.release_pages();
            }
        }
    }

    /// Number of samples in the split.
    pub fn len(&self) -> usize {
        self.starts.last().copied().unwrap_or(0)
    }

    /// Whether the split holds no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The split this dataset was opened for.
    pub fn split(&self) -> Split {
        self.split
    }

    /// The dataset directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest as loaded (its [`Manifest::hash`] identifies it in provenance).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Class names; box classes index this list.
    pub fn classes(&self) -> &[String] {
        &self.manifest.classes
    }

    /// File name (within the dataset directory) of the shard holding global sample `i`.
    pub fn shard_file(&self, i: usize) -> Result<&str> {
        let (k, _) = self.locate(i)?;
        Ok(&self
            .manifest
            .shards_of(self.split)
            .nth(k)
            .expect("one slot per manifest shard")
            .file)
    }

    /// Maps a global sample index to `(shard position, index within that shard)`.
    pub fn locate(&self, i: usize) -> Result<(usize, usize)> {
        if i >= self.len() {
            return Err(DataError::IndexOutOfRange {
                index: i,
                len: self.len(),
                what: format!("the {} split of {}", self.split, self.dir.display()),
            });
        }
        // starts is sorted; the shard is the last one starting at or before i. Empty shards
        // share a start with their successor, and partition_point skips past them.
        let k = self.starts.partition_point(|&s| s <= i) - 1;
        Ok((k, i - self.starts[k]))
    }

    /// The verified JPEG bytes of sample `i`, undecoded.
    pub fn jpeg_bytes(&self, i: usize) -> Result<&[u8]> {
        let (k, local) = self.locate(i)?;
        match &self.shards[k] {
            ShardSlot::Open(reader) => reader.jpeg_bytes(local),
            ShardSlot::Unusable { path, why } => Err(DataError::ShardUnusable {
                path: path.clone(),
                index: local,
                why: why.clone(),
            }),
        }
    }

    /// Reads, verifies and decodes sample `i` (global index within the split).
    ///
    /// Box classes are checked against the dataset's class list.
    pub fn get(&self, i: usize) -> Result<Sample> {
        let (k, local) = self.locate(i)?;
        let reader = match &self.shards[k] {
            ShardSlot::Open(reader) => reader,
            ShardSlot::Unusable { path, why } => {
                return Err(DataError::ShardUnusable {
                    path: path.clone(),
                    index: local,
                    why: why.clone(),
                })
            }
        };
        if let Some(why) = self.known_bad.get(&i) {
            return Err(DataError::CorruptRecord {
                path: reader.path().to_path_buf(),
                index: local,
                what: why.clone(),
            });
        }
        let sample = reader.read(local)?;
        let classes = self.manifest.classes.len();
        if let Some((box_index, b)) = sample
            .boxes
            .iter()
            .enumerate()
            .find(|(_, b)| b.class as usize >= classes)
        {
            return Err(DataError::UnknownClass {
                path: reader.path().to_path_buf(),
                index: local,
                box_index,
                class: b.class,
                classes,
            });
        }
        Ok(sample)
    }
}

/// A verification failure that leaves a shard readable record by record.
#[derive(Debug)]
enum ShardProblem {
    FileHash(DataError),
    SampleChecksum {
        path: PathBuf,
        k: usize,
        actual: String,
        expected: String,
    },
}

impl ShardProblem {
    fn into_error(self) -> DataError {
        match self {
            ShardProblem::FileHash(e) => e,
            ShardProblem::SampleChecksum {
                path,
                k,
                actual,
                expected,
            } => DataError::ShardMismatch {
                path,
                what: format!(
                    "sample {k}: the shard index checksum {actual} differs from the manifest's \
                     {expected}"
                ),
            },
        }
    }
}

impl std::fmt::Display for ShardProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardProblem::FileHash(e) => write!(f, "{e}"),
            ShardProblem::SampleChecksum {
                k,
                actual,
                expected,
                ..
            } => write!(
                f,
                "sample {k}: the shard index checksum {actual} differs from the manifest's \
                 {expected}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ShardEntry;
    use crate::manifest::MANIFEST_FILE;
    use crate::shard::ShardWriter;
    use crate::testutil::{open_at_home, test_sample};

    /// Writes a dataset with train shards of 2 and 0 and 1 samples and a val shard of 1.
    fn write_dataset(dir: &Path) -> Manifest {
        let mut m = Manifest::new("t", "FR", vec!["a".into(), "b".into(), "c".into()]).unwrap();
        let layout = [
            ("train-00000.shard", Split::Train, vec![0, 1]),
            ("train-00001.shard", Split::Train, vec![]),
            ("train-00002.shard", Split::Train, vec![2]),
            ("val-00000.shard", Split::Val, vec![3]),
        ];
        for (file, split, ks) in layout {
            let mut w = ShardWriter::create(dir.join(file)).unwrap();
            for k in ks {
                w.push(&test_sample(k)).unwrap();
            }
            let info = w.finish().unwrap();
            m.shards.push(ShardEntry {
                file: info.file_name,
                split,
                samples: info.samples,
                hash: info.hash,
                sample_checksums: info.sample_checksums,
            });
        }
        m.save(dir.join(MANIFEST_FILE)).unwrap();
        m
    }

    #[test]
    fn global_index_spans_shards() {
        let dir = tempfile::tempdir().unwrap();
        let m = write_dataset(dir.path());
        let ds = open_at_home(dir.path(), Split::Train).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.classes(), &m.classes[..]);
        assert_eq!(ds.manifest().hash(), m.hash());
        assert_eq!(ds.locate(0).unwrap(), (0, 0));
        assert_eq!(ds.locate(1).unwrap(), (0, 1));
        assert_eq!(ds.locate(2).unwrap(), (2, 0));
        for (i, k) in [0u32, 1, 2].into_iter().enumerate() {
            assert_eq!(ds.get(i).unwrap().id, format!("test-{k}"));
        }
        assert!(matches!(
            ds.get(3),
            Err(DataError::IndexOutOfRange {
                index: 3,
                len: 3,
                ..
            })
        ));
        let val = open_at_home(dir.path(), Split::Val).unwrap();
        assert_eq!(val.len(), 1);
        assert_eq!(val.get(0).unwrap().id, "test-3");

        fn assert_sync<T: Sync + Send>() {}
        assert_sync::<Dataset>();
    }

    #[test]
    fn wrong_shard_hash_in_manifest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = write_dataset(dir.path());
        m.shards[2].hash = "00".repeat(32);
        m.save(dir.path().join(MANIFEST_FILE)).unwrap();
        let err = open_at_home(dir.path(), Split::Train).unwrap_err();
        assert!(
            matches!(&err, DataError::ShardHashMismatch { path, .. }
                if path.ends_with("train-00002.shard")),
            "{err}"
        );
        // The val split does not touch that shard.
        open_at_home(dir.path(), Split::Val).unwrap();
    }

    #[test]
    fn modified_shard_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path());
        let path = dir.path().join("train-00000.shard");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = open_at_home(dir.path(), Split::Train).unwrap_err();
        assert!(matches!(err, DataError::ShardHashMismatch { .. }), "{err}");
    }

    #[test]
    fn checksum_list_mismatch_names_the_sample() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = write_dataset(dir.path());
        m.shards[0].sample_checksums[1] = "ff".repeat(32);
        m.save(dir.path().join(MANIFEST_FILE)).unwrap();
        let err = open_at_home(dir.path(), Split::Train).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DataError::ShardMismatch { .. }), "{msg}");
        assert!(
            msg.contains("sample 1") && msg.contains("train-00000.shard"),
            "{msg}"
        );
    }

    #[test]
    fn missing_shard_is_an_io_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path());
        std::fs::remove_file(dir.path().join("val-00000.shard")).unwrap();
        let err = open_at_home(dir.path(), Split::Val).unwrap_err();
        assert!(err.to_string().contains("val-00000.shard"), "{err}");
    }

    fn open_with(dir: &Path, integrity: IntegrityPolicy) -> (Result<Dataset>, Vec<ShardCheck>) {
        let guard = crate::ResidencyGuard::new(crate::Site {
            region: "FR".into(),
            name: "t".into(),
        })
        .unwrap();
        let cleared = guard.check(dir).unwrap();
        let mut checks = Vec::new();
        let ds = Dataset::open(&cleared, Split::Train, integrity, &mut |c| {
            checks.push(c.clone())
        });
        (ds, checks)
    }

    #[test]
    fn observer_sees_every_shard() {
        let dir = tempfile::tempdir().unwrap();
        let m = write_dataset(dir.path());
        let (ds, checks) = open_with(dir.path(), IntegrityPolicy::Fail);
        ds.unwrap();
        let files: Vec<_> = checks.iter().map(|c| c.shard.as_str()).collect();
        assert_eq!(
            files,
            [
                "train-00000.shard",
                "train-00001.shard",
                "train-00002.shard"
            ]
        );
        assert!(checks.iter().all(|c| c.result == "ok"));
        assert_eq!(checks[2].hash, m.shards[2].hash);
    }

    #[test]
    fn skip_policy_keeps_good_samples_and_names_the_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path());
        // Damage the JPEG of record 1 of the first shard (records start after the 8-byte magic).
        let path = dir.path().join("train-00000.shard");
        let reader = ShardReader::open(&path).unwrap();
        let r0 = reader.record_bytes(0).unwrap().len();
        drop(reader);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8 + r0 + 100] ^= 0x55;
        std::fs::write(&path, bytes).unwrap();

        let (ds, checks) = open_with(dir.path(), IntegrityPolicy::Fail);
        assert!(matches!(ds, Err(DataError::ShardHashMismatch { .. })));
        assert!(checks[0].result.contains("train-00000.shard"), "{checks:?}");

        let (ds, checks) = open_with(dir.path(), IntegrityPolicy::Skip);
        let ds = ds.unwrap();
        assert!(checks[0].result.contains("records verified on read"));
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.get(0).unwrap().id, "test-0");
        let err = ds.get(1).unwrap_err();
        assert!(
            matches!(err, DataError::ChecksumMismatch { index: 1, .. }),
            "{err}"
        );
        assert_eq!(ds.shard_file(1).unwrap(), "train-00000.shard");
        assert_eq!(ds.get(2).unwrap().id, "test-2");
    }

    #[test]
    fn skip_policy_reports_samples_of_an_unreadable_shard() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path());
        std::fs::write(dir.path().join("train-00002.shard"), b"not a shard").unwrap();
        let (ds, _) = open_with(dir.path(), IntegrityPolicy::Fail);
        assert!(matches!(ds, Err(DataError::CorruptShard { .. })));
        let (ds, checks) = open_with(dir.path(), IntegrityPolicy::Skip);
        let ds = ds.unwrap();
        assert!(checks[2].result.contains("its samples are skipped"));
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.get(1).unwrap().id, "test-1");
        let err = ds.get(2).unwrap_err();
        assert!(
            matches!(&err, DataError::ShardUnusable { path, index: 0, .. }
                if path.ends_with("train-00002.shard")),
            "{err}"
        );
    }

    #[test]
    fn box_class_outside_the_class_list_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest::new("t", "FR", vec!["a".into(), "b".into()]).unwrap();
        let mut w = ShardWriter::create(dir.path().join("train-00000.shard")).unwrap();
        w.push(&test_sample(3)).unwrap(); // boxes of classes 0, 1, 2
        let info = w.finish().unwrap();
        m.shards.push(ShardEntry {
            file: info.file_name,
            split: Split::Train,
            samples: info.samples,
            hash: info.hash,
            sample_checksums: info.sample_checksums,
        });
        m.save(dir.path().join(MANIFEST_FILE)).unwrap();
        let ds = open_at_home(dir.path(), Split::Train).unwrap();
        let err = ds.get(0).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::UnknownClass {
                    index: 0,
                    box_index: 2,
                    class: 2,
                    classes: 2,
                    ..
                }
            ),
            "{err}"
        );
    }
}
