//! The network as an inference dataflow graph, batch norm folded into the convolutions: what an
//! exporter writes (`percept-onnx` writes it as ONNX).
//!
//! Each module builds its part of the graph in a `trace` method beside its `forward`, in the
//! same order as `forward` runs its convolutions: the `n`-th [`FoldedConv`] of the graph is the
//! `n`-th convolution a forward pass applies, which is how [`crate::calibration`] ties measured
//! activation ranges to the graph's convolutions.
//!
//! Shapes here leave out the batch: `[channels, height, width]` for feature maps,
//! `[anchors, values]` for detection outputs.

use burn::nn::conv::Conv2d;
use burn::prelude::*;

use crate::batch_norm::BatchNorm2d;

/// A value of the graph: 0 is the input image, every node makes one more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ValueId(pub usize);

/// A convolution with batch norm folded in: `y = conv(x, weight) + bias`, then ReLU when
/// `relu`.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldedConv {
    /// `[out, in, kernel, kernel]`, row-major.
    pub weight: Vec<f32>,
    /// `[out, in, kernel, kernel]`.
    pub shape: [usize; 4],
    /// `[out]`.
    pub bias: Vec<f32>,
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    pub relu: bool,
    /// Position among the convolutions a forward pass applies (see the module docs).
    pub index: usize,
}

/// An operation of the graph. Axes count the batch: a feature map is `[batch, c, h, w]`.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Conv(FoldedConv),
    /// Element-wise sum of two values of one shape.
    Add,
    /// Concatenation along `axis`.
    Concat {
        axis: usize,
    },
    /// Channels `start..end` of a feature map.
    SliceChannels {
        start: usize,
        end: usize,
    },
    /// Max pooling, stride 1, `-inf` padding that keeps the size.
    MaxPool {
        kernel: usize,
        padding: usize,
    },
    /// Nearest-neighbour 2x up-sampling.
    UpsampleNearest2,
    /// Bilinear 2x up-sampling, half-pixel centres, edges clamped (PyTorch's
    /// `align_corners=False`).
    UpsampleBilinear2,
    /// `[batch, c, h, w]` -> `[batch, h * w, c]`: one row per anchor point, row-major.
    AnchorRows,
    /// Box-edge distributions to distances in pixels: `[batch, n, 4 * bins]` ->
    /// `[batch, n, 4]`, the softmax-weighted mean of bins `0..bins` times `stride`.
    EdgeDistances {
        bins: usize,
        stride: usize,
    },
}

/// One node: `op` applied to `inputs`, giving `output` of `shape` (batch left out).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The module path it comes from, e.g. `backbone.stages.0.csp.merge`.
    pub name: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
    pub shape: Vec<usize>,
}

/// The network's outputs, as [`crate::PerceptionOutput`] has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// `[batch, anchors, classes]` logits.
    ClassLogits,
    /// `[batch, anchors, 4 * REG_BINS]` box-edge logits.
    BoxLogits,
    /// `[batch, anchors, 4]` edge distances in input pixels.
    Distances,
    /// `[batch, 1, height, width]` drivable-area logits.
    Drivable,
    /// `[batch, 1, height, width]` lane-line logits.
    Lanes,
}

impl OutputKind {
    /// The output's name in exported graphs.
    pub fn name(self) -> &'static str {
        match self {
            OutputKind::ClassLogits => "class_logits",
            OutputKind::BoxLogits => "box_logits",
            OutputKind::Distances => "distances",
            OutputKind::Drivable => "drivable",
            OutputKind::Lanes => "lanes",
        }
    }
}

/// The whole network for one input size.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceGraph {
    /// Input `[batch, 3, height, width]`, normalised as the model card says.
    pub height: usize,
    pub width: usize,
    pub nodes: Vec<Node>,
    /// In [`OutputKind`] order, the tasks switched off left out.
    pub outputs: Vec<(OutputKind, ValueId)>,
}

impl InferenceGraph {
    /// The input image.
    pub const INPUT: ValueId = ValueId(0);

    /// The per-image shape of `value`.
    pub fn shape(&self, value: ValueId) -> Vec<usize> {
        if value == Self::INPUT {
            vec![3, self.height, self.width]
        } else {
            self.nodes[value.0 - 1].shape.clone()
        }
    }

    /// The convolutions, in forward order.
    pub fn convs(&self) -> impl Iterator<Item = (&Node, &FoldedConv)> {
        self.nodes.iter().filter_map(|n| match &n.op {
            Op::Conv(c) => Some((n, c)),
            _ => None,
        })
    }
}

/// Builds an [`InferenceGraph`]: each `push` checks its inputs' shapes and works out the
/// output's.
pub(crate) struct GraphBuilder {
    input_shape: Vec<usize>,
    nodes: Vec<Node>,
    convs: usize,
}

impl GraphBuilder {
    pub(crate) fn new(height: usize, width: usize) -> Self {
        GraphBuilder {
            input_shape: vec![3, height, width],
            nodes: Vec::new(),
            convs: 0,
        }
    }

    pub(crate) fn shape(&self, value: ValueId) -> &[usize] {
        if value == InferenceGraph::INPUT {
            &self.input_shape
        } else {
            &self.nodes[value.0 - 1].shape
        }
    }

    pub(crate) fn push(&mut self, name: &str, op: Op, inputs: &[ValueId]) -> ValueId {
        let first = self.shape(inputs[0]).to_vec();
        let shape = match &op {
            Op::Conv(c) => {
                let [out, cin, k, _] = c.shape;
                assert_eq!(first[0], cin, "{name}: input channels");
                let side = |s: usize| (s + 2 * c.padding - k) / c.stride + 1;
                vec![out, side(first[1]), side(first[2])]
            }
            Op::Add => {
                assert_eq!(first, self.shape(inputs[1]), "{name}: added shapes");
                first
            }
            Op::Concat { axis } => {
                let mut shape = first;
                for v in &inputs[1..] {
                    shape[axis - 1] += self.shape(*v)[axis - 1];
                }
                shape
            }
            Op::SliceChannels { start, end } => {
                assert!(start < end && *end <= first[0], "{name}: channel slice");
                vec![end - start, first[1], first[2]]
            }
            Op::MaxPool { .. } => first,
            Op::UpsampleNearest2 | Op::UpsampleBilinear2 => {
                vec![first[0], 2 * first[1], 2 * first[2]]
            }
            Op::AnchorRows => vec![first[1] * first[2], first[0]],
            Op::EdgeDistances { bins, .. } => {
                assert_eq!(first[1], 4 * bins, "{name}: edge bins");
                vec![first[0], 4]
            }
        };
        let op = match op {
            Op::Conv(mut c) => {
                c.index = self.convs;
                self.convs += 1;
                Op::Conv(c)
            }
            op => op,
        };
        let output = ValueId(self.nodes.len() + 1);
        self.nodes.push(Node {
            name: name.to_string(),
            op,
            inputs: inputs.to_vec(),
            output,
            shape,
        });
        output
    }

    pub(crate) fn finish(
        self,
        outputs: Vec<(OutputKind, ValueId)>,
        height: usize,
        width: usize,
    ) -> InferenceGraph {
        InferenceGraph {
            height,
            width,
            nodes: self.nodes,
            outputs,
        }
    }
}

/// `[n, c, kh, kw]` values of a weight tensor on the host.
fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 weights")
}

/// A convolution of burn's with no norm after it (the heads' output layers).
pub(crate) fn plain_conv<B: Backend>(
    g: &mut GraphBuilder,
    name: &str,
    conv: &Conv2d<B>,
    x: ValueId,
) -> ValueId {
    let weight = conv.weight.val();
    let [o, i, kh, kw] = weight.dims();
    assert_eq!(kh, kw, "{name}: square kernels only");
    let bias = match &conv.bias {
        Some(b) => host(b.val()),
        None => vec![0.0; o],
    };
    let folded = FoldedConv {
        weight: host(weight),
        shape: [o, i, kh, kw],
        bias,
        stride: conv.stride[0],
        padding: explicit_padding(conv, name),
        relu: false,
        index: 0,
    };
    g.push(name, Op::Conv(folded), &[x])
}

fn explicit_padding<B: Backend>(conv: &Conv2d<B>, name: &str) -> usize {
    use burn::nn::PaddingConfig2d;
    match conv.padding {
        PaddingConfig2d::Valid => 0,
        PaddingConfig2d::Explicit(t, l, b, r) if t == l && l == b && b == r => t,
        ref other => panic!("{name}: padding {other:?} is not exported"),
    }
}

/// Conv (no bias) -> batch norm (running statistics) -> ReLU, folded into one convolution:
/// `w' = w * s`, `b' = beta - mean * s` with `s = gamma / sqrt(var + eps)` per output channel.
pub(crate) fn folded_conv<B: Backend>(
    g: &mut GraphBuilder,
    name: &str,
    conv: &Conv2d<B>,
    norm: &BatchNorm2d<B>,
    x: ValueId,
) -> ValueId {
    let weight = conv.weight.val();
    let [o, i, kh, kw] = weight.dims();
    let (scale, shift) = norm.affine();
    let (scale, shift) = (host(scale), host(shift));
    let mut w = host(weight);
    let per_out = i * kh * kw;
    for (oc, s) in scale.iter().enumerate() {
        for v in &mut w[oc * per_out..(oc + 1) * per_out] {
            *v *= s;
        }
    }
    let mut bias = shift;
    if let Some(b) = &conv.bias {
        for ((bias, b), s) in bias.iter_mut().zip(host(b.val())).zip(&scale) {
            *bias += b * s;
        }
    }
    let folded = FoldedConv {
        weight: w,
        shape: [o, i, kh, kw],
        bias,
        stride: conv.stride[0],
        padding: explicit_padding(conv, name),
        relu: true,
        index: 0,
    };
    g.push(name, Op::Conv(folded), &[x])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibration::Calibrator;
    use crate::conv_block::ConvBlockConfig;
    use crate::{ModelSize, PerceptionNetConfig};
    use burn::backend::Flex;
    use burn::module::RunningState;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Distribution, Tolerance};

    #[test]
    fn a_folded_conv_computes_conv_then_norm_then_relu() {
        let d = Default::default();
        let mut block = ConvBlockConfig::new([3, 4]).with_stride(2).init::<Flex>(&d);
        // Running statistics and affine parameters far from the identity.
        let v = |vals: [f32; 4]| Tensor::<Flex, 1>::from_floats(vals, &d);
        block.norm.running_mean = RunningState::new(v([0.5, -1.0, 2.0, 0.0]));
        block.norm.running_var = RunningState::new(v([4.0, 0.25, 1.0, 9.0]));
        block.norm.gamma = burn::module::Param::from_tensor(v([1.5, -0.5, 1.0, 2.0]));
        block.norm.beta = burn::module::Param::from_tensor(v([0.1, 0.2, -0.3, 0.0]));
        let x = Tensor::<Flex, 4>::random([2, 3, 8, 6], Distribution::Normal(0.0, 1.0), &d);
        let want = block.forward(x.clone());

        let mut g = GraphBuilder::new(8, 6);
        let y = block.trace(&mut g, "block", InferenceGraph::INPUT);
        let graph = g.finish(vec![], 8, 6);
        assert_eq!(graph.shape(y), vec![4, 4, 3]);
        let (_, c) = graph.convs().next().unwrap();
        assert!(c.relu);
        assert_eq!((c.stride, c.padding, c.shape), (2, 1, [4, 3, 3, 3]));
        let w = Tensor::<Flex, 1>::from_floats(c.weight.as_slice(), &d).reshape(c.shape);
        let b = Tensor::<Flex, 1>::from_floats(c.bias.as_slice(), &d);
        let got = burn::tensor::activation::relu(conv2d(
            x,
            w,
            Some(b),
            ConvOptions::new([2, 2], [1, 1], [1, 1], 1),
        ));
        got.to_data()
            .assert_approx_eq::<f32>(&want.to_data(), Tolerance::absolute(1e-5));
    }

    #[test]
    fn the_graph_has_every_convolution_in_forward_order_and_the_outputs_shapes() {
        let d = Default::default();
        let config = PerceptionNetConfig::new(ModelSize::Nano, 3);
        let net = config.init_seeded::<Flex>(5, &d);
        let graph = net.inference_graph(64, 96).unwrap();
        let x = Tensor::<Flex, 4>::random([1, 3, 64, 96], Distribution::Normal(0.0, 1.0), &d);
        let mut calibrator = Calibrator::new();
        calibrator.observe(&net, x.clone()).unwrap();
        let ranges = calibrator.ranges(crate::RangeMethod::Max).ranges;
        // One recorded input per convolution of the graph, and each input's channels are the
        // convolution's: the orders agree.
        let convs: Vec<_> = graph.convs().collect();
        assert_eq!(ranges.len(), convs.len());
        assert_eq!(convs.len(), 71);
        for (i, (_, c)) in convs.iter().enumerate() {
            assert_eq!(c.index, i);
        }
        assert_eq!(convs[0].0.name, "backbone.stem");
        assert_eq!(convs.last().unwrap().0.name, "lane_head.out");
        // The first input is the image itself.
        let image_max = x.clone().abs().max().into_scalar();
        assert_eq!(ranges[0], image_max);
        let out = net.forward(x);
        let anchors = 8 * 12 + 4 * 6 + 2 * 3;
        let shape = |kind| {
            let (_, v) = graph.outputs.iter().find(|(k, _)| *k == kind).unwrap();
            graph.shape(*v)
        };
        let det = out.detection.unwrap();
        assert_eq!(
            det.class_logits.dims()[1..],
            shape(OutputKind::ClassLogits)[..]
        );
        assert_eq!(shape(OutputKind::ClassLogits), vec![anchors, 3]);
        assert_eq!(shape(OutputKind::BoxLogits), vec![anchors, 64]);
        assert_eq!(shape(OutputKind::Distances), vec![anchors, 4]);
        assert_eq!(shape(OutputKind::Drivable), vec![1, 64, 96]);
        assert_eq!(shape(OutputKind::Lanes), vec![1, 64, 96]);
    }

    #[test]
    fn switched_off_tasks_leave_their_outputs_out() {
        let d = Default::default();
        let mut config = PerceptionNetConfig::new(ModelSize::Nano, 2);
        config.tasks.detection = false;
        config.tasks.lanes = false;
        let graph = config.init::<Flex>(&d).inference_graph(64, 64).unwrap();
        let kinds: Vec<_> = graph.outputs.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, vec![OutputKind::Drivable]);
        assert!(graph
            .nodes
            .iter()
            .all(|n| !n.name.starts_with("detection_head")));
        let e = config
            .init::<Flex>(&d)
            .inference_graph(60, 64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("multiples of 32"), "{e}");
    }
}
