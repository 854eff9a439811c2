//! Kernel tests as generic functions over a CubeCL client, run on every runtime compiled in.
//! Results are compared with `qlora-nf4`, the reference: dequantize bit for bit, matmuls within
//! 1e-5 relative in f32.
//!
//! The wgpu runtime runs here on any Vulkan driver, including Mesa's software lavapipe
//! (`.ci/setup-wgpu-lavapipe.sh`). Where the build finds no Vulkan driver the wgpu tests are
//! listed as ignored with that reason (`qlora-testenv`), which `.ci/run` counts as a failure.
//! Each half-precision type is its own test on each runtime that has it (f16 on wgpu and
//! CUDA, bf16 on CUDA: WGSL has none); a runtime that lacks a type its test needs fails it.

use cubecl::prelude::*;
use qlora_kernels::conformance::*;

mod wgpu {
    use super::*;

    /// The wgpu client. The tests below are ignored (with the reason) where the build found no
    /// Vulkan driver (`qlora-testenv`); where one is installed, the device must come up.
    fn client() -> Client {
        match cubecl::Device::wgpu(Default::default()) {
            Ok(device) => device.client(),
            Err(e) => panic!(
                "a Vulkan driver is installed but the wgpu device did not come up: {e} \
                 (set QLORA_NO_WGPU=1 to list the wgpu tests as ignored instead)"
            ),
        }
    }

    #[test]
    #[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
    fn dequantize_is_bit_exact() {
        super::dequantize_is_bit_exact(&client());
    }

    #[test]
    #[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
    fn matmuls_match_the_reference() {
        super::matmuls_match_the_reference(&client());
    }

    #[test]
    #[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
    fn tiled_matmuls_match_the_reference() {
        super::tiled_matmuls_match_the_reference(&client());
    }

    // bf16 is not here: WGSL has no bf16 type, so CubeCL's wgpu runtime never offers it; the
    // bf16 cases run in the `cuda` module below.

    #[test]
    #[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
    fn f16_dequantize_rounds_to_nearest_even() {
        super::half_dequantize_rounds_to_nearest_even(&client(), Half::F16);
    }

    #[test]
    #[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
    fn f16_matmuls_within_1e2() {
        super::half_matmuls_within_1e2(&client(), Half::F16);
    }

    #[test]
    #[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
    fn gemv_matches_the_reference() {
        super::gemv_matches_the_reference(&client());
    }
}

/// The same tests on CUDA, built with `--features cuda` (on a machine where cubecl-cuda builds);
/// CUDA has bf16, so its cases run there.
#[cfg(feature = "cuda")]
mod cuda {
    use super::*;

    fn client() -> Client {
        match cubecl::Device::cuda(0) {
            Ok(device) => device.client(),
            Err(e) => panic!("built with the cuda feature but CUDA device 0 did not come up: {e}"),
        }
    }

    #[test]
    fn dequantize_is_bit_exact() {
        super::dequantize_is_bit_exact(&client());
    }

    #[test]
    fn matmuls_match_the_reference() {
        super::matmuls_match_the_reference(&client());
    }

    #[test]
    fn tiled_matmuls_match_the_reference() {
        super::tiled_matmuls_match_the_reference(&client());
    }

    #[test]
    fn gemv_matches_the_reference() {
        super::gemv_matches_the_reference(&client());
    }

    #[test]
    fn f16_dequantize_rounds_to_nearest_even() {
        super::half_dequantize_rounds_to_nearest_even(&client(), Half::F16);
    }

    #[test]
    fn f16_matmuls_within_1e2() {
        super::half_matmuls_within_1e2(&client(), Half::F16);
    }

    #[test]
    fn bf16_dequantize_rounds_to_nearest_even() {
        super::half_dequantize_rounds_to_nearest_even(&client(), Half::Bf16);
    }

    #[test]
    fn bf16_matmuls_within_1e2() {
        super::half_matmuls_within_1e2(&client(), Half::Bf16);
    }
}
