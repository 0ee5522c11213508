use burn::backend::Flex;
use burn::prelude::*;
use burn::nn::conv::Conv2dConfig;
use percept_model::conv_block::ConvBlockConfig;
type B = Flex;
fn time<F: FnMut() -> Tensor<B,4>>(name: &str, mut f: F) {
    let _ = f().into_data();
    let t = std::time::Instant::now();
    for _ in 0..3 { let _ = f().into_data(); }
    println!("{name}: {:?}", t.elapsed() / 3);
}
fn main() {
    let d = Default::default();
    let bs = 8;
    let x = Tensor::<B, 4>::random([bs, 16, 96, 160], burn::tensor::Distribution::Normal(0.0, 1.0), &d);
    let conv = Conv2dConfig::new([16, 32], [3, 3]).with_padding(burn::nn::PaddingConfig2d::Explicit(1,1,1,1)).init::<B>(&d);
    time("conv 16->32 3x3 @96x160 (0.57 GMAC)", || conv.forward(x.clone()));
    let blk = ConvBlockConfig::new([16, 32]).init::<B>(&d);
    time("convblock same", || blk.forward(x.clone()));
    let x2 = Tensor::<B, 4>::random([bs, 64, 24, 40], burn::tensor::Distribution::Normal(0.0, 1.0), &d);
    let conv2 = Conv2dConfig::new([64, 64], [3, 3]).with_padding(burn::nn::PaddingConfig2d::Explicit(1,1,1,1)).init::<B>(&d);
    time("conv 64->64 3x3 @24x40 (0.28 GMAC)", || conv2.forward(x2.clone()));
    let c1 = Conv2dConfig::new([64, 64], [1, 1]).init::<B>(&d);
    time("conv 64->64 1x1 @24x40 (0.03 GMAC)", || c1.forward(x2.clone()));
    let y = blk.forward(x.clone());
    let sc = Tensor::<B, 4>::random([1, 32, 1, 1], burn::tensor::Distribution::Normal(0.0, 1.0), &d);
    time("mul bcast [1,C,1,1]", || y.clone() * sc.clone());
    time("add bcast [1,C,1,1]", || y.clone() + sc.clone());
    time("add same shape", || y.clone() + y.clone());
    time("mul scalar", || y.clone() * 2.0);
    let y3 = y.clone().reshape([8, 32, 96*160]);
    let s3 = sc.clone().reshape([1, 32, 1]);
    time("a [B,C,HW]*[1,C,1]", || (y3.clone() * s3.clone()).reshape([8,32,96,160]));
    let y2 = y.clone().reshape([8*32, 96*160]);
    let s2 = sc.clone().reshape([1, 32, 1]).repeat_dim(0, 8).reshape([256, 1]);
    time("c [BC,HW]*[BC,1]", || (y2.clone() * s2.clone()).reshape([8,32,96,160]));
    let e = sc.clone().expand([8, 32, 96, 160]);
    time("expand then mul", || y.clone() * e.clone());
    let rowv = Tensor::<B, 2>::random([1, 96*160], burn::tensor::Distribution::Normal(0.0, 1.0), &d);
    time("row [BC,HW]*[1,HW]", || (y2.clone() * rowv.clone()).reshape([8,32,96,160]));
    let dw = Conv2dConfig::new([32, 32], [1, 1]).with_groups(32).init::<B>(&d);
    time("depthwise 1x1 conv", || dw.forward(y.clone()));
    time("mask_where/ full repeat materialize", || { let f = sc.clone().repeat_dim(0,8).repeat_dim(2,96).repeat_dim(3,160); y.clone()*f });
    let bn = burn::nn::BatchNormConfig::new(32).init::<B>(&d);
    time("bn infer", || bn.forward(y.clone()));
    let ybig = y.clone();
    time("mean_dim 0 then 2 then 3", || ybig.clone().mean_dim(0).mean_dim(2).mean_dim(3));
    time("swap+reshape", || y.clone().swap_dims(0,1).reshape([32, 8*96*160]).reshape([32,8,96,160]).swap_dims(0,1));
    time("cat ch", || Tensor::cat(vec![y.clone(), y.clone()], 1));
    time("silu @96x160x32", || burn::tensor::activation::silu(x.clone()));
    let net = percept_model::PerceptionNetConfig::new(percept_model::ModelSize::Nano, 7).init::<B>(&d);
    let img = Tensor::<B, 4>::random([bs, 3, 192, 320], burn::tensor::Distribution::Normal(0.0, 1.0), &d);
    let t = std::time::Instant::now();
    for _ in 0..2 { let o = net.forward(img.clone()); let _ = o.lanes.unwrap().into_data(); }
    println!("full fwd inference: {:?}", t.elapsed() / 2);
}
