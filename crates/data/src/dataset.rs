//! A dataset split: the shards of one split of a dataset directory, verified against the
//! manifest, behind one global sample index.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::manifest::{Manifest, Split, MANIFEST_FILE};
use crate::sample::Sample;
use crate::shard::ShardReader;

/// One split of a dataset, opened and verified.
///
/// Samples are numbered globally across the split's shards in manifest order. `Sync`: batches
/// can be decoded on many threads at once.
#[derive(Debug)]
pub struct Dataset {
    dir: PathBuf,
    split: Split,
    manifest: Manifest,
    shards: Vec<ShardReader>,
    /// `starts[k]` is the global index of shard `k`'s first sample; one extra entry at the end
    /// holds the total.
    starts: Vec<usize>,
}

impl Dataset {
    /// Opens `<dir>/manifest.json` and every shard of `split`.
    ///
    /// Each shard file must hash to the manifest's `hash`, hold `samples` records and its index
    /// checksums must equal the manifest's `sample_checksums`; this reads every shard once.
    pub fn open(dir: &Path, split: Split) -> Result<Dataset> {
        let manifest = Manifest::load(dir.join(MANIFEST_FILE))?;
        let mut shards = Vec::new();
        let mut starts = vec![0];
        for entry in manifest.shards_of(split) {
            let path = dir.join(&entry.file);
            let reader = ShardReader::open(&path)?;
            reader.verify_file_hash(&entry.hash)?;
            if reader.len() != entry.samples {
                return Err(DataError::ShardMismatch {
                    path,
                    what: format!(
                        "the manifest says {} samples, the shard holds {}",
                        entry.samples,
                        reader.len()
                    ),
                });
            }
            let sums = reader.sample_checksums();
            if let Some(k) = (0..sums.len()).find(|&k| sums[k] != entry.sample_checksums[k]) {
                return Err(DataError::ShardMismatch {
                    path,
                    what: format!(
                        "sample {k}: the shard index checksum {} differs from the manifest's {}",
                        sums[k], entry.sample_checksums[k]
                    ),
                });
            }
            starts.push(starts.last().copied().unwrap_or(0) + reader.len());
            shards.push(reader);
        }
        Ok(Dataset {
            dir: dir.to_path_buf(),
            split,
            manifest,
            shards,
            starts,
        })
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

    /// The opened shards of the split, in manifest order.
    pub fn shards(&self) -> &[ShardReader] {
        &self.shards
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

    /// Reads, verifies and decodes sample `i` (global index within the split).
    pub fn get(&self, i: usize) -> Result<Sample> {
        let (k, local) = self.locate(i)?;
        self.shards[k].read(local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ShardEntry;
    use crate::shard::ShardWriter;
    use crate::testutil::test_sample;

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
        let ds = Dataset::open(dir.path(), Split::Train).unwrap();
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
        let val = Dataset::open(dir.path(), Split::Val).unwrap();
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
        let err = Dataset::open(dir.path(), Split::Train).unwrap_err();
        assert!(
            matches!(&err, DataError::ShardHashMismatch { path, .. }
                if path.ends_with("train-00002.shard")),
            "{err}"
        );
        // The val split does not touch that shard.
        Dataset::open(dir.path(), Split::Val).unwrap();
    }

    #[test]
    fn modified_shard_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path());
        let path = dir.path().join("train-00000.shard");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = Dataset::open(dir.path(), Split::Train).unwrap_err();
        assert!(matches!(err, DataError::ShardHashMismatch { .. }), "{err}");
    }

    #[test]
    fn checksum_list_mismatch_names_the_sample() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = write_dataset(dir.path());
        m.shards[0].sample_checksums[1] = "ff".repeat(32);
        m.save(dir.path().join(MANIFEST_FILE)).unwrap();
        let err = Dataset::open(dir.path(), Split::Train).unwrap_err();
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
        let err = Dataset::open(dir.path(), Split::Val).unwrap_err();
        assert!(err.to_string().contains("val-00000.shard"), "{err}");
    }
}
