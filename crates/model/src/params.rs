//! A module's float parameters by dotted path (`backbone.stem.conv.weight`), in visiting
//! order: what optimiser groups, model-file loading and the EMA address parameters by.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::prelude::*;

/// A float parameter's module path (`backbone.stem.conv.weight`), id and shape.
#[derive(Debug, Clone)]
pub struct ParamInfo {
    pub path: String,
    pub id: ParamId,
    pub dims: Vec<usize>,
}

struct ParamLister {
    path: Vec<String>,
    params: Vec<ParamInfo>,
    /// Each parameter's value too, when asked for.
    values: Option<Vec<TensorData>>,
}

impl<B: Backend> ModuleVisitor<B> for ParamLister {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.params.push(ParamInfo {
            path: self.path.join("."),
            id: param.id,
            dims: param.shape().dims::<D>().to_vec(),
        });
        if let Some(values) = self.values.as_mut() {
            values.push(param.val().into_data());
        }
    }
}

/// Every float parameter of `module`, in visiting order.
pub fn list_params<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamInfo> {
    let mut lister = ParamLister {
        path: Vec::new(),
        params: Vec::new(),
        values: None,
    };
    module.visit(&mut lister);
    lister.params
}

/// Every float parameter of `module` with its value, in visiting order.
pub fn param_values<B: Backend, M: Module<B>>(module: &M) -> Vec<(ParamInfo, TensorData)> {
    let mut lister = ParamLister {
        path: Vec::new(),
        params: Vec::new(),
        values: Some(Vec::new()),
    };
    module.visit(&mut lister);
    let values = lister.values.expect("values were collected");
    lister.params.into_iter().zip(values).collect()
}
