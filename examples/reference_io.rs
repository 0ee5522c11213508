//! Writes a percept model file and one input/output dump of it, for checking the PyTorch
//! reference implementation in `benches/reference/` against percept (`check.py` there).
//!
//! ```sh
//! cargo run --example reference_io -- /tmp/refio [--size nano|small|medium] [--classes N]
//!     [--model FILE]
//! python benches/reference/check.py /tmp/refio
//! ```
//!
//! `OUT_DIR/model.safetensors`: the network (a fresh one from a fixed seed, or `--model FILE`
//! re-saved). `OUT_DIR/io.safetensors`, all f32:
//!
//! - `images [b, 3, h, w]`; `drivable`, `lanes [b, h, w]`; `{detection,drivable,lanes}_labelled
//!   [b]`; `boxes [n, 6]` (image, class, x1, y1, x2, y2); `ignore [m, 5]` (image, x1, y1, x2, y2);
//! - `assign.scores [b, anchors, classes]`, `assign.boxes [b, anchors, 4]`: the detached
//!   predictions of the training forward that the task-aligned assigner ranked, and the
//!   assigned detection targets `targets.{classes,boxes,positive,quality,weight}`;
//! - `eval.*`: the outputs of `net.valid()` (batch norm on running statistics);
//! - `train.*`: the outputs of the training-mode forward (batch statistics), the loss terms
//!   `loss.*` of `batch_loss`, every parameter's gradient `grad.<name>` and the batch-norm
//!   running statistics after that one forward, `after.<name>`.
//!
//! The metadata key `percept.reference_io` holds the sizes and loss weights as JSON.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::AutodiffBackend;
use percept::data::{collate, IgnoreRegion, LabelledTasks, TrafficSide};
use percept::eval::eval::MetricResolution;
use percept::eval::inputs::batch_tensors;
use percept::eval::model_file::{
    load_model, save_model, ModelCard, Normalization, Provenance, MODEL_FORMAT,
};
use percept::model::loss::distances_to_boxes;
use percept::model::{
    multitask_loss, DecodeOptions, LossParts, ModelSize, PerceptionNet, PerceptionNetConfig,
    PerceptionOutput,
};
use percept::synth::SceneGenerator;
use percept::train::config::InputSize;
use percept::train::step::{assign_batch, batch_loss};
use percept::train::RunConfig;
use safetensors::tensor::{Dtype, TensorView};

type A = Autodiff<Flex>;

const HEIGHT: usize = 192;
const WIDTH: usize = 320;
const BATCH: usize = 2;
const SEED: u64 = 7;

struct Args {
    out: PathBuf,
    size: ModelSize,
    classes: usize,
    model: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let usage = "usage: reference_io <OUT_DIR> [--size nano|small|medium] [--classes N] \
                 [--model FILE]";
    let mut it = std::env::args().skip(1);
    let mut out = None;
    let mut size = ModelSize::Nano;
    // percept bench train's default, and BDD100K's class count.
    let mut classes = 10;
    let mut model = None;
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{a} needs a value; {usage}"))
        };
        match a.as_str() {
            "--size" => {
                let v = value()?;
                size = ModelSize::ALL
                    .into_iter()
                    .find(|s| s.name() == v)
                    .with_context(|| format!("--size {v}: give nano, small or medium"))?;
            }
            "--classes" => classes = value()?.parse().context("--classes")?,
            "--model" => model = Some(PathBuf::from(value()?)),
            _ if a.starts_with('-') => bail!("unknown option {a}; {usage}"),
            _ if out.is_none() => out = Some(PathBuf::from(a)),
            _ => bail!("{usage}"),
        }
    }
    Ok(Args {
        out: out.context(usage)?,
        size,
        classes,
        model,
    })
}

/// A tensor to write: name, shape, f32 values.
struct Entry {
    name: String,
    shape: Vec<usize>,
    values: Vec<f32>,
}

#[derive(Default)]
struct Dump(Vec<Entry>);

impl Dump {
    fn push(&mut self, name: impl Into<String>, shape: Vec<usize>, values: Vec<f32>) {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        self.0.push(Entry {
            name: name.into(),
            shape,
            values,
        });
    }

    fn tensor<B: Backend, const D: usize>(&mut self, name: impl Into<String>, t: Tensor<B, D>) {
        let shape = t.dims().to_vec();
        let values = t.into_data().convert::<f32>().to_vec().expect("f32 data");
        self.push(name, shape, values);
    }

    fn outputs<B: Backend>(&mut self, prefix: &str, out: PerceptionOutput<B>) {
        if let Some(d) = out.detection {
            self.tensor(format!("{prefix}.class_logits"), d.class_logits);
            self.tensor(format!("{prefix}.box_logits"), d.box_logits);
            self.tensor(format!("{prefix}.distances"), d.distances);
        }
        if let Some(t) = out.drivable {
            self.tensor(format!("{prefix}.drivable"), t);
        }
        if let Some(t) = out.lanes {
            self.tensor(format!("{prefix}.lanes"), t);
        }
    }

    fn write(self, path: &Path, metadata: HashMap<String, String>) -> Result<()> {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .0
            .into_iter()
            .map(|e| {
                let b = e.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                (e.name, e.shape, b)
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize_to_file(views, Some(metadata), path)
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Every parameter's gradient by its module path (the model file's tensor names).
struct GradCollector<'a> {
    path: Vec<String>,
    grads: &'a GradientsParams,
    found: Vec<NamedTensor>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradCollector<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let shape = g.dims().to_vec();
            let values = g.into_data().convert::<f32>().to_vec().expect("f32 data");
            self.found.push((self.path.join("."), shape, values));
        }
    }
}

/// A tensor's name, shape and values.
type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// The network's tensors as its model file names them.
fn saved_tensors<B: Backend>(net: &PerceptionNet<B>) -> Result<Vec<NamedTensor>> {
    let mut store = SafetensorsStore::from_bytes(None);
    net.save_into(&mut store)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let bytes = store.get_bytes().map_err(|e| anyhow::anyhow!("{e}"))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)?;
    let mut out = Vec::new();
    for (name, view) in file.tensors() {
        if view.dtype() != Dtype::F32 {
            bail!("{name}: {:?}, expected f32", view.dtype());
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        out.push((name, view.shape().to_vec(), values));
    }
    Ok(out)
}

fn loss_values<B: Backend>(parts: &LossParts<B>) -> Vec<(&'static str, f32)> {
    let terms = [
        ("total", Some(&parts.total)),
        ("classification", parts.classification.as_ref()),
        ("box_iou", parts.box_iou.as_ref()),
        ("dfl", parts.dfl.as_ref()),
        ("drivable", parts.drivable.as_ref()),
        ("lanes", parts.lanes.as_ref()),
    ];
    terms
        .into_iter()
        .filter_map(|(n, t)| t.map(|t| (n, t.clone().into_scalar().elem::<f32>())))
        .collect()
}

fn run_config(size: ModelSize) -> Result<RunConfig> {
    // Only `loss` matters to batch_loss; the rest is what a config must have.
    let text = format!(
        "name = \"reference-io\"\n\
         [site]\nregion = \"DE\"\nname = \"reference-io\"\n\
         [model]\nsize = \"{}\"\ninput = {{ width = {WIDTH}, height = {HEIGHT} }}\n\
         [data]\ndatasets = [\"unused\"]\n\
         [train]\nsteps = 1\nbatch_size = {BATCH}\nseed = {SEED}\nlr = 0.002\n",
        size.name()
    );
    Ok(RunConfig::parse(&text, Path::new("<reference_io>"))?)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let device = Default::default();

    let (net, card) = match &args.model {
        Some(path) => load_model::<A>(path, &device)?,
        None => {
            let arch = PerceptionNetConfig::new(args.size, args.classes);
            arch.validate()?;
            let net = arch.init_seeded::<A>(SEED, &device);
            let classes = (0..args.classes).map(|i| format!("class{i}")).collect();
            let card = ModelCard {
                format: MODEL_FORMAT.into(),
                architecture: arch,
                classes,
                input: InputSize {
                    width: WIDTH,
                    height: HEIGHT,
                },
                normalization: Normalization::default(),
                decode: DecodeOptions::default(),
                eval_resolution: MetricResolution::default(),
                provenance: Provenance {
                    site_region: "DE".into(),
                    site_name: "reference-io".into(),
                    datasets: Vec::new(),
                    regions: Vec::new(),
                    config_hash: String::new(),
                    base_checkpoint: None,
                    steps: 0,
                    audit_head: None,
                    site_key: None,
                    percept_version: env!("CARGO_PKG_VERSION").into(),
                    base: None,
                    finetune: None,
                    quantization: None,
                },
            };
            (net, card)
        }
    };
    let arch = card.architecture.clone();
    let model_path = args.out.join("model.safetensors");
    save_model(&net, &card, &model_path)?;

    // Two synthetic scenes, plus an ignore region and one image without lane labels so that
    // check.py covers those paths of the assigner and the loss too.
    let scenes = SceneGenerator::new(WIDTH as u32, HEIGHT as u32, TrafficSide::Right, SEED);
    let samples: Vec<_> = (0..BATCH as u64).map(|i| scenes.generate(i)).collect();
    let mut batch = collate(&samples, WIDTH as u32, HEIGHT as u32);
    batch.ignore[1].push(IgnoreRegion {
        x1: 8.0,
        y1: 60.0,
        x2: 70.0,
        y2: 120.0,
    });
    batch.tasks[1] = LabelledTasks {
        lanes: false,
        ..LabelledTasks::ALL
    };
    let config = run_config(arch.size)?;

    let mut dump = Dump::default();
    let (images, seg) = batch_tensors::<Flex>(&batch, &device);
    dump.tensor("images", images);
    dump.tensor("drivable", seg.drivable);
    dump.tensor("lanes", seg.lanes);
    dump.tensor("drivable_labelled", seg.drivable_labelled);
    dump.tensor("lanes_labelled", seg.lanes_labelled);
    let det_labelled = batch
        .tasks
        .iter()
        .map(|t| t.detection as u8 as f32)
        .collect();
    dump.push("detection_labelled", vec![BATCH], det_labelled);
    let boxes: Vec<f32> = (0..BATCH)
        .flat_map(|i| {
            batch.boxes[i]
                .iter()
                .flat_map(move |b| [i as f32, b.class as f32, b.x1, b.y1, b.x2, b.y2])
        })
        .collect();
    dump.push("boxes", vec![boxes.len() / 6, 6], boxes);
    let ignore: Vec<f32> = (0..BATCH)
        .flat_map(|i| {
            batch.ignore[i]
                .iter()
                .flat_map(move |r| [i as f32, r.x1, r.y1, r.x2, r.y2])
        })
        .collect();
    dump.push("ignore", vec![ignore.len() / 5, 5], ignore);

    // Inference mode first: the training forward below moves the running statistics.
    let (images, _) = batch_tensors::<Flex>(&batch, &device);
    dump.outputs("eval", net.valid().forward(images));

    // The training step's loss as the trainer computes it, and its gradients.
    let parts = batch_loss(&net, &batch, arch.num_classes, &config, &device);
    let losses = loss_values(&parts);
    let grads = GradientsParams::from_grads(parts.total.backward(), &net);
    let mut collector = GradCollector {
        path: Vec::new(),
        grads: &grads,
        found: Vec::new(),
    };
    net.visit(&mut collector);
    // `valid()` folds in the running statistics' pending update: burn's RunningState keeps
    // it per thread until synced, and saving the autodiff module as is would miss it.
    let after = saved_tensors(&net.valid())?;

    // The outputs of that training forward: the same forward again on a fresh copy of the
    // saved network (so the running statistics move once), checked to give the same loss.
    let (fresh, _) = load_model::<A>(&model_path, &device)?;
    let (images, seg) = batch_tensors::<A>(&batch, &device);
    let output = fresh.forward(images);
    let detection = output
        .detection
        .as_ref()
        .context("the network has no detection head")?;
    let targets = assign_batch(detection, &batch, arch.num_classes);
    // What the assigner saw: the same predictions, detached.
    dump.tensor(
        "assign.scores",
        sigmoid(detection.class_logits.clone().detach()),
    );
    dump.tensor(
        "assign.boxes",
        distances_to_boxes(detection.distances.clone().detach(), HEIGHT, WIDTH),
    );
    let [n, c] = [targets.anchors, targets.num_classes];
    dump.push(
        "targets.classes",
        vec![BATCH, n, c],
        targets.classes.clone(),
    );
    dump.push("targets.boxes", vec![BATCH, n, 4], targets.boxes.clone());
    dump.push("targets.positive", vec![BATCH, n], targets.positive.clone());
    dump.push("targets.quality", vec![BATCH, n], targets.quality.clone());
    dump.push("targets.weight", vec![BATCH, n], targets.weight.clone());
    let again = multitask_loss(&output, Some(&targets), &seg, &config.loss);
    if loss_values(&again) != losses {
        bail!(
            "the training forward is not reproducible: {:?} vs {:?}",
            loss_values(&again),
            losses
        );
    }
    dump.outputs("train", output);
    for (name, v) in &losses {
        dump.push(format!("loss.{name}"), vec![1], vec![*v]);
    }

    let names: BTreeMap<String, Vec<usize>> = after
        .iter()
        .map(|(n, s, _)| (n.clone(), s.clone()))
        .collect();
    for (name, shape, values) in collector.found {
        if names.get(&name) != Some(&shape) {
            bail!("gradient {name} {shape:?} names no tensor of the model file");
        }
        dump.push(format!("grad.{name}"), shape, values);
    }
    for (name, shape, values) in after {
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            dump.push(format!("after.{name}"), shape, values);
        }
    }

    let meta = serde_json::json!({
        "size": arch.size.name(),
        "num_classes": arch.num_classes,
        "height": HEIGHT,
        "width": WIDTH,
        "batch": BATCH,
        "seed": SEED,
        "num_positive": targets.num_positive,
        "loss_weights": config.loss,
        "losses": losses.iter().map(|(n, v)| (n.to_string(), *v)).collect::<BTreeMap<_, _>>(),
    });
    let io_path = args.out.join("io.safetensors");
    let count = dump.0.len();
    dump.write(
        &io_path,
        HashMap::from([("percept.reference_io".to_string(), meta.to_string())]),
    )?;
    println!(
        "{} network ({} classes): {} and {} ({count} tensors; {} boxes, {} positives)",
        arch.size.name(),
        arch.num_classes,
        model_path.display(),
        io_path.display(),
        batch.boxes.iter().map(Vec::len).sum::<usize>(),
        targets.num_positive,
    );
    for (name, v) in &losses {
        println!("  loss.{name} = {v}");
    }
    Ok(())
}
