//! Every reader of bytes from outside, called as percept calls it, with the contract each must
//! keep whatever the bytes: no panic, no crash, no unbounded allocation, and an error that
//! names the input (or, for readers that return a bare reason, a non-empty one that their
//! caller prefixes with the file).
//!
//! Shared by the fuzz targets (`fuzz_targets/<target>.rs`, one per reader, on nightly) and the
//! stable replay test (`tests/readers_fuzz.rs` in the main workspace, which CI runs): both
//! include this file with `#[path]`, so they check the same calls.

// Each fuzz target uses one reader of this module.
#![allow(dead_code)]

use std::fmt::Display;
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::module::Module;
use percept_data::shard::{check_jpeg_complete, MAX_IMAGE_PIXELS};
use percept_data::{DataError, EncodedRecord, Manifest, ShardReader};
use percept_eval::model_file::{check_weights, load_model, read_model_card};
use percept_model::PerceptionNet;
use percept_train::checkpoint::{decode_record, TrainingState};
use percept_train::RunConfig;

/// The fuzz targets, each the name of a directory of seeds in `fuzz/corpus/`.
pub const TARGETS: [&str; 7] = [
    "shard_reader",
    "model_file",
    "training_state",
    "manifest",
    "audit_log",
    "run_config",
    "image_import",
];

/// Runs the reader of `target` on `data`.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "shard_reader" => shard(data),
        "model_file" => model_file(data),
        "training_state" => training_state(data),
        "manifest" => manifest(data),
        "audit_log" => audit_log(data),
        "run_config" => run_config(data),
        "image_import" => image_import(data),
        other => panic!("no reader for fuzz target {other}"),
    }
}

/// The scratch directory of this process and thread.
fn scratch_dir() -> PathBuf {
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    std::env::temp_dir().join(format!("percept-readers-{}-{thread}", std::process::id()))
}

/// Removes this thread's scratch files (the replay test calls it when done).
pub fn remove_scratch() {
    let _ = std::fs::remove_dir_all(scratch_dir());
}

/// Writes `data` to a scratch file `name` of this process and thread (file readers take a
/// path), in a directory of its own per target so that a config's `extends` finds nothing else.
fn scratch(target: &str, name: &str, data: &[u8]) -> PathBuf {
    let dir = scratch_dir().join(target);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    let path = dir.join(name);
    std::fs::write(&path, data).expect("write a scratch file");
    path
}

/// Asserts that the error `e` names `path`.
fn names(e: &impl Display, path: &Path) {
    let text = e.to_string();
    let shown = path.display().to_string();
    assert!(text.contains(&shown), "error does not name {shown}: {text}");
}

/// `ShardReader`: opening and reading every sample gives a `DataError` naming the shard (and
/// the sample), and every sample that reads is one a writer accepts. As is, mutations mostly
/// meet the structure checks and the record checksums; with the index checksums made to
/// match, mutated records reach the label parser and the image decoders (a fuzzer cannot forge
/// blake3 by itself).
pub fn shard(data: &[u8]) {
    shard_bytes(data.to_vec());
    let mut fixed = data.to_vec();
    if fix_shard_checksums(&mut fixed) {
        shard_bytes(fixed);
    }
}

const SHARD_NAME: &str = "fuzz.shard";

fn shard_bytes(bytes: Vec<u8>) {
    let r = match ShardReader::from_bytes(SHARD_NAME, bytes) {
        Ok(r) => r,
        Err(DataError::CorruptShard { path, .. } | DataError::CorruptRecord { path, .. }) => {
            return assert_eq!(path.to_str(), Some(SHARD_NAME))
        }
        Err(e) => panic!("open: unexpected error variant: {e:?}"),
    };
    let n = r.len();
    let sums = r.sample_checksums();
    assert_eq!(sums.len(), n);
    r.verify_file_hash(&r.file_hash()).unwrap();
    for (i, sum) in sums.iter().enumerate() {
        assert_eq!(&r.checksum_hex(i).unwrap(), sum);
        match r.jpeg_bytes(i) {
            Ok(_) => {}
            Err(
                DataError::ChecksumMismatch { path, index, .. }
                | DataError::CorruptRecord { path, index, .. },
            ) => assert_eq!((path.to_str(), index), (Some(SHARD_NAME), i)),
            Err(e) => panic!("sample {i}: unexpected error variant: {e:?}"),
        }
        match r.read(i) {
            Ok(sample) => {
                if let Err(e) = EncodedRecord::encode(&sample) {
                    panic!("sample {i} reads but a writer refuses it: {e}");
                }
            }
            Err(
                DataError::ChecksumMismatch { path, index, .. }
                | DataError::CorruptRecord { path, index, .. }
                | DataError::ImageDecode { path, index, .. },
            ) => assert_eq!((path.to_str(), index), (Some(SHARD_NAME), i)),
            Err(e) => panic!("sample {i}: unexpected error variant: {e:?}"),
        }
    }
    assert!(matches!(
        r.read(n),
        Err(DataError::IndexOutOfRange { index, len, .. }) if index == n && len == n
    ));
}

/// Sets each index checksum that points at bytes inside `data` to their blake3, following the
/// v1 layout (footer: index offset, record count; index entries: offset, length, checksum).
/// Returns whether any checksum changed.
fn fix_shard_checksums(data: &mut [u8]) -> bool {
    const FOOTER_LEN: usize = 24;
    const ENTRY_LEN: u64 = 48;
    let n = data.len();
    if n < 8 + FOOTER_LEN {
        return false;
    }
    let u64_at = |d: &[u8], p: usize| u64::from_le_bytes(d[p..p + 8].try_into().unwrap());
    let index_offset = u64_at(data, n - FOOTER_LEN);
    let count = u64_at(data, n - FOOTER_LEN + 8);
    let index_end = (n - FOOTER_LEN) as u64;
    let mut changed = false;
    for i in 0..count {
        // Stops at the footer, so at most n / 48 entries whatever `count` says.
        let entry_end = i
            .checked_mul(ENTRY_LEN)
            .and_then(|o| o.checked_add(index_offset))
            .and_then(|p| p.checked_add(ENTRY_LEN));
        let pos = match entry_end {
            Some(e) if e <= index_end => (e - ENTRY_LEN) as usize,
            _ => break,
        };
        let (offset, length) = (u64_at(data, pos), u64_at(data, pos + 8));
        let Some(end) = offset.checked_add(length).filter(|&e| e <= n as u64) else {
            continue;
        };
        let sum = blake3::hash(&data[offset as usize..end as usize]);
        let slot = &mut data[pos + 16..pos + 48];
        if slot != sum.as_bytes() {
            slot.copy_from_slice(sum.as_bytes());
            changed = true;
        }
    }
    changed
}

/// The model file loader (`eval`, `predict`, `export`, `train.init`): the card and the
/// weights' check name the file; weights that pass the check are all finite f32; a file whose
/// card and weights pass is loaded into the network its card describes, or refused naming it.
pub fn model_file(data: &[u8]) {
    let path = scratch("model_file", "model.safetensors", data);
    let card = read_model_card(&path);
    if let Err(e) = &card {
        names(e, &path);
    }
    match check_weights(data.to_vec(), &path) {
        Err(e) => names(&e, &path),
        Ok(checked) => {
            let file = safetensors::SafeTensors::deserialize(&checked.bytes)
                .expect("checked weights parse");
            for (name, view) in file.tensors() {
                assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
                assert!(view
                    .data()
                    .chunks_exact(4)
                    .all(|b| f32::from_le_bytes(b.try_into().unwrap()).is_finite()));
            }
            if card.is_ok() {
                if let Err(e) = load_model::<Flex>(&path, &Default::default()) {
                    names(&e, &path);
                }
            }
        }
    }
}

/// A checkpoint's training state (`*.train.safetensors`: raw weights and optimiser state as
/// burn records in u8 tensors), as `train --resume` reads it: the container refuses with a
/// reason (the trainer prefixes the file), and what it accepts writes back the same; the raw
/// and EMA weights decode as the network's record or are refused with a reason
/// (`checkpoint::decode_record`, not burn's recorder, which panics on malformed bytes).
pub fn training_state(data: &[u8]) {
    match TrainingState::from_bytes(data) {
        Err(why) => assert!(!why.is_empty()),
        Ok(state) => {
            assert_eq!(
                TrainingState::from_bytes(&state.to_bytes()).as_ref(),
                Ok(&state)
            );
            type Record = <PerceptionNet<Flex> as Module<Flex>>::Record;
            let device = Default::default();
            for bytes in std::iter::once(&state.model).chain(&state.ema) {
                if let Err(why) = decode_record::<Flex, Record>(bytes, &device) {
                    assert!(!why.is_empty());
                }
            }
        }
    }
}

/// `Manifest::load`: a manifest that loads is valid; one that does not is refused naming it.
pub fn manifest(data: &[u8]) {
    let path = scratch("manifest", "manifest.json", data);
    match Manifest::load(&path) {
        Ok(m) => assert_eq!(m.validate(), Ok(())),
        Err(e) => names(&e, &path),
    }
}

/// `audit::verify` (`percept audit verify`): a log verifies or is refused naming it.
pub fn audit_log(data: &[u8]) {
    let path = scratch("audit_log", "audit.jsonl", data);
    if let Err(e) = percept_data::audit::verify(&path) {
        names(&e, &path);
    }
}

/// `RunConfig::load` (`percept train`, `config check`): a config resolves or is refused
/// naming it.
pub fn run_config(data: &[u8]) {
    let path = scratch("run_config", "config.toml", data);
    if let Err(e) = RunConfig::load(&path) {
        names(&e, &path);
    }
}

/// The importers' image reader (`pixels::decode_image`) and `percept predict`'s: both refuse
/// a truncated JPEG; what the importer accepts fits a shard; predict's errors name the file.
pub fn image_import(data: &[u8]) {
    let jpeg = data.starts_with(&[0xFF, 0xD8]);
    match percept_import::pixels::decode_image(data.to_vec()) {
        Ok((image, kept)) => {
            let (w, h) = image.dimensions();
            assert!(u64::from(w) * u64::from(h) <= MAX_IMAGE_PIXELS);
            if jpeg {
                assert_eq!(check_jpeg_complete(data), Ok(()));
            }
            if let Some(bytes) = kept {
                assert_eq!(bytes, data);
            }
        }
        Err(why) => assert!(!why.is_empty()),
    }
    let path = scratch("image_import", "image", data);
    match percept_eval::predict::read_image(&path) {
        Ok(_) if jpeg => assert_eq!(check_jpeg_complete(data), Ok(())),
        Ok(_) => {}
        Err(e) => names(&e, &path),
    }
}
