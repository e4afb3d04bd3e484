//! A tch forward pass: the Fourier-feature MLP trunk shape of the paper (d = 2, width 64) on
//! a batch of 2048, at one libtorch thread (the default of `lv`) and at two.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use tch::{nn, nn::Module, Device, Kind, Tensor};

fn mlp(vs: &nn::Path, d: i64) -> impl Module {
    nn::seq()
        .add(nn::linear(vs / "l0", d, 64, Default::default()))
        .add_fn(|x| x.gelu("none"))
        .add(nn::linear(vs / "l1", 64, 64, Default::default()))
        .add_fn(|x| x.gelu("none"))
        .add(nn::linear(vs / "l2", 64, 64, Default::default()))
        .add_fn(|x| x.gelu("none"))
        .add(nn::linear(vs / "l3", 64, d, Default::default()))
}

fn forward(c: &mut Criterion) {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = mlp(&vs.root(), 2);
    let x = Tensor::randn([2048, 2], (Kind::Float, Device::Cpu));
    for threads in [1, 2] {
        tch::set_num_threads(threads);
        c.bench_function(&format!("mlp_forward_b2048_d2_threads{threads}"), |b| {
            b.iter(|| tch::no_grad(|| black_box(net.forward(black_box(&x)))))
        });
    }
}

criterion_group!(benches, forward);
criterion_main!(benches);
