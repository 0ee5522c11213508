use burn::backend::{Autodiff, Flex};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use percept_model::*;
type B = Autodiff<Flex>;
fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (h, w, bs) = (args[0], args[1], args[2]);
    let d = Default::default();
    let mut net = PerceptionNetConfig::new(ModelSize::Nano, 7).init::<B>(&d);
    let mut opt = AdamWConfig::new().init::<B, PerceptionNet<B>>();
    let targets = vec![vec![TargetBox { class: 0, bbox: [10.0, 10.0, 50.0, 40.0] }]; bs];
    for i in 0..6 {
        let t = std::time::Instant::now();
        let x = Tensor::<B, 4>::random([bs, 3, h, w], burn::tensor::Distribution::Normal(0.0, 1.0), &d);
        let seg = SegmentationTargets { drivable: Tensor::zeros([bs, h, w], &d), lanes: Tensor::zeros([bs, h, w], &d) };
        let out = net.forward(x);
        let t1 = t.elapsed();
        let dt = assign_targets(h, w, &targets, 7);
        let loss = multitask_loss(&out, Some(&dt), &seg, &LossWeights::default());
        let g = GradientsParams::from_grads(loss.total.backward(), &net);
        net = opt.step(1e-3, net, g);
        let v: f32 = loss.total.into_scalar();
        println!("step {i} fwd {:?} total {:?} loss {v}", t1, t.elapsed());
    }
}
