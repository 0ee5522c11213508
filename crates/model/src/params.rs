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
    }
}

/// Every float parameter of `module`, in visiting order.
pub fn list_params<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamInfo> {
    let mut lister = ParamLister {
        path: Vec::new(),
        params: Vec::new(),
    };
    module.visit(&mut lister);
    lister.params
}
