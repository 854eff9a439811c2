//! `LlamaConfig::init`: a model of any config's shape (grouped-query attention, biases, an
//! untied head) with transformers' init statistics, the same for a seed, other for another.

use burn::tensor::{Device, Int, Tensor, TensorData};
use qlora_llama::LlamaConfig;
use qlora_nf4::QuantConfig;
use qlora_nn::{AdaptedLinear, LoraApplier, LoraModel};

fn config() -> LlamaConfig {
    let v = serde_json::json!({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
        "head_dim": 16, "vocab_size": 50, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": false, "attention_bias": true
    });
    LlamaConfig::from_json_str(&v.to_string(), "config.json").unwrap()
}

fn logits(c: &LlamaConfig, seed: u64) -> Vec<f32> {
    let device = Device::flex();
    let model = c
        .init(&LoraApplier::base_only(None, &device), seed)
        .unwrap();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 7, 3, 49], [1, 4]), &device);
    model
        .forward(ids, None)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
}

#[test]
fn random_init_has_the_configs_shapes_and_transformers_statistics() {
    let c = config();
    let device = Device::flex();
    let model = c.init(&LoraApplier::base_only(None, &device), 3).unwrap();
    let linears = model.linears();
    let weight = |path: &str| match linears.iter().find(|(p, _)| p == path).unwrap().1 {
        AdaptedLinear::Frozen(l) => l.clone(),
        _ => panic!("{path} is not a frozen float linear"),
    };
    // Burn's Linear holds [in, out]: k_proj maps 64 to 2 kv heads of 16.
    let k = weight("model.layers.1.self_attn.k_proj");
    assert_eq!(k.weight.dims(), [64, 32]);
    assert_eq!(
        weight("model.layers.0.self_attn.o_proj").weight.dims(),
        [128, 64]
    );
    let bias = k
        .bias
        .expect("attention_bias")
        .val()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert!(bias.iter().all(|&b| b == 0.0));
    let w = weight("model.layers.0.mlp.down_proj").weight.val();
    let values = w.into_data().try_to_vec::<f32>().unwrap();
    let n = values.len() as f64;
    let mean = values.iter().map(|&x| x as f64).sum::<f64>() / n;
    let std = (values
        .iter()
        .map(|&x| (x as f64 - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    assert!(
        mean.abs() < 0.002 && (std - 0.02).abs() < 0.001,
        "mean {mean}, std {std}"
    );
    assert!(model.lm_head.is_some(), "an untied head of its own");
}

#[test]
fn random_init_is_the_same_for_a_seed_and_other_for_another() {
    let c = config();
    let a = logits(&c, 1);
    assert_eq!(a, logits(&c, 1));
    assert_ne!(a, logits(&c, 2));
    assert!(a.iter().all(|x| x.is_finite()));
}

#[test]
fn random_init_goes_through_the_applier_as_a_checkpoint_does() {
    let device = Device::flex();
    let model = config()
        .init(
            &LoraApplier::base_only(Some(QuantConfig::qlora()), &device),
            1,
        )
        .unwrap();
    assert!(
        model
            .linears()
            .iter()
            .all(|(_, l)| matches!(l, AdaptedLinear::QLora(_))),
        "every block linear NF4"
    );
}
