//! LoRA and QLoRA layers: forward against the formula, gradients only into the adapters,
//! merge, several adapters.

use burn::nn::LinearConfig;
use burn::tensor::{Device, Distribution, Tensor};
use qlora_backend::QuantConfig;
use qlora_nn::{InitLoraWeights, LoraAdapter, LoraLinear, QLoraLinear};

fn vec2(t: Tensor<2>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

use qlora_testenv::compare::{assert_close, max_abs, max_abs_diff};

#[test]
fn lora_forward_is_base_plus_scaled_update() {
    let device = Device::flex();
    let base = LinearConfig::new(12, 20).init(&device);
    let w = base.weight.val(); // [in, out]
    let b = base.bias.as_ref().unwrap().val();
    let mut layer = LoraLinear::new(base);
    layer.lora.add(
        "default",
        LoraAdapter::new([12, 20], 4, 2.0, 0.0, InitLoraWeights::Random, &device),
    );
    let x = Tensor::<3>::random([2, 3, 12], Distribution::Normal(0.0, 1.0), &device);
    let y = layer.forward(x.clone());
    assert_eq!(y.dims(), [2, 3, 20]);
    let a = layer.lora.get("default").unwrap();
    let x2 = x.reshape([6, 12]);
    let want = x2.clone().matmul(w)
        + b.unsqueeze()
        + x2.matmul(a.lora_a.val().transpose())
            .matmul(a.lora_b.val().transpose())
            .mul_scalar(2.0);
    assert_close(&vec2(y.reshape([6, 20])), &vec2(want), 1e-5, "y");
}

#[test]
fn default_init_starts_at_the_base_output() {
    let device = Device::flex();
    let base = LinearConfig::new(8, 8).init(&device);
    let mut layer = LoraLinear::new(base.clone());
    layer.lora.add(
        "default",
        LoraAdapter::new([8, 8], 2, 1.0, 0.0, InitLoraWeights::Default, &device),
    );
    let x = Tensor::<2>::random([4, 8], Distribution::Normal(0.0, 1.0), &device);
    assert_eq!(vec2(layer.forward(x.clone())), vec2(base.forward(x)));
    let a = layer.lora.get("default").unwrap();
    let bound = 1.0 / 8f32.sqrt();
    assert!(vec2(a.lora_a.val()).iter().all(|v| v.abs() <= bound));
}

#[test]
fn qlora_gradients_reach_only_the_adapters() {
    let device = Device::flex().autodiff();
    let base = LinearConfig::new(64, 32).init(&device);
    let mut layer = QLoraLinear::quantize("proj", base, QuantConfig::qlora()).unwrap();
    layer.lora.add(
        "default",
        LoraAdapter::new([64, 32], 4, 2.0, 0.0, InitLoraWeights::Random, &device),
    );
    let x = Tensor::<2>::random([5, 64], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let grads = layer.forward(x.clone()).sum().backward();
    let params = burn::optim::GradientsParams::from_grads(grads, &layer);
    // lora_A and lora_B, nothing of the base (int weight words, frozen bias).
    assert_eq!(params.len(), 2);
    let a = layer.lora.get("default").unwrap();
    assert!(params.get::<2>(a.lora_a.id).is_some() && params.get::<2>(a.lora_b.id).is_some());
}

#[test]
fn merge_matches_the_unmerged_layer() {
    let device = Device::flex();
    let base = LinearConfig::new(64, 48).init(&device);
    let mut lora = LoraLinear::new(base.clone());
    lora.lora.add(
        "default",
        LoraAdapter::new([64, 48], 8, 2.0, 0.0, InitLoraWeights::Random, &device),
    );
    let x = Tensor::<2>::random([7, 64], Distribution::Normal(0.0, 1.0), &device);
    let before = vec2(lora.forward(x.clone()));
    let merged = lora.merge_and_unload();
    assert_close(
        &vec2(merged.forward(x.clone())),
        &before,
        1e-5,
        "merged float",
    );

    let mut q = QLoraLinear::quantize("proj", base, QuantConfig::qlora()).unwrap();
    q.lora.add(
        "default",
        LoraAdapter::new([64, 48], 8, 2.0, 0.0, InitLoraWeights::Random, &device),
    );
    let before = vec2(q.forward(x.clone()));
    assert_close(
        &vec2(q.clone().merge_to_linear().forward(x.clone())),
        &before,
        1e-5,
        "merged to float",
    );
    // Re-quantizing the merged weight is lossy, but stays within the 4-bit grid's error.
    let requant = vec2(
        q.merge_into_nf4("proj", QuantConfig::qlora())
            .unwrap()
            .forward(x),
    );
    let err = max_abs_diff(&requant, &before, "re-quantized merge");
    let scale = max_abs(&before, "before");
    assert!(
        err > 0.0 && err < 0.2 * scale,
        "re-quantized merge error {err} (scale {scale})"
    );
}

#[test]
fn merge_in_place_and_unmerge() {
    let device = Device::flex();
    let base = LinearConfig::new(64, 48).init(&device);
    let adapter = || LoraAdapter::new([64, 48], 8, 2.0, 0.0, InitLoraWeights::Random, &device);
    let x = Tensor::<2>::random([5, 64], Distribution::Normal(0.0, 1.0), &device);

    // Float base: merging keeps the output, unmerging gives the base weight back.
    let mut lora = LoraLinear::new(base.clone());
    lora.lora.add("default", adapter());
    let w0 = vec2(lora.base.weight.val());
    let before = vec2(lora.forward(x.clone()));
    lora.merge();
    assert!(lora.lora.is_merged("default"));
    assert!(
        vec2(lora.base.weight.val()) != w0,
        "merge changed no weight"
    );
    assert_close(&vec2(lora.forward(x.clone())), &before, 1e-5, "merged");
    lora.merge(); // nothing left to merge: a no-op
    assert_close(
        &vec2(lora.forward(x.clone())),
        &before,
        1e-5,
        "merged twice",
    );
    // Merged adapters are part of the weight: merge_and_unload does not add them again.
    assert_close(
        &vec2(lora.clone().merge_and_unload().forward(x.clone())),
        &before,
        1e-5,
        "merged then unloaded",
    );
    lora.unmerge();
    assert!(!lora.lora.is_merged("default"));
    assert_close(&vec2(lora.base.weight.val()), &w0, 1e-6, "unmerged weight");
    assert_close(&vec2(lora.forward(x.clone())), &before, 1e-5, "unmerged");

    // NF4 base: merge and unmerge re-quantize, within the 4-bit grid's error.
    let mut q = QLoraLinear::quantize("proj", base, QuantConfig::qlora()).unwrap();
    q.lora.add("default", adapter());
    let before = vec2(q.forward(x.clone()));
    let scale = max_abs(&before, "before");
    let max_err = |a: &[f32]| max_abs_diff(a, &before, "NF4 merge");
    q.merge("proj").unwrap();
    assert!(q.lora.is_merged("default"));
    let merged = vec2(q.forward(x.clone()));
    assert!(
        max_err(&merged) < 0.2 * scale,
        "merged NF4 error {}",
        max_err(&merged)
    );
    q.unmerge("proj").unwrap();
    let unmerged = vec2(q.forward(x));
    assert!(
        max_err(&unmerged) < 0.2 * scale,
        "unmerged NF4 error {}",
        max_err(&unmerged)
    );
}

#[test]
#[should_panic(expected = "unmerge before deleting")]
fn deleting_a_merged_adapter_panics_clearly() {
    let device = Device::flex();
    let mut lora = LoraLinear::new(LinearConfig::new(8, 4).init(&device));
    lora.lora.add(
        "default",
        LoraAdapter::new([8, 4], 2, 1.0, 0.0, InitLoraWeights::Random, &device),
    );
    lora.merge();
    lora.lora.delete("default");
}

#[test]
fn several_adapters_active_disabled_deleted() {
    let device = Device::flex();
    let base = LinearConfig::new(6, 6).with_bias(false).init(&device);
    let mut layer = LoraLinear::new(base.clone());
    layer.lora.add(
        "a",
        LoraAdapter::new([6, 6], 2, 1.0, 0.0, InitLoraWeights::Random, &device),
    );
    layer.lora.add(
        "b",
        LoraAdapter::new([6, 6], 3, 1.0, 0.0, InitLoraWeights::Random, &device),
    );
    let x = Tensor::<2>::random([2, 6], Distribution::Normal(0.0, 1.0), &device);
    let base_y = base.forward(x.clone());
    let da = layer.lora.get("a").unwrap().forward(x.clone());
    let db = layer.lora.get("b").unwrap().forward(x.clone());
    assert_close(
        &vec2(layer.forward(x.clone())),
        &vec2(base_y.clone() + da.clone() + db.clone()),
        1e-5,
        "both",
    );
    layer.lora.set_active(&["b"]);
    assert_close(
        &vec2(layer.forward(x.clone())),
        &vec2(base_y.clone() + db),
        1e-5,
        "b only",
    );
    layer.lora.set_disabled(true);
    assert_eq!(vec2(layer.forward(x.clone())), vec2(base_y.clone()));
    layer.lora.set_disabled(false);
    assert!(layer.lora.delete("b").is_some());
    assert_eq!(layer.lora.names(), ["a".to_string()]);
    assert_eq!(
        vec2(layer.forward(x.clone())),
        vec2(base_y),
        "`a` was inactive"
    );
}

#[test]
#[should_panic(expected = "no adapter named `missing`")]
fn activating_an_unknown_adapter_panics_clearly() {
    let device = Device::flex();
    let mut layer = LoraLinear::new(LinearConfig::new(4, 4).init(&device));
    layer.lora.add(
        "a",
        LoraAdapter::new([4, 4], 1, 1.0, 0.0, InitLoraWeights::Default, &device),
    );
    layer.lora.set_active(&["missing"]);
}

#[test]
fn configs_build_layers_with_burn_style_init() {
    let device = Device::flex();
    let cfg = qlora_nn::LoraLinearConfig::new(16, 24)
        .with_r(4)
        .with_lora_alpha(8.0);
    let l = cfg.init(&device);
    assert_eq!((l.in_features(), l.out_features()), (16, 24));
    assert_eq!(l.lora.get("default").unwrap().scaling, 2.0);
    let q = qlora_nn::QLoraLinearConfig::new(cfg.with_use_rslora(true)).init(&device);
    assert_eq!((q.in_features(), q.out_features()), (16, 24));
    assert_eq!(q.lora.get("default").unwrap().scaling, 4.0);
    // B starts at zero: the layer's output is its base output.
    let x = Tensor::<2>::random([3, 16], Distribution::Normal(0.0, 1.0), &device);
    let base_only = {
        let mut b = q.clone();
        b.lora.set_disabled(true);
        vec2(b.forward(x.clone()))
    };
    assert_eq!(vec2(q.forward(x)), base_only);
}

#[test]
fn dropout_only_acts_in_training() {
    let device = Device::flex();
    let a = LoraAdapter::new([8, 8], 2, 1.0, 0.5, InitLoraWeights::Random, &device);
    let x = Tensor::<2>::random([4, 8], Distribution::Normal(0.0, 1.0), &device);
    // No autodiff device: inference, dropout is the identity and the update deterministic.
    assert_eq!(vec2(a.forward(x.clone())), vec2(a.forward(x)));
}
