//! `percept-infer`: a percept model file on the CPU, for deployment. Loads a safetensors export
//! (or checkpoint) with its model card, letterboxes a frame, runs the network (burn-flex, no
//! autodiff, no optimiser, no data pipeline) and returns detections and masks in the frame's
//! pixels:
//!
//! ```no_run
//! let detector = percept_infer::Detector::load("model.safetensors")?;
//! let image = image::open("frame.png").unwrap().to_rgb8();
//! let found = detector.detect(&image);
//! for d in &found.boxes {
//!     println!("{} {:.2} {:?}", d.class_name, d.score, d.bbox);
//! }
//! # Ok::<(), percept_infer::InferError>(())
//! ```
//!
//! Each mechanism a deployed model shares with training and evaluation exists once, here, and
//! percept-data and percept-eval re-export it:
//!
//! - [`letterbox`]: the letterbox geometry ([`Letterbox`], [`PAD_VALUE`]);
//! - [`warp`]: the resampler that letterboxes frames (and, in percept-data, augments them);
//! - [`normalize`]: frames as normalised `[3, h, w]` floats ([`prepare`], [`image_to_chw`]);
//! - [`input`]: the model card's input fields ([`InputSize`], [`Normalization`]);
//! - [`card`]: reading and checking the model card ([`DeployCard`], [`Card`]);
//! - [`weights`]: the weight check ([`check_weights`]) and model loading ([`load_net`]);
//! - [`image_space`]: boxes and masks mapped back to the frame's pixels;
//! - [`detect`]: the whole path ([`Detector`], [`detect_with`]).
//!
//! Without the default `model` feature only the burn-free modules are built (letterbox, warp,
//! normalize, input): percept-data uses them that way.

#[cfg(feature = "model")]
pub mod card;
#[cfg(feature = "model")]
pub mod detect;
#[cfg(feature = "model")]
mod error;
#[cfg(feature = "model")]
pub mod image_space;
pub mod input;
pub mod letterbox;
pub mod normalize;
pub mod warp;
#[cfg(feature = "model")]
pub mod weights;

#[cfg(feature = "model")]
pub use card::{
    card_from_bytes, card_from_json, read_card, read_file, Card, DeployCard, MODEL_CARD_KEY,
    MODEL_FORMAT,
};
#[cfg(feature = "model")]
pub use detect::{detect_with, Detection, Detections, Detector};
#[cfg(feature = "model")]
pub use error::InferError;
pub use input::{InputSize, Normalization, MAX_IMAGE_PIXELS, NORM_MEAN, NORM_STD};
pub use letterbox::{Corners, Letterbox, PAD_VALUE};
pub use normalize::{image_to_chw, letterbox_image, norm_lut, prepare, write_chw};
#[cfg(feature = "model")]
pub use weights::{check_weights, load_net, CheckedWeights};
