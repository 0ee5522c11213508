//! percept-data: the data layer of percept.
//!
//! - [`sample`]: one labelled frame ([`Sample`]).
//! - [`shard`]: the shard file format v2 ([`ShardWriter`], [`ShardReader`]).
//! - [`manifest`]: dataset manifests with region and residency policy ([`Manifest`]).
//! - [`keys`]: Ed25519 keys of data stewards and sites, and a site's trust store.
//! - [`residency`]: the residency guard, the only way to open a dataset ([`ResidencyGuard`]).
//! - [`dataset`]: one verified split of a dataset directory ([`Dataset`]).
//! - [`augment`]: training-time augmentation: zoom, shift, flip, HSV jitter, mosaics
//!   ([`augment()`], [`mosaic`]).
//! - [`batch`]: letterboxing, normalisation and collation into flat arrays ([`Batch`]).

pub mod atomic_file;
pub mod audit;
pub mod augment;
pub mod batch;
pub mod country;
pub mod dataset;
pub mod error;
pub mod keys;
pub mod letterbox;
pub mod manifest;
pub mod process_memory;
pub mod residency;
pub mod sample;
pub mod sampler;
pub mod shard;
#[cfg(test)]
mod testutil;

pub use atomic_file::{save_png_atomic, write_atomic, AtomicFile};
pub use audit::{AuditEntry, AuditError, AuditEvent, AuditHead, AuditLog, AuditReport, AUDIT_FILE};
pub use augment::{
    augment, mosaic, AugmentConfig, AugmentParams, Augmented, FlipPolicy, HsvJitter, MosaicParams,
    DEFAULT_MIN_BOX_SIDE,
};
pub use batch::{
    collate, collate_augmented, image_to_chw, letterbox_image, letterbox_mask, Batch, Letterbox,
    NORM_MEAN, NORM_STD,
};
pub use country::{
    ClassMapping, ClassOrigin, CountryProfile, EdgeLines, LineColour, NewObjectShape, StopSign,
    WarningSign,
};
pub use dataset::{Dataset, IntegrityPolicy, ShardCheck};
pub use error::{DataError, Result};
pub use keys::{PublicKey, SecretKey, SignatureDomain, Steward, TrustStore};
pub use manifest::{
    is_region_code, ImportRecord, LabelledTasks, Manifest, ManifestSignature, Policy, ShardEntry,
    Split, MANIFEST_FILE,
};
pub use residency::{
    ClearedDataset, GuardDecision, GuardRefusal, ResidencyGuard, SignaturePolicy, Site,
};
pub use sample::{BoxLabel, Conditions, IgnoreRegion, Sample, TrafficSide};
pub use sampler::{
    RegionSampler, SampleRef, SamplerConfig, SamplerError, SamplerSource, SamplerState,
    SAMPLER_STATE_VERSION,
};
pub use shard::{EncodedRecord, ShardInfo, ShardReader, ShardWriter};
