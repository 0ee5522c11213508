//! A batch of `percept-data` as the network's tensors: the normalised images
//! `[batch, 3, height, width]`, the segmentation targets and the detection targets. Training
//! (the loss) and evaluation (inference) read batches through the same conversion.

use burn::prelude::*;
use percept_data::{Batch, LabelledTasks};
use percept_model::{ImageTargets, SegmentationTargets, TargetBox};

/// Converts a batch's labels into detection targets of the model crate.
pub fn detection_targets(batch: &Batch) -> Vec<ImageTargets> {
    (0..batch.batch_size)
        .map(|i| ImageTargets {
            boxes: batch.boxes[i]
                .iter()
                .map(|b| TargetBox {
                    class: b.class as usize,
                    bbox: [b.x1, b.y1, b.x2, b.y2],
                })
                .collect(),
            ignore: batch.ignore[i]
                .iter()
                .map(|r| [r.x1, r.y1, r.x2, r.y2])
                .collect(),
            labelled: batch.tasks[i].detection,
        })
        .collect()
}

/// Input and segmentation target tensors of a batch.
pub fn batch_tensors<B: Backend>(
    batch: &Batch,
    device: &B::Device,
) -> (Tensor<B, 4>, SegmentationTargets<B>) {
    let [b, h, w] = [batch.batch_size, batch.height, batch.width];
    let images = Tensor::<B, 1>::from_floats(batch.images.as_slice(), device).reshape([b, 3, h, w]);
    let mask = |v: &[f32]| Tensor::<B, 1>::from_floats(v, device).reshape([b, h, w]);
    let labelled = |task: fn(&LabelledTasks) -> bool| {
        let v: Vec<f32> = batch.tasks.iter().map(|t| task(t) as u8 as f32).collect();
        Tensor::<B, 1>::from_floats(v.as_slice(), device)
    };
    let targets = SegmentationTargets {
        drivable: mask(&batch.drivable),
        lanes: mask(&batch.lanes),
        drivable_labelled: labelled(|t| t.drivable),
        lanes_labelled: labelled(|t| t.lanes),
    };
    (images, targets)
}
