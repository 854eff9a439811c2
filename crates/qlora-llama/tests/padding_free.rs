//! Padding-free batches (TRL's `padding_free`) on every computed golden family, NF4 base with
//! its PEFT adapter: the loss of samples concatenated in one row equals the loss of the same
//! samples padded into a batch, with the same LoRA gradients; each sample's hidden states in
//! the row equal the sample run alone (positions restart, attention stays inside it, Mistral's
//! sliding window included); and the head sees only labelled rows without changing the loss.

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use qlora_llama::{LlamaForCausalLM, LoraModel, causal_lm_loss};
use qlora_nf4::QuantConfig;
use qlora_nn::{IGNORE_INDEX, LoraApplier, PaddingFreeBatch, PeftAdapter};

#[path = "support/logits.rs"]
mod logits;
use logits::{check, rel_err, values};

fn family(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden/families")
        .join(name)
}

/// Three samples of other lengths (two longer than Gemma 3's window of 6, one longer than
/// Mistral's of 8), with prompt labels masked as a chat sample's are.
fn samples(vocab: usize) -> Vec<(Vec<u32>, Vec<i64>)> {
    let mut x = 12345u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % vocab as u64) as u32
    };
    [(19, 6), (5, 2), (12, 0)]
        .into_iter()
        .map(|(n, prompt)| {
            let ids: Vec<u32> = (0..n).map(|_| next()).collect();
            let labels = ids
                .iter()
                .enumerate()
                .map(|(i, &t)| if i < prompt { IGNORE_INDEX } else { t as i64 })
                .collect();
            (ids, labels)
        })
        .collect()
}

fn padded(samples: &[(Vec<u32>, Vec<i64>)], device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let t = samples.iter().map(|(i, _)| i.len()).max().unwrap();
    let (mut ids, mut labels) = (Vec::new(), Vec::new());
    for (i, l) in samples {
        ids.extend(i.iter().map(|&x| x as i64));
        ids.extend(std::iter::repeat_n(0, t - i.len()));
        labels.extend(l);
        labels.extend(std::iter::repeat_n(IGNORE_INDEX, t - l.len()));
    }
    let b = samples.len();
    (
        Tensor::from_data(TensorData::new(ids, [b, t]), device),
        Tensor::from_data(TensorData::new(labels, [b, t]), device),
    )
}

fn equals_padded(name: &str) {
    let device = Device::flex().autodiff();
    let applier = LoraApplier::base_only(Some(QuantConfig::qlora()), &device);
    let mut model = LlamaForCausalLM::load_hf(family(name).join("model-nf4"), &applier).unwrap();
    let adapter = PeftAdapter::load(family(name).join("adapter"), &device).unwrap();
    model.load_adapter(&adapter, "default").unwrap();
    let samples = samples(model.config.vocab_size);
    let parts: Vec<(&[u32], &[i64])> = samples
        .iter()
        .map(|(i, l)| (i.as_slice(), l.as_slice()))
        .collect();
    let batch = PaddingFreeBatch::new(&parts, &device);
    assert_eq!(batch.position_ids[19..24], [0, 1, 2, 3, 4]);

    // The loss and the LoRA gradients, padded and padding-free.
    let (ids, labels) = padded(&samples, &device);
    let plain = causal_lm_loss(model.forward(ids.clone(), None), labels.clone());
    let fused = model.loss(ids, labels);
    let free = model.loss_padding_free(&batch);
    let (lp, lf, lr) = (
        values(plain.clone())[0],
        values(fused)[0],
        values(free.clone())[0],
    );
    assert!(
        lp.is_finite() && (lr - lp).abs() <= 1e-5 * lp.abs(),
        "{name}: {lr} vs padded {lp}"
    );
    assert!(
        (lf - lp).abs() <= 1e-5 * lp.abs(),
        "{name}: labelled-rows head {lf} vs {lp}"
    );
    let (gp, gr) = (plain.backward(), free.backward());
    let mut compared = 0;
    for (path, layer) in model.linears() {
        let a = layer.adapter("default").unwrap();
        for p in [&a.lora_a, &a.lora_b] {
            let (x, y) = (p.val().grad(&gp).unwrap(), p.val().grad(&gr).unwrap());
            let e = rel_err(&values(y), &values(x));
            assert!(e < 1e-4, "{name}: {path} gradient differs by {e:e}");
            compared += 1;
        }
    }
    assert!(compared > 0);

    // Each sample's hidden states in the row are its own, alone.
    let hidden = model.forward_hidden_padding_free(&batch);
    let mut at = 0;
    for (i, (ids, _)) in samples.iter().enumerate() {
        let n = ids.len();
        let alone = Tensor::<2, Int>::from_data(
            TensorData::new(ids.iter().map(|&x| x as i64).collect::<Vec<_>>(), [1, n]),
            &device,
        );
        check(
            &format!("{name} sample {i}"),
            values(hidden.clone().narrow(1, at, n)),
            &values(model.forward_hidden(alone, None)),
            1e-5,
        );
        at += n;
    }
}

#[test]
fn llama_padding_free_equals_padded() {
    equals_padded("llama");
}

#[test]
fn mistral_padding_free_equals_padded() {
    equals_padded("mistral");
}

#[test]
fn qwen2_padding_free_equals_padded() {
    equals_padded("qwen2");
}

#[test]
fn qwen3_padding_free_equals_padded() {
    equals_padded("qwen3");
}

#[test]
fn phi3_padding_free_equals_padded() {
    equals_padded("phi3");
}

/// Gemma 3: sliding (window 6, shorter than two of the samples) and full layers, each with its
/// RoPE.
#[test]
fn gemma3_padding_free_equals_padded() {
    equals_padded("gemma3");
}
