//! Fuzzes `ShardReader`: whatever the bytes, opening and reading a shard gives a `DataError`
//! naming the shard (and the sample), never a panic, an out-of-bounds read or an unbounded
//! allocation; and every sample that reads is one a writer accepts.
//!
//! Run from `fuzz/`: `cargo +nightly fuzz run shard_reader -- -max_total_time=600 -jobs=1`
//! (with `-jobs`, libFuzzer logs to `fuzz-N.log` in the working directory, which `fuzz/`
//! ignores). The seeds are the `seed-*` shards in `corpus/shard_reader/`;
//! `cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus` rewrites them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percept_data::{DataError, EncodedRecord, ShardReader};

const NAME: &str = "fuzz.shard";

fuzz_target!(|data: &[u8]| {
    // As is: mutations mostly meet the structure checks and the record checksums.
    exercise(data.to_vec());
    // With the index checksums made to match, so mutated records reach the label parser and
    // the image decoders (a fuzzer cannot forge blake3 by itself).
    let mut fixed = data.to_vec();
    if fix_checksums(&mut fixed) {
        exercise(fixed);
    }
});

fn exercise(bytes: Vec<u8>) {
    let r = match ShardReader::from_bytes(NAME, bytes) {
        Ok(r) => r,
        Err(DataError::CorruptShard { path, .. }) => return assert_eq!(path.to_str(), Some(NAME)),
        Err(DataError::CorruptRecord { path, .. }) => return assert_eq!(path.to_str(), Some(NAME)),
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
            ) => assert_eq!((path.to_str(), index), (Some(NAME), i)),
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
            ) => assert_eq!((path.to_str(), index), (Some(NAME), i)),
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
fn fix_checksums(data: &mut [u8]) -> bool {
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
