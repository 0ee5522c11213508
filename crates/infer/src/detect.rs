//! One frame through the network: letterbox and normalise ([`prepare`]), forward, decode, and
//! boxes and masks mapped back to the frame's pixels. [`Detector`] does it on the CPU from a
//! model file; [`detect_with`] is the same path for any backend and a network already loaded
//! (percept-eval's `percept predict` runs it).

use std::path::Path;

use burn::backend::flex::FlexDevice;
use burn::backend::Flex;
use burn::prelude::*;
use burn::vision::VisionBackend;
use image::{GrayImage, RgbImage};
use percept_model::{decode_detections, PerceptionModel, PerceptionNet, PerceptionOutput};
use serde::Serialize;

use crate::card::{Card, DeployCard};
use crate::image_space::{box_to_image, mask_to_image, masks, network_mask};
use crate::letterbox::Letterbox;
use crate::normalize::prepare;
use crate::weights::load_net;
use crate::InferError;

/// A detection in the frame's pixels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// Class index into the model card's classes.
    pub class: usize,
    pub class_name: String,
    /// Class score (sigmoid), in `[score_threshold, 1]` of the card's decode options.
    pub score: f32,
    /// `[x1, y1, x2, y2]` in image pixels, clipped to the image.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
}

/// Everything the network finds in one frame, in the frame's pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Detections {
    /// Best score first, at most the card's `max_detections`; empty when the network has no
    /// detection head.
    pub boxes: Vec<Detection>,
    /// Drivable area, the frame's size, 255 drivable and 0 not; `None` without that head.
    pub drivable: Option<GrayImage>,
    /// Lane lines, the frame's size, 255 on a line and 0 off; `None` without that head.
    pub lanes: Option<GrayImage>,
}

/// `[3, height, width]` floats (a [`prepare`]d frame) as the network's `[1, 3, height, width]`
/// input tensor.
pub fn input_tensor<B: Backend>(
    chw: &[f32],
    width: usize,
    height: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    Tensor::<B, 1>::from_floats(chw, device).reshape([1, 3, height, width])
}

/// The network's output for one frame (batch 1) decoded with the card's options and mapped
/// back through `lb` to a `width x height` frame.
pub fn outputs_to_image<B: VisionBackend>(
    out: PerceptionOutput<B>,
    card: &impl Card,
    lb: &Letterbox,
    (width, height): (u32, u32),
) -> Detections {
    let (w, h) = (card.input().width, card.input().height);
    let boxes = out
        .detection
        .as_ref()
        .map(|d| decode_detections(d, h, w, card.decode()).remove(0))
        .unwrap_or_default()
        .into_iter()
        .map(|d| Detection {
            class: d.class,
            class_name: card.classes().get(d.class).cloned().unwrap_or_default(),
            score: d.score,
            bbox: box_to_image(d.bbox, lb, width, height),
        })
        .collect();
    // `masks` gives 0/1; a mask image is 0/255, as a viewer shows it.
    let unletterbox = |logits| {
        let mut mask = mask_to_image(&network_mask(&masks(logits), 0, w, h), lb, width, height);
        mask.iter_mut().for_each(|v| *v *= 255);
        mask
    };
    Detections {
        boxes,
        drivable: out.drivable.map(unletterbox),
        lanes: out.lanes.map(unletterbox),
    }
}

/// Runs `net` (built from `card`, or its export in another runtime) on `image`: letterbox and
/// normalise as the card says, forward at batch 1, decode, map back to the image's pixels.
pub fn detect_with<B: VisionBackend>(
    net: &impl PerceptionModel<B>,
    card: &impl Card,
    image: &RgbImage,
    device: &B::Device,
) -> Detections {
    let (w, h) = (card.input().width, card.input().height);
    let (chw, lb) = prepare(image, w as u32, h as u32, card.normalization());
    let out = net.perceive(input_tensor(&chw, w, h, device));
    outputs_to_image(out, card, &lb, image.dimensions())
}

/// A model file loaded for inference on the CPU (burn-flex, no autodiff: batch norm uses its
/// running statistics).
#[derive(Debug)]
pub struct Detector {
    net: PerceptionNet<Flex>,
    card: DeployCard,
    device: FlexDevice,
}

impl Detector {
    /// Loads a percept model file (a checkpoint or an export): its card, then every weight,
    /// checked ([`crate::check_weights`]). Errors name the file and what would be valid.
    pub fn load(path: impl AsRef<Path>) -> Result<Detector, InferError> {
        let device = Default::default();
        let (net, card) = load_net::<Flex, DeployCard>(path.as_ref(), &device)?;
        Ok(Detector { net, card, device })
    }

    /// The model card's deployment fields: classes, input size, normalisation, decoding.
    pub fn card(&self) -> &DeployCard {
        &self.card
    }

    /// Detections, drivable area and lane lines of `image`, in its pixels.
    pub fn detect(&self, image: &RgbImage) -> Detections {
        detect_with(&self.net, &self.card, image, &self.device)
    }

    /// The network alone on a [`prepare`]d frame (`[3, height, width]` floats of the card's
    /// input size): what [`detect`](Self::detect) runs between letterboxing and decoding, for
    /// timing it apart. burn-flex runs each operation when it is called, so the outputs are
    /// computed when this returns: class logits `[1, anchors, classes]`, edge-distance logits
    /// `[1, anchors, 64]` and edge distances `[1, anchors, 4]` in input pixels (with the
    /// detection head), drivable-area and lane-line logits `[1, 1, height, width]` (with those
    /// heads).
    pub fn forward(&self, chw: &[f32]) -> PerceptionOutput<Flex> {
        let (w, h) = (self.card.input.width, self.card.input.height);
        self.net.forward(input_tensor(chw, w, h, &self.device))
    }
}
