//! The check of `optimizer.lr_multipliers` against a network's parameter paths: one check,
//! run by training on the network it builds ([`crate::optim::param_groups`]) and by reading a
//! config on the network the config describes ([`lr_multiplier_problems`]), so `percept config
//! check` refuses what `train` would. It takes plain values, not the config types, so the
//! config and the optimiser both call it without importing each other.

use std::collections::BTreeMap;

/// One problem per prefix of `multipliers` that matches none of the parameter `paths`, naming
/// the key and the top-level modules.
pub fn unmatched_lr_prefixes(paths: &[&str], multipliers: &BTreeMap<String, f64>) -> Vec<String> {
    let mut top: Vec<&str> = paths
        .iter()
        .map(|p| p.split('.').next().unwrap_or_default())
        .collect();
    top.dedup();
    multipliers
        .keys()
        .filter(|prefix| !paths.iter().any(|p| matches_prefix(p, prefix)))
        .map(|prefix| {
            format!(
                "optimizer.lr_multipliers.{prefix}: no parameter's path starts with {prefix:?}; \
                 paths are dotted module names such as {:?}, and the top-level modules are {}",
                paths.first().copied().unwrap_or(""),
                top.join(", ")
            )
        })
        .collect()
}

/// [`unmatched_lr_prefixes`] for the network of `size` and `tasks` (the class count does not
/// change a path), built on the CPU backend once per size and tasks.
#[cfg(feature = "flex")]
pub fn lr_multiplier_problems(
    size: percept_model::ModelSize,
    tasks: percept_model::Tasks,
    multipliers: &BTreeMap<String, f64>,
) -> Vec<String> {
    use std::sync::{Arc, Mutex};

    use burn::backend::{flex::FlexDevice, Flex};
    use percept_model::params::list_params;
    use percept_model::{ModelSize, PerceptionNetConfig, Tasks};

    type Cache = Mutex<Vec<((ModelSize, Tasks), Arc<Vec<String>>)>>;
    static CACHE: Cache = Mutex::new(Vec::new());

    if multipliers.is_empty() {
        return Vec::new();
    }
    let key = (size, tasks);
    let cached = CACHE
        .lock()
        .ok()
        .and_then(|c| c.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()));
    let paths = cached.unwrap_or_else(|| {
        let arch = PerceptionNetConfig {
            size,
            num_classes: 1,
            tasks,
        };
        // Seeded, under the model's lock on the backend's RNG: no other network's draws move.
        let net = arch.init_seeded::<Flex>(0, &FlexDevice);
        let paths: Vec<String> = list_params::<Flex, _>(&net)
            .into_iter()
            .map(|p| p.path)
            .collect();
        let paths = Arc::new(paths);
        if let Ok(mut c) = CACHE.lock() {
            c.push((key, paths.clone()));
        }
        paths
    });
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    unmatched_lr_prefixes(&paths, multipliers)
}

/// `backbone` matches `backbone.x` and `backbone` but not `backbone2.x`.
pub(crate) fn matches_prefix(path: &str, prefix: &str) -> bool {
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.'))
}
