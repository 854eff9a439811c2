//! LoftQ initialisation (Li et al. 2023, "LoftQ: LoRA-Fine-Tuning-Aware Quantization for Large
//! Language Models"): the quantized base and the adapter are chosen together, so that
//! `Q + B·A` starts near the float weight `W` instead of `Q` alone. It alternates, `T` times:
//! quantize the residual `W − B·A` to 4-bit NF4, then take `B·A` as the best rank-`r`
//! approximation (truncated SVD) of `W − Q`.
//!
//! As PEFT 0.21's `loftq_init` computes it with `loftq_bits = 4`: bitsandbytes' NF4 without
//! double quantization, blocksize 64 (`Params4bit(compress_statistics=False)`, which
//! `qlora-nf4` matches bit for bit); `L = U_r·√S_r`, `R = √S_r·V_rᵀ`, `B = L`, `A = R`, with no
//! division by the LoRA scaling (so that the start is nearest `W` when `lora_alpha = r`, as the
//! LoftQ authors run it); the base keeps `Q` dequantized, as float, to be quantized again by the
//! model's own 4-bit config (NF4 values quantize to themselves up to double quantization).
//! The SVDs are [`crate::svd`]'s (f64, one thread, the same bits for every thread count).

use faer::Mat;
use qlora_nf4::{Blocksize, QuantConfig, QuantType, QuantizedTensor};

use crate::svd::{TopSingular, top_singular};

/// The adapter and the base LoftQ makes of one weight (row-major, PEFT's layouts).
#[derive(Debug, Clone)]
pub struct LoftqInit {
    /// `lora_A` `[r, in]`.
    pub lora_a: Vec<f32>,
    /// `lora_B` `[out, r]`.
    pub lora_b: Vec<f32>,
    /// The base: the last NF4 quantization of the residual, dequantized, `[out, in]`.
    pub base: Vec<f32>,
}

/// LoftQ of `weight` (`[out, in]`, row-major; `name` for errors) at rank `r` with `iters`
/// alternations.
///
/// # Errors
/// `iters` of 0, a rank above `min(out, in)`, a non-finite weight, or an SVD that does not
/// converge.
pub fn loftq(
    name: &str,
    weight: &[f32],
    [out, inp]: [usize; 2],
    r: usize,
    iters: usize,
) -> Result<LoftqInit, String> {
    assert_eq!(weight.len(), out * inp, "weight is not [out, in]");
    if iters == 0 {
        return Err("LoftQ needs loftq_iter ≥ 1".into());
    }
    if r == 0 || r > out.min(inp) {
        return Err(format!(
            "LoftQ needs 1 ≤ r ≤ min(out, in) = {}: r is {r}",
            out.min(inp)
        ));
    }
    if let Some(i) = weight.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "LoftQ needs a finite weight: element {i} is {}",
            weight[i]
        ));
    }
    let config = QuantConfig {
        quant_type: QuantType::Nf4,
        blocksize: Blocksize::new(64, name).map_err(|e| e.to_string())?,
        double_quant: false,
        absmax_rounding: Default::default(),
    };
    let mut residual = weight.to_vec();
    let (mut lora_a, mut lora_b, mut base) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..iters {
        base = QuantizedTensor::quantize(name, &residual, &[out, inp], config)
            .map_err(|e| e.to_string())?
            .dequantize_f32();
        let error = Mat::<f64>::from_fn(out, inp, |p, q| {
            (weight[p * inp + q] - base[p * inp + q]) as f64
        });
        let TopSingular {
            left,
            values,
            right,
        } = top_singular(&error, r, None, 0)?;
        let roots: Vec<f64> = values.iter().map(|s| s.sqrt()).collect();
        lora_b = (0..out * r)
            .map(|k| (left[(k / r, k % r)] * roots[k % r]) as f32)
            .collect();
        lora_a = (0..r * inp)
            .map(|k| (roots[k / inp] * right[(k % inp, k / inp)]) as f32)
            .collect();
        if i + 1 == iters {
            break;
        }
        // The next residual to quantize: W − B·A, from the rounded B and A.
        let b = Mat::<f64>::from_fn(out, r, |p, q| lora_b[p * r + q] as f64);
        let a = Mat::<f64>::from_fn(r, inp, |p, q| lora_a[p * inp + q] as f64);
        let ba = &b * &a;
        residual = (0..out * inp)
            .map(|k| weight[k] - ba[(k / inp, k % inp)] as f32)
            .collect();
    }
    Ok(LoftqInit {
        lora_a,
        lora_b,
        base,
    })
}
