//! bnb-4bit folders quantized with blocksizes 32 and 128 (bitsandbytes 0.50.2's
//! `quantize_4bit`, saved as `Linear4bit` saves; `tests/fixtures/scripts/make_bnb_blocksizes.py`)
//! load with the blocksize of each tensor's `quant_state`, keep their codes, and give the logits
//! of the weights bnb dequantizes (dequantize-then-matmul in fp32).

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use qlora_llama::{LlamaForCausalLM, LoraModel};
use qlora_nf4::QuantConfig;
use qlora_nn::{AdaptedLinear, LoraApplier};
use safetensors::SafeTensors;

#[path = "support/logits.rs"]
mod logits;
use logits::{check, st_f32s, st_i64s, values};

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/bnb-blocksize")
        .join(p)
}

#[test]
fn bnb_folders_of_blocksize_32_and_128_load_with_their_blocksize() {
    let device = Device::flex();
    let bytes = std::fs::read(fixture("logits.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (ids, shape) = st_i64s(&st, "input_ids");
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, shape), &device);
    for blocksize in [32usize, 128] {
        // The applier asks for blocksize 64 (the QLoRA default): a 4-bit folder keeps its own.
        let applier = LoraApplier::base_only(Some(QuantConfig::qlora()), &device);
        let model = LlamaForCausalLM::load_hf(fixture(&format!("b{blocksize}")), &applier).unwrap();
        let mut quantized = 0;
        for (path, linear) in model.linears() {
            let AdaptedLinear::QLora(q) = linear else {
                panic!("{path} is not 4-bit");
            };
            assert_eq!(
                q.base.layout().blocksize,
                blocksize,
                "{path}: blocksize of its quant_state"
            );
            quantized += 1;
        }
        assert_eq!(quantized, 14, "every decoder linear stays 4-bit");
        let want = st_f32s(&st, &format!("logits_nf4_b{blocksize}"));
        check(
            &format!("blocksize {blocksize} logits"),
            values(model.forward(input.clone(), None)),
            &want,
            1e-5,
        );
    }
}
