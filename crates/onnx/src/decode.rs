//! The graph's declared input and outputs, and the decoding in the graph: boxes and scores
//! (as `percept_model::decode_detections` computes them before NMS) and ONNX
//! `NonMaxSuppression`.

use percept_model::{anchor_points, InferenceGraph, OutputKind};

use crate::builder::{Attr, Builder, Dim, Elem};
use crate::network::{RawOutputs, INPUT};
use crate::{Decode, OnnxOptions};

const BATCH: Dim = Dim::Named("batch");

fn dims(shape: &[usize]) -> Vec<Dim> {
    std::iter::once(BATCH)
        .chain(shape.iter().map(|&d| Dim::Fixed(d)))
        .collect()
}

fn describe(kind: OutputKind) -> &'static str {
    match kind {
        OutputKind::ClassLogits => "[batch, anchors, classes] class logits (sigmoid gives scores)",
        OutputKind::BoxLogits => {
            "[batch, anchors, 64] logits of the box-edge distance distributions (left, top, \
             right, bottom; 16 bins each, in strides)"
        }
        OutputKind::Distances => {
            "[batch, anchors, 4] distances from the anchor point to the left, top, right and \
             bottom box edges, input pixels"
        }
        OutputKind::Drivable => "[batch, 1, height, width] drivable-area logits (> 0: drivable)",
        OutputKind::Lanes => "[batch, 1, height, width] lane-line logits (> 0: lane line)",
    }
}

pub fn write_outputs(
    b: &mut Builder,
    graph: &InferenceGraph,
    raw: &RawOutputs,
    options: &OnnxOptions,
) {
    b.input(INPUT, Elem::F32, &dims(&[3, graph.height, graph.width]));
    for (kind, name, shape) in &raw.outputs {
        b.output(name, Elem::F32, &dims(shape), describe(*kind));
    }
    let (Some(logits), Some(distances)) = (
        raw.get(OutputKind::ClassLogits),
        raw.get(OutputKind::Distances),
    ) else {
        return;
    };
    if options.decode == Decode::Raw {
        return;
    }
    let (h, w) = (graph.height, graph.width);
    let anchors = anchor_points(h, w);
    let n = anchors.len();
    let classes = graph.shape(
        graph
            .outputs
            .iter()
            .find(|(k, _)| *k == OutputKind::ClassLogits)
            .expect("detection on")
            .1,
    )[1];

    // boxes = centre + distance * (-1, -1, 1, 1), clipped to the input.
    let centres: Vec<f32> = anchors.iter().flat_map(|a| [a.x, a.y, a.x, a.y]).collect();
    let centres = b.floats("decode.anchor_centres", Elem::F32, &[n, 4], &centres);
    let signs = b.floats(
        "decode.edge_signs",
        Elem::F32,
        &[4],
        &[-1.0, -1.0, 1.0, 1.0],
    );
    let offsets = b.op("Mul", "decode.offsets", &[distances, &signs], vec![]);
    let corners = b.op("Add", "decode.corners", &[&centres, &offsets], vec![]);
    let zero = b.floats("decode.zero", Elem::F32, &[], &[0.0]);
    let limits = [w, h, w, h].map(|v| v as f32);
    let limits = b.floats("decode.limits", Elem::F32, &[4], &limits);
    let floor = b.op("Max", "decode.clip_low", &[&corners, &zero], vec![]);
    b.op_into("Min", "decode.boxes", &[&floor, &limits], "boxes", vec![]);
    b.output(
        "boxes",
        Elem::F32,
        &dims(&[n, 4]),
        "[batch, anchors, 4] boxes x1, y1, x2, y2 in input pixels, clipped to the input",
    );
    b.op_into("Sigmoid", "decode.scores", &[logits], "scores", vec![]);
    b.output(
        "scores",
        Elem::F32,
        &dims(&[n, classes]),
        "[batch, anchors, classes] class scores",
    );
    if options.decode != Decode::Nms {
        return;
    }

    let d = &options.decode_options;
    let per_class = b.op(
        "Transpose",
        "nms.scores",
        &["scores"],
        vec![("perm", Attr::Ints(vec![0, 2, 1]))],
    );
    let max_out = b.int64s(
        "nms.max_output_boxes_per_class",
        &[1],
        &[d.max_detections as i64],
    );
    let iou = b.floats("nms.iou_threshold", Elem::F32, &[1], &[d.iou_threshold]);
    let score = b.floats("nms.score_threshold", Elem::F32, &[1], &[d.score_threshold]);
    // [k, 3]: batch index, class, anchor.
    let selected = b.op(
        "NonMaxSuppression",
        "nms",
        &["boxes", &per_class, &max_out, &iou, &score],
        vec![("center_point_box", Attr::Int(0))],
    );
    let column = |b: &mut Builder, name: &str, i: i64| {
        let starts = b.int64s(&format!("nms.{name}.start"), &[1], &[i]);
        let ends = b.int64s(&format!("nms.{name}.end"), &[1], &[i + 1]);
        let axes = b.int64s(&format!("nms.{name}.axis"), &[1], &[1]);
        b.op(
            "Slice",
            &format!("nms.{name}"),
            &[&selected, &starts, &ends, &axes],
            vec![],
        )
    };
    let image = column(b, "image", 0);
    let class = column(b, "class", 1);
    let anchor = column(b, "anchor", 2);
    let kept_scores = b.op(
        "GatherND",
        "nms.kept_scores",
        &[&per_class, &selected],
        vec![],
    );
    let axis1 = b.int64s("nms.axis1", &[1], &[1]);
    let kept_scores = b.op(
        "Unsqueeze",
        "nms.kept_scores",
        &[&kept_scores, &axis1],
        vec![],
    );
    let box_index = b.op(
        "Concat",
        "nms.box_index",
        &[&image, &anchor],
        vec![("axis", Attr::Int(1))],
    );
    let kept_boxes = b.op("GatherND", "nms.kept_boxes", &["boxes", &box_index], vec![]);
    let float = |b: &mut Builder, name: &str, x: &str| {
        b.op(
            "Cast",
            &format!("nms.{name}_f"),
            &[x],
            vec![("to", Attr::Int(1))],
        )
    };
    let image = float(b, "image", &image);
    let class = float(b, "class", &class);
    b.op_into(
        "Concat",
        "nms.detections",
        &[&image, &class, &kept_scores, &kept_boxes],
        "detections",
        vec![("axis", Attr::Int(1))],
    );
    b.output(
        "detections",
        Elem::F32,
        &[Dim::Named("detections"), Dim::Fixed(7)],
        "[n, 7] kept detections: batch_index, class, score, x1, y1, x2, y2 (input pixels)",
    );
}
