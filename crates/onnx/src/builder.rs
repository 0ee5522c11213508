//! A small layer over the generated protobuf messages: nodes with unique names, typed
//! attributes and initializers, value infos, and the model around the graph.

use crate::proto::onnx::attribute_proto::AttributeType;
use crate::proto::onnx::tensor_proto::DataType;
use crate::proto::onnx::tensor_shape_proto::Dimension;
use crate::proto::onnx::type_proto::Tensor as TensorType;
use crate::proto::onnx::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// Element types used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
    I8,
    I64,
}

impl Elem {
    fn data_type(self) -> DataType {
        match self {
            Elem::F32 => DataType::FLOAT,
            Elem::F16 => DataType::FLOAT16,
            Elem::I8 => DataType::INT8,
            Elem::I64 => DataType::INT64,
        }
    }
}

/// One dimension of a declared input or output.
#[derive(Debug, Clone)]
pub enum Dim {
    Fixed(usize),
    Named(&'static str),
}

/// An attribute value.
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Str(&'static str),
}

pub struct Builder {
    pub opset: i64,
    graph: GraphProto,
    names: std::collections::HashMap<String, usize>,
}

impl Builder {
    pub fn new(opset: i64) -> Self {
        Builder {
            opset,
            graph: GraphProto::new(),
            names: Default::default(),
        }
    }

    /// A name not used before, from `base`.
    pub fn fresh(&mut self, base: &str) -> String {
        let n = self.names.entry(base.to_string()).or_insert(0);
        *n += 1;
        if *n == 1 {
            base.to_string()
        } else {
            format!("{base}_{}", *n - 1)
        }
    }

    /// Adds a node of `op` named after `name`, with one output (named after `name` too), and
    /// returns the output's name.
    pub fn op(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
    ) -> String {
        let output = self.fresh(name);
        self.op_into(op, name, inputs, &output, attrs);
        output
    }

    /// [`op`](Self::op) with its output named `output`.
    pub fn op_into(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        output: &str,
        attrs: Vec<(&str, Attr)>,
    ) {
        let mut node = NodeProto::new();
        node.set_op_type(op.to_string());
        node.set_name(self.fresh(&format!("{name}/{op}")));
        node.input = inputs.iter().map(|s| s.to_string()).collect();
        node.output = vec![output.to_string()];
        for (key, value) in attrs {
            let mut a = AttributeProto::new();
            a.set_name(key.to_string());
            match value {
                Attr::Int(i) => {
                    a.set_type(AttributeType::INT);
                    a.set_i(i);
                }
                Attr::Ints(v) => {
                    a.set_type(AttributeType::INTS);
                    a.ints = v;
                }
                Attr::Str(s) => {
                    a.set_type(AttributeType::STRING);
                    a.set_s(s.as_bytes().to_vec());
                }
            }
            node.attribute.push(a);
        }
        self.graph.node.push(node);
    }

    fn initializer(&mut self, name: &str, elem: Elem, dims: &[usize], raw: Vec<u8>) -> String {
        let name = self.fresh(name);
        let mut t = TensorProto::new();
        t.set_name(name.clone());
        t.set_data_type(elem.data_type() as i32);
        t.dims = dims.iter().map(|&d| d as i64).collect();
        t.set_raw_data(raw);
        self.graph.initializer.push(t);
        name
    }

    /// A float constant in `elem` (F32 or F16).
    pub fn floats(&mut self, name: &str, elem: Elem, dims: &[usize], values: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), values.len(), "{name}");
        let raw = match elem {
            Elem::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Elem::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            other => unreachable!("floats as {other:?}"),
        };
        self.initializer(name, elem, dims, raw)
    }

    pub fn int64s(&mut self, name: &str, dims: &[usize], values: &[i64]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, Elem::I64, dims, raw)
    }

    pub fn int8s(&mut self, name: &str, dims: &[usize], values: &[i8]) -> String {
        let raw = values.iter().map(|v| *v as u8).collect();
        self.initializer(name, Elem::I8, dims, raw)
    }

    fn value_info(name: &str, elem: Elem, dims: &[Dim]) -> ValueInfoProto {
        let mut shape = TensorShapeProto::new();
        for d in dims {
            let mut dim = Dimension::new();
            match d {
                Dim::Fixed(n) => dim.set_dim_value(*n as i64),
                Dim::Named(p) => dim.set_dim_param(p.to_string()),
            }
            shape.dim.push(dim);
        }
        let mut tensor = TensorType::new();
        tensor.set_elem_type(elem.data_type() as i32);
        tensor.shape = protobuf::MessageField::some(shape);
        let mut ty = TypeProto::new();
        ty.set_tensor_type(tensor);
        let mut info = ValueInfoProto::new();
        info.set_name(name.to_string());
        info.type_ = protobuf::MessageField::some(ty);
        info
    }

    pub fn input(&mut self, name: &str, elem: Elem, dims: &[Dim]) {
        self.names.insert(name.to_string(), 1);
        self.graph.input.push(Self::value_info(name, elem, dims));
    }

    pub fn output(&mut self, name: &str, elem: Elem, dims: &[Dim], doc: &str) {
        let mut info = Self::value_info(name, elem, dims);
        info.set_doc_string(doc.to_string());
        self.graph.output.push(info);
    }

    pub fn finish(mut self, name: &str, metadata: &[(String, String)]) -> ModelProto {
        self.graph.set_name(name.to_string());
        let mut model = ModelProto::new();
        // The IR version each opset was released with: the oldest runtime that knows the opset
        // also reads the file.
        let ir = match self.opset {
            ..=14 => 7,
            15..=18 => 8,
            19..=20 => 9,
            _ => 10,
        };
        model.set_ir_version(ir);
        let mut opset = OperatorSetIdProto::new();
        opset.set_domain(String::new());
        opset.set_version(self.opset);
        model.opset_import.push(opset);
        model.set_producer_name("percept".into());
        model.set_producer_version(env!("CARGO_PKG_VERSION").into());
        model.graph = protobuf::MessageField::some(self.graph);
        for (k, v) in metadata {
            let mut e = StringStringEntryProto::new();
            e.set_key(k.clone());
            e.set_value(v.clone());
            model.metadata_props.push(e);
        }
        model
    }
}
