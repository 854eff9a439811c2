//! `finetune --compute-dtype` (and `score` / `generate --dtype`): how the CPU's kernels multiply
//! (issues #38, #22).
//!
//! On Flex, `bf16` rounds the operands of the NF4 linears' products to bf16 and accumulates in
//! f32 on the CPU's bf16 hardware (AMX, else AVX512-BF16), as `bnb_4bit_compute_dtype=bfloat16`
//! does; activations between ops, norms, softmax and the loss stay f32. `auto` uses bf16 where
//! the CPU has AMX, which measured 3.3–4.5× our f32 GEMM (benches/README.md); our AVX512-BF16
//! kernel measured slower than f32 on those CPUs, so without AMX `auto` keeps f32. The rule is
//! fixed per machine, not timed at start-up, so that every run of a job (and its resume)
//! computes the same way.

use burn::tensor::{Device, DeviceType};
use burn_qlora::cpu_gemm::{Tier, set_matmul_tier};

/// The option's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ComputeDtype {
    /// bf16 on Flex where the CPU has AMX (measured faster than f32), else f32.
    Auto,
    /// f32 products everywhere.
    F32,
    /// bf16 operands, f32 accumulation (Flex: AMX or AVX512-BF16; an error without either).
    Bf16,
}

/// Sets the process-wide tier for `choice` on `device` and returns the line to print; `flag` is
/// the option's name in errors.
///
/// `QLORA_CPU_GEMM_TIER=amx|avx512bf16` picks the tier of an explicit `bf16` (to compare
/// tiers on one machine).
pub fn apply_compute_dtype(
    choice: ComputeDtype,
    device: &Device,
    flag: &str,
) -> Result<String, String> {
    let flex = Device::enumerate(DeviceType::Flex).contains(device);
    if !flex {
        return match choice {
            ComputeDtype::Bf16 => Err(format!(
                "{flag} bf16: only the CPU (flex) kernels compute in bf16 so far; the GPU path \
                 is f32 (issue #22)"
            )),
            _ => Ok("compute: f32 (the GPU path has no bf16 compute yet)".into()),
        };
    }
    let flags = Tier::cpu_flags().join(" ");
    let tier = match choice {
        ComputeDtype::F32 => Tier::F32,
        ComputeDtype::Auto if Tier::Amx.available() => Tier::Amx,
        ComputeDtype::Auto => Tier::F32,
        ComputeDtype::Bf16 => match std::env::var("QLORA_CPU_GEMM_TIER") {
            Ok(name) => {
                let t = Tier::from_name(&name)
                    .filter(|t| *t != Tier::F32)
                    .ok_or_else(|| format!("QLORA_CPU_GEMM_TIER={name}: not amx or avx512bf16"))?;
                if !t.available() {
                    return Err(format!(
                        "QLORA_CPU_GEMM_TIER={name}: this CPU does not have it (flags: {flags})"
                    ));
                }
                t
            }
            Err(_) => match Tier::detect() {
                Tier::F32 => {
                    return Err(format!(
                        "{flag} bf16: this CPU has neither AMX nor AVX512-BF16 \
                         (flags: {flags}); bf16 would be emulated and slower than f32: \
                         use {flag} f32"
                    ));
                }
                t => t,
            },
        },
    };
    set_matmul_tier(tier);
    Ok(match tier {
        Tier::F32 if choice == ComputeDtype::Auto => {
            format!("compute: f32 (auto: no bf16 tier measured faster on this CPU; flags: {flags})")
        }
        Tier::F32 => "compute: f32".into(),
        t => format!(
            "compute: bf16 operands, f32 accumulation, on {t} ({}; CPU flags: {flags})",
            if choice == ComputeDtype::Auto {
                "auto: AMX, measured faster than f32"
            } else {
                "chosen"
            }
        ),
    })
}
