//! The trainer's batches on the golden tiny LLaMA with LoRA: padded, padding-free, and packed
//! Best-Fit-Decreasing then padding-free all give the same mean loss over the same targets and
//! the same LoRA gradients (each sample computed as if alone); packed without padding-free
//! batches the samples see each other, so that loss differs.

use std::path::Path;

use burn::tensor::Device;
use burn_qlora::llama::{LlamaForCausalLM, LoraModel};
use burn_qlora::nn::{IGNORE_INDEX, InitLoraWeights, LoraApplier, LoraConfig, ModuleSelector};
use burn_qlora::train::{Sample, batch_loss, pack};

fn values<const D: usize>(t: burn::tensor::Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// Samples of lengths 5 to 40 whose first third (the "prompt") is not trained.
fn samples(vocab: u32) -> Vec<Sample> {
    let mut x = 99u64;
    [23usize, 5, 40, 17, 9, 31, 12]
        .iter()
        .map(|&n| {
            let ids: Vec<u32> = (0..n)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (x >> 33) as u32 % vocab
                })
                .collect();
            let labels = ids
                .iter()
                .enumerate()
                .map(|(i, &t)| if i < n / 3 { IGNORE_INDEX } else { t as i64 })
                .collect();
            Sample::new(ids, labels)
        })
        .collect()
}

#[test]
fn padded_padding_free_and_packed_batches_train_alike() {
    let device = Device::flex().autodiff();
    let config = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        target_modules: Some(ModuleSelector::Pattern("all-linear".into())),
        init_lora_weights: InitLoraWeights::Random,
        ..LoraConfig::default()
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/tiny-llama");
    let model =
        LlamaForCausalLM::load_hf(&dir, &LoraApplier::new(config, None, &device).unwrap()).unwrap();
    let samples = samples(model.config.vocab_size as u32);
    let refs: Vec<&Sample> = samples.iter().collect();
    let packed = pack(samples.clone(), 64);
    assert!(packed.len() < samples.len() && packed.iter().any(|s| s.seq_lengths.len() > 1));
    let packed_refs: Vec<&Sample> = packed.iter().collect();

    let run = |batch: &[&Sample], padding_free: bool| {
        let loss = batch_loss(&model, batch, 0, padding_free);
        let value = values(loss.clone())[0];
        let grads = loss.backward();
        let g: Vec<Vec<f32>> = model
            .linears()
            .iter()
            .flat_map(|(_, l)| {
                let a = l.adapter("default").unwrap();
                [&a.lora_a, &a.lora_b].map(|p| values(p.val().grad(&grads).unwrap()))
            })
            .collect();
        (value, g)
    };
    let (padded, g_padded) = run(&refs, false);
    for (what, (loss, g)) in [
        ("padding-free", run(&refs, true)),
        ("packed, padding-free", run(&packed_refs, true)),
    ] {
        assert!(
            padded.is_finite() && (loss - padded).abs() <= 1e-5 * padded.abs(),
            "{what}: {loss} vs padded {padded}"
        );
        for (x, y) in g.iter().zip(&g_padded) {
            let e = qlora_testenv::compare::rel_err(x, y, what);
            assert!(e < 1e-4, "{what}: gradients differ by {e:e}");
        }
    }
    // Packed but padded: the packed samples attend to each other (plain packing).
    let (contaminated, _) = run(&packed_refs, false);
    assert!((contaminated - padded).abs() > 1e-4 * padded.abs());
}
