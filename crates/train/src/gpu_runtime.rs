//! burn's GPU runtime (cubecl) set up by percept: where compiled kernels and autotune results
//! are kept, and a count of the kernels compiled and the autotune candidates timed.
//!
//! cubecl keeps autotune results (and, for CUDA and SPIR-V, compiled kernels) under `target/`
//! of the first directory above the working directory that holds a `Cargo.toml`, else in the
//! user's cache: a binary started elsewhere, or on a fresh node, starts cold. percept instead
//! points every cache at one folder, [`KernelCache`]:
//!
//! ```text
//! <cache>/autotune/...     cubecl's autotune results (every cubecl backend)
//! <cache>/cuda/...         PTX compiled by NVRTC (cuda)
//! <cache>/nvidia/          the CUDA driver's JIT cache (CUDA_CACHE_PATH, unless already set)
//! <cache>/mesa/            Mesa's shader cache (MESA_SHADER_CACHE_DIR, unless already set):
//!                          on wgpu, cubecl compiles WGSL anew in every process, and the
//!                          driver's cache is what a second process finds
//! ```
//!
//! so that `percept warmup` can fill it once per node image. cubecl's compilation and
//! autotune loggers write to a file percept reads back ([`counts`]): every kernel cubecl
//! compiles, every autotune key it tunes and every candidate it times.
//!
//! cubecl reads its configuration once per process; [`init`] must come before the first GPU
//! tensor. [`crate::backend::dispatch`] calls it for the GPU backends.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::TrainError;

/// The environment variable naming the kernel cache folder (over `kernel_cache` in a run
/// config).
pub const CACHE_ENV: &str = "PERCEPT_KERNEL_CACHE";

/// The folder where compiled kernels and autotune results are kept, and why it is that one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelCache {
    pub dir: PathBuf,
    /// Where the choice came from: the environment variable, the config key or the default.
    pub source: String,
}

impl KernelCache {
    /// `PERCEPT_KERNEL_CACHE` if set, else `configured` (a run config's `kernel_cache`), else
    /// `$XDG_CACHE_HOME/percept/kernels`, else `$HOME/.cache/percept/kernels`, else the
    /// temporary directory's `percept-kernels`.
    pub fn resolve(configured: Option<&Path>) -> KernelCache {
        let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(dir) = env(CACHE_ENV) {
            return KernelCache {
                dir: dir.into(),
                source: CACHE_ENV.into(),
            };
        }
        if let Some(dir) = configured {
            return KernelCache {
                dir: dir.to_path_buf(),
                source: "kernel_cache in the run config".into(),
            };
        }
        let (dir, source) = if let Some(cache) = env("XDG_CACHE_HOME") {
            (PathBuf::from(cache), "$XDG_CACHE_HOME")
        } else if let Some(home) = env("HOME") {
            (PathBuf::from(home).join(".cache"), "$HOME/.cache")
        } else {
            (std::env::temp_dir(), "the temporary directory")
        };
        KernelCache {
            dir: dir.join("percept").join("kernels"),
            source: format!("default ({source})"),
        }
    }
}

/// Kernels compiled and autotuning done, as cubecl logged them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KernelCounts {
    /// Kernels cubecl compiled (autotune candidates included).
    pub compiled: usize,
    /// Of those, kernels no `percept warmup` with this cache compiled (`None` where unknown).
    pub not_warmed: Option<usize>,
    /// Autotune keys tuned (each a new shape class of an autotuned operation).
    pub keys_tuned: usize,
    /// Candidates timed for those keys.
    pub candidates_timed: usize,
    /// The compiled kernels, in order.
    #[serde(skip)]
    pub kernels: Vec<CompiledKernel>,
}

/// One kernel cubecl compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledKernel {
    pub name: String,
    /// blake3 (16 hex digits) of cubecl's kernel id: the kernel type, its compile-time
    /// settings and cube size, which is what cubecl caches a compiled kernel under.
    pub id: String,
}

impl KernelCounts {
    /// What was counted after `earlier`, a snapshot of the same logs.
    pub fn since(&self, earlier: &KernelCounts) -> KernelCounts {
        let kernels = self.kernels[earlier.kernels.len().min(self.kernels.len())..].to_vec();
        KernelCounts {
            compiled: self.compiled - earlier.compiled,
            not_warmed: match (self.not_warmed, earlier.not_warmed) {
                (Some(now), Some(before)) => Some(now.saturating_sub(before)),
                _ => None,
            },
            keys_tuned: self.keys_tuned - earlier.keys_tuned,
            candidates_timed: self.candidates_timed - earlier.candidates_timed,
            kernels,
        }
    }

    /// These counts with `not_warmed` set against `warmed`, the ids a warm-up compiled.
    pub fn against(mut self, warmed: &BTreeSet<String>) -> KernelCounts {
        self.not_warmed = Some(
            self.kernels
                .iter()
                .filter(|k| !warmed.contains(&k.id))
                .count(),
        );
        self
    }

    /// Counts cubecl's logs: `compilation` at the full level (each kernel's name, id and
    /// source between markers) and `autotune` at the full level (a "Fastest result" line per
    /// key tuned, an "Autotune[i]" line per candidate timed).
    pub fn parse(compilation: &str, autotune: &str) -> KernelCounts {
        let mut counts = KernelCounts::default();
        let mut block: Option<(String, String, bool)> = None;
        for line in compilation.lines() {
            match (&mut block, line) {
                (_, "[START_KERNEL_COMPILATION]") => block = Some(Default::default()),
                (Some((name, _, _)), l) if l.starts_with("name: ") && name.is_empty() => {
                    *name = l["name: ".len()..].trim().to_string();
                }
                (Some((_, id, in_id)), l) if l.starts_with("id: ") && id.is_empty() => {
                    id.push_str(&l["id: ".len()..]);
                    *in_id = true;
                }
                (Some((_, _, in_id)), "source:") => *in_id = false,
                (Some((_, id, true)), l) => {
                    id.push('\n');
                    id.push_str(l);
                }
                (Some(_), "[END_KERNEL_COMPILATION]") => {
                    let (name, id, _) = block.take().expect("in a block");
                    counts.compiled += 1;
                    let hash = blake3::hash(id.as_bytes()).to_hex();
                    counts.kernels.push(CompiledKernel {
                        name,
                        id: hash[..16].to_string(),
                    });
                }
                _ => {}
            }
        }
        for line in autotune.lines() {
            if line.starts_with("Fastest result ") {
                counts.keys_tuned += 1;
            } else if line.starts_with("Autotune[") {
                counts.candidates_timed += 1;
            }
        }
        counts
    }
}

/// What [`init`] did in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuRuntime {
    /// percept set cubecl's caches and its logs (compilation, autotune).
    Configured {
        cache: KernelCache,
        logs: [PathBuf; 2],
    },
    /// cubecl had read its configuration before percept could set it (a GPU tensor made
    /// outside [`crate::backend::dispatch`]): caches are where cubecl's own defaults put
    /// them, and nothing is counted.
    Preset,
}

static RUNTIME: Mutex<Option<GpuRuntime>> = Mutex::new(None);

/// Points cubecl's caches (and the driver caches beside them) at `cache`, and its
/// compilation and autotune loggers at a file of this process in the temporary directory
/// (`percept-kernels-<pid>.log`). Idempotent for the same folder; a second folder in one
/// process is refused (cubecl reads its settings once).
pub fn init(cache: &KernelCache) -> Result<GpuRuntime, TrainError> {
    let mut runtime = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    match &*runtime {
        Some(GpuRuntime::Configured { cache: set, .. }) if set.dir != cache.dir => {
            return Err(TrainError::Invalid(format!(
                "kernel cache {} ({}): this process already keeps its kernels in {} ({}); \
                 cubecl reads its settings once per process",
                cache.dir.display(),
                cache.source,
                set.dir.display(),
                set.source
            )))
        }
        Some(done) => return Ok(done.clone()),
        None => {}
    }
    std::fs::create_dir_all(&cache.dir).map_err(|e| {
        TrainError::Invalid(format!(
            "kernel cache {} ({}): cannot create it: {e}; set {CACHE_ENV} to a writable folder",
            cache.dir.display(),
            cache.source
        ))
    })?;
    let logs = ["compilation", "autotune"].map(|what| {
        std::env::temp_dir().join(format!("percept-{}-{what}.log", std::process::id()))
    });
    for log in &logs {
        let _ = std::fs::remove_file(log);
    }
    let done = if configure_cubecl(&cache.dir, &logs) {
        set_driver_caches(&cache.dir);
        tracing::info!(
            "kernel cache: {} ({}); cubecl's logs {} and {}",
            cache.dir.display(),
            cache.source,
            logs[0].display(),
            logs[1].display()
        );
        GpuRuntime::Configured {
            cache: cache.clone(),
            logs,
        }
    } else {
        tracing::warn!(
            "cubecl's settings were read before percept set them: the kernel cache is where \
             cubecl's defaults put it, and kernel compilation is not counted"
        );
        GpuRuntime::Preset
    };
    *runtime = Some(done.clone());
    Ok(done)
}

/// [`init`] with the default folder ([`KernelCache::resolve`]`(None)`), unless this process
/// has already set one up.
pub fn init_default() -> Result<GpuRuntime, TrainError> {
    if let Some(done) = &*RUNTIME.lock().unwrap_or_else(|p| p.into_inner()) {
        return Ok(done.clone());
    }
    init(&KernelCache::resolve(None))
}

/// The kernel cache folder [`init`] set up in this process, if it did.
pub fn cache() -> Option<KernelCache> {
    match &*RUNTIME.lock().unwrap_or_else(|p| p.into_inner()) {
        Some(GpuRuntime::Configured { cache, .. }) => Some(cache.clone()),
        _ => None,
    }
}

/// Kernels compiled and autotuning done in this process so far; `None` when [`init`] has not
/// configured the log (no GPU used, or cubecl configured before percept).
pub fn counts() -> Option<KernelCounts> {
    let (cache, logs) = match &*RUNTIME.lock().unwrap_or_else(|p| p.into_inner()) {
        Some(GpuRuntime::Configured { cache, logs }) => (cache.clone(), logs.clone()),
        _ => return None,
    };
    let counts = KernelCounts::parse(&settled_text(&logs[0]), &settled_text(&logs[1]));
    Some(counts.against(&warmed_kernels(&cache)))
}

/// The file in the cache folder listing the ids of the kernels `percept warmup` compiled.
const WARMED_FILE: &str = "percept-warmed-kernels.txt";

/// The ids of the kernels warm-ups with `cache` compiled.
pub fn warmed_kernels(cache: &KernelCache) -> BTreeSet<String> {
    std::fs::read_to_string(cache.dir.join(WARMED_FILE))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Adds the kernels compiled in this process to the cache's list of warmed kernels (written
/// atomically). Where cubecl's compiled-kernel cache works (cuda, SPIR-V) a later process
/// loads them instead of compiling; on wgpu's WGSL path it compiles them again, and Mesa's
/// shader cache makes that quick.
pub fn remember_warmed() -> Result<(), TrainError> {
    let (Some(cache), Some(counts)) = (self::cache(), counts()) else {
        return Ok(());
    };
    let mut warmed = warmed_kernels(&cache);
    warmed.extend(counts.kernels.into_iter().map(|k| k.id));
    let text: String = warmed.into_iter().map(|id| id + "\n").collect();
    Ok(percept_data::atomic_file::write_atomic(
        cache.dir.join(WARMED_FILE),
        text.as_bytes(),
    )?)
}

/// The log's text once it has stopped growing: cubecl sends compilation messages to its
/// logging thread, so the last kernels of a step reach the file a moment after the step.
fn settled_text(log: &Path) -> String {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut last = size(log);
    for _ in 0..40 {
        std::thread::sleep(std::time::Duration::from_millis(25));
        let now = size(log);
        if now == last {
            break;
        }
        last = now;
    }
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Sets the driver caches' folders beside cubecl's, unless the user set them.
fn set_driver_caches(dir: &Path) {
    let set = |name: &str, value: &std::ffi::OsStr| {
        if std::env::var_os(name).is_none() {
            // Before the GPU backend starts: nothing reads these yet.
            std::env::set_var(name, value);
        }
    };
    set("CUDA_CACHE_PATH", dir.join("nvidia").as_os_str());
    // The driver's largest JIT cache (4 GiB); its default, 256 MiB, can evict a run's kernels.
    set("CUDA_CACHE_MAXSIZE", "4294967296".as_ref());
    set("MESA_SHADER_CACHE_DIR", dir.join("mesa").as_os_str());
}

/// Sets cubecl's configuration: the user's `cubecl.toml` (if any, found as cubecl finds it)
/// and `CUBECL_*` variables, with the caches and loggers replaced. `false` when cubecl has
/// already read its configuration.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn configure_cubecl(dir: &Path, logs: &[PathBuf; 2]) -> bool {
    use cubecl_runtime::config::autotune::AutotuneLogLevel;
    use cubecl_runtime::config::cache::CacheConfig;
    use cubecl_runtime::config::compilation::CompilationLogLevel;
    use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};

    if CubeClRuntimeConfig::storage().lock().is_some() {
        return false;
    }
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    config.autotune.cache = CacheConfig::File(dir.to_path_buf());
    config.compilation.cache = Some(CacheConfig::File(dir.to_path_buf()));
    // Full: each kernel's id (what identifies it in cubecl's caches), not only its name.
    config.compilation.logger.file = Some(logs[0].clone());
    config.compilation.logger.level = CompilationLogLevel::Full;
    config.autotune.logger.file = Some(logs[1].clone());
    config.autotune.logger.level = AutotuneLogLevel::Full;
    let mut storage = CubeClRuntimeConfig::storage().lock();
    if storage.is_some() {
        return false;
    }
    *storage = Some(std::sync::Arc::new(config));
    true
}

#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
fn configure_cubecl(_dir: &Path, _logs: &[PathBuf; 2]) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One kernel as cubecl's full compilation level logs it.
    fn compiled(name: &str, info: &str) -> String {
        format!(
            "[START_KERNEL_COMPILATION]\nname: {name}\nid: KernelId {{\n    type: {name},\n    \
             info: {info},\n}}\nsource:\n```wgsl\nfn main() {{}}\n```\n[END_KERNEL_COMPILATION]\n"
        )
    }

    #[test]
    fn counts_kernels_keys_and_candidates_from_cubecl_logs() {
        let compilation = [
            compiled("elemwise_fuse", "A"),
            compiled("matmul_entry", "B"),
            compiled("elemwise_fuse", "C"),
        ]
        .concat();
        let autotune = "Fastest result matmul-Simple-MatmulAutotuneKey { m: 64 }. Context: \n\
                        Autotune[0] name Simple => ProfileDuration { median: 1ms }\n\
                        Autotune[2] name Ordered => ProfileDuration { median: 2ms }\n\
                        Skip(\"not supported\")\n";
        let counts = KernelCounts::parse(&compilation, autotune);
        assert_eq!(
            (counts.compiled, counts.keys_tuned, counts.candidates_timed),
            (3, 1, 2)
        );
        let names: Vec<_> = counts.kernels.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["elemwise_fuse", "matmul_entry", "elemwise_fuse"]);
        // The same name with other compile-time settings is another kernel; the same id is
        // the same kernel.
        let ids: Vec<_> = counts.kernels.iter().map(|k| k.id.clone()).collect();
        assert_ne!(ids[0], ids[2]);
        assert_eq!(
            KernelCounts::parse(&compiled("elemwise_fuse", "A"), "").kernels[0].id,
            ids[0]
        );
        assert_eq!(ids[0].len(), 16);

        let earlier = KernelCounts::parse(&compiled("elemwise_fuse", "A"), "");
        let later = counts.since(&earlier);
        assert_eq!(
            (later.compiled, later.keys_tuned, later.candidates_timed),
            (2, 1, 2)
        );
        let warmed: BTreeSet<String> = [ids[1].clone()].into();
        assert_eq!(later.against(&warmed).not_warmed, Some(1));
    }

    #[test]
    fn the_cache_folder_comes_from_the_config_or_a_per_user_default() {
        // The environment variable is not set by the test harness; the process-wide variable
        // is left alone (tests run in parallel threads).
        if std::env::var_os(CACHE_ENV).is_some() {
            return;
        }
        let configured = KernelCache::resolve(Some(Path::new("/nodes/cache")));
        assert_eq!(configured.dir, Path::new("/nodes/cache"));
        assert_eq!(configured.source, "kernel_cache in the run config");
        let default = KernelCache::resolve(None);
        assert!(
            default.dir.ends_with("percept/kernels"),
            "{}",
            default.dir.display()
        );
        assert!(
            default.source.starts_with("default ("),
            "{}",
            default.source
        );
    }
}
