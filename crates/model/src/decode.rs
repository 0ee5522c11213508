//! From raw detection outputs to scored boxes: score threshold, top-k, class-aware NMS
//! (burn-vision's), max detections per image.

use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use burn::vision::{Nms, NmsOptions, VisionBackend};
use serde::{Deserialize, Serialize};

use crate::detection_head::DetectionOutput;
use crate::loss::distances_to_boxes;

/// Post-processing settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeOptions {
    /// Minimum class score (sigmoid) of a kept detection.
    pub score_threshold: f32,
    /// NMS IoU threshold: a box overlapping a better one of its class by more is dropped.
    pub iou_threshold: f32,
    /// Candidates per image entering NMS, best first.
    pub pre_nms_top_k: usize,
    /// Detections per image after NMS.
    pub max_detections: usize,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            score_threshold: 0.25,
            iou_threshold: 0.6,
            pre_nms_top_k: 1000,
            max_detections: 100,
        }
    }
}

/// A detection in network-input pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoredBox {
    pub class: usize,
    pub score: f32,
    pub bbox: [f32; 4],
}

/// Decodes a batch: one list per image, best score first.
pub fn decode_detections<B: VisionBackend>(
    output: &DetectionOutput<B>,
    height: usize,
    width: usize,
    options: &DecodeOptions,
) -> Vec<Vec<ScoredBox>> {
    let [batch, anchors, classes] = output.class_logits.dims();
    let device = output.class_logits.device();
    let scores: Vec<f32> = sigmoid(output.class_logits.clone())
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 data");
    let boxes: Vec<f32> = distances_to_boxes(output.distances.clone(), height, width)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 data");
    // Offsetting each class by more than the image size makes plain NMS class-aware.
    let class_offset = (height + width) as f32 * 2.0;
    (0..batch)
        .map(|b| {
            let mut candidates: Vec<ScoredBox> = Vec::new();
            for a in 0..anchors {
                let row = &scores[(b * anchors + a) * classes..(b * anchors + a + 1) * classes];
                for (class, &score) in row.iter().enumerate() {
                    if score >= options.score_threshold {
                        let i = (b * anchors + a) * 4;
                        let mut bbox = [boxes[i], boxes[i + 1], boxes[i + 2], boxes[i + 3]];
                        bbox[0] = bbox[0].clamp(0.0, width as f32);
                        bbox[2] = bbox[2].clamp(0.0, width as f32);
                        bbox[1] = bbox[1].clamp(0.0, height as f32);
                        bbox[3] = bbox[3].clamp(0.0, height as f32);
                        candidates.push(ScoredBox { class, score, bbox });
                    }
                }
            }
            candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
            candidates.truncate(options.pre_nms_top_k);
            if candidates.is_empty() {
                return candidates;
            }
            let flat: Vec<f32> = candidates
                .iter()
                .flat_map(|c| {
                    let o = c.class as f32 * class_offset;
                    [c.bbox[0] + o, c.bbox[1] + o, c.bbox[2] + o, c.bbox[3] + o]
                })
                .collect();
            let score_list: Vec<f32> = candidates.iter().map(|c| c.score).collect();
            let n = candidates.len();
            let keep = Tensor::<B, 1>::from_floats(flat.as_slice(), &device)
                .reshape([n, 4])
                .nms(
                    Tensor::<B, 1>::from_floats(score_list.as_slice(), &device),
                    NmsOptions {
                        iou_threshold: options.iou_threshold,
                        score_threshold: 0.0,
                        max_output_boxes: options.max_detections,
                    },
                );
            let keep: Vec<i64> = keep
                .into_data()
                .convert::<i64>()
                .to_vec()
                .expect("int data");
            let mut kept: Vec<ScoredBox> = keep.iter().map(|&i| candidates[i as usize]).collect();
            kept.sort_by(|a, b| b.score.total_cmp(&a.score));
            kept.truncate(options.max_detections);
            kept
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn decode_applies_threshold_and_class_aware_nms() {
        let d = Default::default();
        // 32x32 input: 21 anchors, 2 classes. Anchors 0 and 1 (centres (4,4), (12,4)) predict
        // heavily overlapping class-0 boxes; anchor 2 predicts the same box as anchor 1 but as
        // class 1; everything else scores ~0.
        let mut logits = vec![-10.0f32; 21 * 2];
        logits[0] = 3.0; // anchor 0, class 0: 0.953
        logits[2] = 2.0; // anchor 1, class 0: 0.881
        logits[5] = 1.0; // anchor 2, class 1: 0.731
        let mut dist = vec![1.0f32; 21 * 4];
        // anchor 0: box (0,0)-(12,8); anchor 1: box (1,0)-(13,8); anchor 2 (x=20): (1,0)-(13,8).
        dist[0..4].copy_from_slice(&[4.0, 4.0, 8.0, 4.0]);
        dist[4..8].copy_from_slice(&[11.0, 4.0, 1.0, 4.0]);
        dist[8..12].copy_from_slice(&[19.0, 4.0, -7.0, 4.0]);
        let out = DetectionOutput::<Flex> {
            class_logits: Tensor::<Flex, 1>::from_floats(logits.as_slice(), &d).reshape([1, 21, 2]),
            // Decoding reads the distances only.
            box_logits: Tensor::zeros([1, 21, 4 * crate::REG_BINS], &d),
            distances: Tensor::<Flex, 1>::from_floats(dist.as_slice(), &d).reshape([1, 21, 4]),
        };
        let dets = decode_detections(&out, 32, 32, &DecodeOptions::default());
        assert_eq!(dets.len(), 1);
        let d = &dets[0];
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d[0].class, 0);
        assert!((d[0].score - 0.9526).abs() < 1e-3);
        assert_eq!(d[0].bbox, [0.0, 0.0, 12.0, 8.0]);
        assert_eq!(d[1].class, 1);
        assert_eq!(d[1].bbox, [1.0, 0.0, 13.0, 8.0]);
    }
}
