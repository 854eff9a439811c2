//! The process-wide choice of how the host kernels multiply: in f32, or in bf16 on a tier.
//!
//! Like PyTorch's `torch.set_float32_matmul_precision` (oneDNN's `fpmath_mode`), this is a
//! setting of the process, not of a tensor: Burn Flex's tensors stay f32 between ops, and the
//! kernels that own their GEMMs (the NF4 linear, the fused head + cross-entropy) round their
//! operands to bf16 and accumulate in f32 when a bf16 tier is set. The default is f32, so the
//! bit-exact paths stay bit-exact unless a program opts in (`finetune --compute-dtype`).

use std::sync::atomic::{AtomicU8, Ordering};

use crate::Tier;

static TIER: AtomicU8 = AtomicU8::new(2);

fn index(t: Tier) -> u8 {
    Tier::ALL.iter().position(|&x| x == t).expect("a tier") as u8
}

/// Sets the tier the host kernels multiply on ([`Tier::F32`]: plain f32, the default).
///
/// # Panics
/// If the tier is not available on this machine (check [`Tier::available`] first).
pub fn set_matmul_tier(tier: Tier) {
    assert!(
        tier.available(),
        "set_matmul_tier: tier {tier} is not available on this machine"
    );
    TIER.store(index(tier), Ordering::Relaxed);
}

/// The tier set by [`set_matmul_tier`] ([`Tier::F32`] unless a program chose another).
pub fn matmul_tier() -> Tier {
    Tier::ALL[TIER.load(Ordering::Relaxed) as usize]
}
