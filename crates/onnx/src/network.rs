//! The network's nodes: one or a few ONNX nodes per [`Op`] of the inference graph, in the
//! precision asked for.

use std::collections::HashMap;

use percept_model::{ActivationRanges, FoldedConv, InferenceGraph, Op, OutputKind, ValueId};

use crate::builder::{Attr, Builder, Elem};
use crate::OnnxPrecision;

/// Name of the graph's input.
pub const INPUT: &str = "images";

/// The raw outputs as float32 values of the graph, with their per-image shapes.
pub struct RawOutputs {
    pub outputs: Vec<(OutputKind, String, Vec<usize>)>,
}

impl RawOutputs {
    pub fn get(&self, kind: OutputKind) -> Option<&str> {
        self.outputs
            .iter()
            .find(|(k, _, _)| *k == kind)
            .map(|(_, name, _)| name.as_str())
    }
}

/// Symmetric int8 quantisation of `w` per output channel: `(values, scales)`.
pub fn quantize_per_channel(w: &[f32], out_channels: usize) -> (Vec<i8>, Vec<f32>) {
    let per = w.len() / out_channels;
    let mut values = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(out_channels);
    for row in w.chunks(per) {
        let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        scales.push(scale);
        values.extend(
            row.iter()
                .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8),
        );
    }
    (values, scales)
}

/// The per-tensor scale of an activation whose calibrated range is `range`.
pub fn activation_scale(range: f32) -> f32 {
    if range > 0.0 && range.is_finite() {
        range / 127.0
    } else {
        // An input that was zero on every calibration frame: any scale represents it.
        1.0
    }
}

/// Writes the input, every node of `graph` and the raw outputs (float32, named after
/// [`OutputKind::name`]).
pub fn write_network(
    b: &mut Builder,
    graph: &InferenceGraph,
    precision: OnnxPrecision,
    ranges: Option<&ActivationRanges>,
) -> RawOutputs {
    let elem = match precision {
        OnnxPrecision::Fp16 => Elem::F16,
        OnnxPrecision::Fp32 | OnnxPrecision::Int8 => Elem::F32,
    };
    let mut names: HashMap<ValueId, String> = HashMap::new();
    let input = match precision {
        OnnxPrecision::Fp16 => b.op("Cast", "images_f16", &[INPUT], vec![("to", Attr::Int(10))]),
        _ => INPUT.to_string(),
    };
    names.insert(InferenceGraph::INPUT, input);
    for node in &graph.nodes {
        let inputs: Vec<&str> = node.inputs.iter().map(|v| names[v].as_str()).collect();
        let name = node.name.as_str();
        let out = match &node.op {
            Op::Conv(c) => {
                let range = ranges.map(|r| r.ranges[c.index]);
                conv(b, name, inputs[0], c, elem, range)
            }
            Op::Add => b.op("Add", name, &inputs, vec![]),
            Op::Concat { axis } => b.op(
                "Concat",
                name,
                &inputs,
                vec![("axis", Attr::Int(*axis as i64))],
            ),
            Op::SliceChannels { start, end } => {
                let starts = b.int64s(&format!("{name}.starts"), &[1], &[*start as i64]);
                let ends = b.int64s(&format!("{name}.ends"), &[1], &[*end as i64]);
                let axes = b.int64s(&format!("{name}.axes"), &[1], &[1]);
                b.op("Slice", name, &[inputs[0], &starts, &ends, &axes], vec![])
            }
            Op::MaxPool { kernel, padding } => {
                let (k, p) = (*kernel as i64, *padding as i64);
                b.op(
                    "MaxPool",
                    name,
                    &inputs,
                    vec![
                        ("kernel_shape", Attr::Ints(vec![k, k])),
                        ("pads", Attr::Ints(vec![p; 4])),
                        ("strides", Attr::Ints(vec![1, 1])),
                    ],
                )
            }
            Op::UpsampleNearest2 => upsample(b, name, inputs[0], false),
            Op::UpsampleBilinear2 => upsample(b, name, inputs[0], true),
            Op::AnchorRows => {
                let s = graph.shape(node.inputs[0]);
                let shape = b.int64s(
                    &format!("{name}.shape"),
                    &[3],
                    &[0, s[0] as i64, (s[1] * s[2]) as i64],
                );
                let flat = b.op(
                    "Reshape",
                    &format!("{name}.flat"),
                    &[inputs[0], &shape],
                    vec![],
                );
                b.op(
                    "Transpose",
                    name,
                    &[&flat],
                    vec![("perm", Attr::Ints(vec![0, 2, 1]))],
                )
            }
            Op::EdgeDistances { bins, stride } => {
                let n = node.shape[0] as i64;
                let split = b.int64s(&format!("{name}.edges"), &[4], &[0, n, 4, *bins as i64]);
                let edges = b.op(
                    "Reshape",
                    &format!("{name}.edges"),
                    &[inputs[0], &split],
                    vec![],
                );
                let p = b.op(
                    "Softmax",
                    &format!("{name}.softmax"),
                    &[&edges],
                    vec![("axis", Attr::Int(3))],
                );
                let values: Vec<f32> = (0..*bins).map(|k| (k * stride) as f32).collect();
                let bin_values = b.floats(&format!("{name}.bins"), elem, &[*bins, 1], &values);
                let mean = b.op(
                    "MatMul",
                    &format!("{name}.mean"),
                    &[&p, &bin_values],
                    vec![],
                );
                let shape = b.int64s(&format!("{name}.shape"), &[3], &[0, n, 4]);
                b.op("Reshape", name, &[&mean, &shape], vec![])
            }
        };
        names.insert(node.output, out);
    }
    let outputs = graph
        .outputs
        .iter()
        .map(|(kind, v)| {
            let out = kind.name();
            match precision {
                OnnxPrecision::Fp16 => {
                    b.op_into("Cast", out, &[&names[v]], out, vec![("to", Attr::Int(1))])
                }
                _ => b.op_into("Identity", out, &[&names[v]], out, vec![]),
            }
            (*kind, out.to_string(), graph.shape(*v))
        })
        .collect();
    RawOutputs { outputs }
}

fn upsample(b: &mut Builder, name: &str, x: &str, bilinear: bool) -> String {
    // Resize's scales are float32 whatever the data's type.
    let scales = b.floats(
        &format!("{name}.scales"),
        Elem::F32,
        &[4],
        &[1.0, 1.0, 2.0, 2.0],
    );
    let attrs = if bilinear {
        // PyTorch's bilinear with align_corners=False (edges clamped), as percept computes it.
        vec![
            ("mode", Attr::Str("linear")),
            ("coordinate_transformation_mode", Attr::Str("half_pixel")),
        ]
    } else {
        vec![
            ("mode", Attr::Str("nearest")),
            ("coordinate_transformation_mode", Attr::Str("asymmetric")),
            ("nearest_mode", Attr::Str("floor")),
        ]
    };
    b.op("Resize", name, &[x, "", &scales], attrs)
}

fn conv(
    b: &mut Builder,
    name: &str,
    x: &str,
    c: &FoldedConv,
    elem: Elem,
    range: Option<f32>,
) -> String {
    let [out, _, k, _] = c.shape;
    let (x, weight) = match range {
        Some(range) => {
            // Input: per-tensor, symmetric (zero point 0: TensorRT's requirement).
            let scale = b.floats(
                &format!("{name}.input_scale"),
                Elem::F32,
                &[],
                &[activation_scale(range)],
            );
            let zero = b.int8s(&format!("{name}.input_zero_point"), &[], &[0]);
            let q = b.op(
                "QuantizeLinear",
                &format!("{name}.input_q"),
                &[x, &scale, &zero],
                vec![],
            );
            let dq = b.op(
                "DequantizeLinear",
                &format!("{name}.input_dq"),
                &[&q, &scale, &zero],
                vec![],
            );
            // Weights: int8, per output channel.
            let (values, scales) = quantize_per_channel(&c.weight, out);
            let wq = b.int8s(&format!("{name}.weight_quantized"), &c.shape, &values);
            let ws = b.floats(&format!("{name}.weight_scale"), Elem::F32, &[out], &scales);
            let wz = b.int8s(&format!("{name}.weight_zero_point"), &[out], &vec![0; out]);
            let w = b.op(
                "DequantizeLinear",
                &format!("{name}.weight"),
                &[&wq, &ws, &wz],
                vec![("axis", Attr::Int(0))],
            );
            (dq, w)
        }
        None => (
            x.to_string(),
            b.floats(&format!("{name}.weight"), elem, &c.shape, &c.weight),
        ),
    };
    let bias = b.floats(&format!("{name}.bias"), elem, &[out], &c.bias);
    let (k, s, p) = (k as i64, c.stride as i64, c.padding as i64);
    let conv_name = if c.relu {
        format!("{name}.conv")
    } else {
        name.to_string()
    };
    let y = b.op(
        "Conv",
        &conv_name,
        &[&x, &weight, &bias],
        vec![
            ("kernel_shape", Attr::Ints(vec![k, k])),
            ("strides", Attr::Ints(vec![s, s])),
            ("pads", Attr::Ints(vec![p; 4])),
            ("dilations", Attr::Ints(vec![1, 1])),
            ("group", Attr::Int(1)),
        ],
    );
    if c.relu {
        b.op("Relu", name, &[&y], vec![])
    } else {
        y
    }
}
