//! Conformance checks of the kernels against `qlora-nf4`, the reference, as generic functions
//! over a CubeCL client: dequantize bit for bit (f32, and f16/bf16 rounded to nearest even), every
//! matmul kernel and the GEMV within 1e-5 relative in f32 (1e-2 with half-precision input and
//! output), on shapes that are multiples of no tile.
//!
//! They live in the library (feature `conformance`), not only in its tests, so that one body
//! serves both: the unit tests below run them on every runtime compiled in, and the GPU check
//! (`examples/gpu_check`) runs them on the GPU it is carried to, where a test harness is not.
//! Each panics with what differs, as a test assertion does.

use crate::{
    GEMV_MAX_M, Nf4MatmulLaunch, decode_double_quant_absmax, launch_dequantize, launch_nf4_gemv,
    launch_nf4_matmul, launch_nf4_matmul_tiled,
};
use cubecl::ir::features::TypeUsage;
use cubecl::ir::{ElemType, FloatKind};
use cubecl::prelude::*;
use cubecl::server::Handle;
use qlora_nf4::{Absmax, Blocksize, QuantConfig, QuantType, QuantizedTensor, bf16, f16};

fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut u = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        ((s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| ((-2.0 * u().ln()).sqrt() * (std::f64::consts::TAU * u()).cos()) as f32)
        .collect()
}

/// The weight uploaded as the kernels take it: packed words, f32 absmax (decoded on the device
/// when double-quantized), code table.
struct DeviceWeight {
    packed: Handle,
    absmax: Handle,
    code: Handle,
}

fn upload(client: &Client, q: &QuantizedTensor) -> DeviceWeight {
    let mut words = vec![0u32; q.packed.len().div_ceil(4)];
    bytemuck_copy(&q.packed, &mut words);
    let packed = client.create_from_slice(u32::as_bytes(&words));
    let absmax = match &q.absmax {
        Absmax::F32(a) => client.create_from_slice(f32::as_bytes(a)),
        Absmax::Double(d) => {
            let mut scales: Vec<u32> = vec![d.offset.to_bits()];
            scales.extend(d.nested_map.iter().map(|v| v.to_bits()));
            scales.extend(d.nested_absmax.iter().map(|v| v.to_bits()));
            let codes_start = scales.len();
            let mut codes = vec![0u32; d.codes.len().div_ceil(4)];
            bytemuck_copy(&d.codes, &mut codes);
            scales.extend(codes);
            let h = client.create_from_slice(u32::as_bytes(&scales));
            decode_double_quant_absmax(
                client,
                h,
                scales.len(),
                d.codes.len(),
                codes_start,
                d.nested_blocksize.get(),
            )
        }
    };
    let code = client.create_from_slice(f32::as_bytes(q.quant_type.dequant_table()));
    DeviceWeight {
        packed,
        absmax,
        code,
    }
}

fn bytemuck_copy(bytes: &[u8], words: &mut [u32]) {
    for (i, b) in bytes.iter().enumerate() {
        words[i / 4] |= (*b as u32) << ((i % 4) * 8);
    }
}

fn read_f32(client: &Client, h: Handle) -> Vec<f32> {
    f32::from_bytes(&client.read_one_unchecked(h)).to_vec()
}

const F32: ElemType = ElemType::Float(FloatKind::F32);
const F16: ElemType = ElemType::Float(FloatKind::F16);
const BF16: ElemType = ElemType::Float(FloatKind::BF16);

fn configs() -> Vec<QuantConfig> {
    vec![
        QuantConfig::qlora(),
        QuantConfig {
            quant_type: QuantType::Fp4,
            blocksize: Blocksize::new(128, "w").unwrap(),
            double_quant: false,
            absmax_rounding: Default::default(),
        },
        QuantConfig {
            quant_type: QuantType::Nf4,
            blocksize: Blocksize::new(32, "w").unwrap(),
            double_quant: true,
            absmax_rounding: Default::default(),
        },
    ]
}

/// Dequantize equals the reference bit for bit, double-quantized absmax included.
pub fn dequantize_is_bit_exact(client: &Client) {
    for (i, &(n, k)) in [(17usize, 64usize), (33, 100), (65, 37), (300, 4160)]
        .iter()
        .enumerate()
    {
        for cfg in configs() {
            let w = randn(n * k, i as u64);
            let q = QuantizedTensor::quantize("w", &w, &[n, k], cfg).unwrap();
            let dw = upload(client, &q);
            let out = client.empty(n * k * 4);
            launch_dequantize(
                client,
                dw.packed,
                dw.absmax,
                dw.code,
                n * k,
                cfg.blocksize.get(),
                out.clone(),
                F32,
            );
            let ours = read_f32(client, out);
            let want = q.dequantize_f32();
            let diff = ours
                .iter()
                .zip(&want)
                .position(|(a, b)| a.to_bits() != b.to_bits());
            assert!(
                diff.is_none(),
                "{n}x{k} {cfg:?}: first difference at {diff:?}"
            );
        }
    }
}

/// A half-precision type the kernels write: its CubeCL element type and its rounding from f32
/// (to nearest even, as PyTorch's `.to(dtype)`).
#[derive(Clone, Copy, Debug)]
pub enum Half {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl Half {
    fn elem(self) -> ElemType {
        match self {
            Half::F16 => F16,
            Half::Bf16 => BF16,
        }
    }

    fn round(self, v: f32) -> u16 {
        match self {
            Half::F16 => f16::from_f32(v).to_bits(),
            Half::Bf16 => bf16::from_f32(v).to_bits(),
        }
    }

    fn widen(self, b: u16) -> f32 {
        match self {
            Half::F16 => f16::from_bits(b).to_f32(),
            Half::Bf16 => bf16::from_bits(b).to_f32(),
        }
    }

    /// Panics, naming the runtime's lack, if `client` cannot use the type for `uses`: a test
    /// of this type on this runtime cannot run and must not pass.
    fn supported_uses(self, client: &Client) -> cubecl::ir::EnumSet<TypeUsage> {
        match self {
            Half::F16 => f16::supported_uses(client),
            Half::Bf16 => bf16::supported_uses(client),
        }
    }

    /// Whether `client` can use the type for everything the checks of it need (buffers,
    /// arithmetic, conversion).
    pub fn usable(self, client: &Client) -> bool {
        let usable = self.supported_uses(client);
        [
            TypeUsage::Buffer,
            TypeUsage::Arithmetic,
            TypeUsage::Conversion,
        ]
        .iter()
        .all(|u| usable.contains(*u))
    }

    fn require(self, client: &Client, uses: &[TypeUsage]) {
        let usable = self.supported_uses(client);
        let missing: Vec<_> = uses.iter().filter(|u| !usable.contains(**u)).collect();
        assert!(
            missing.is_empty(),
            "{self:?} cannot be tested on this runtime: it lacks {missing:?} for the type"
        );
    }
}

/// Half-precision dequantize output is the reference's f32 value rounded to nearest even, bit
/// for bit.
pub fn half_dequantize_rounds_to_nearest_even(client: &Client, half: Half) {
    half.require(client, &[TypeUsage::Buffer, TypeUsage::Conversion]);
    for (i, &(n, k)) in [(17usize, 64usize), (33, 100), (65, 37), (300, 4160)]
        .iter()
        .enumerate()
    {
        for cfg in configs() {
            let w = randn(n * k, i as u64);
            let q = QuantizedTensor::quantize("w", &w, &[n, k], cfg).unwrap();
            let want = q.dequantize_f32();
            let dw = upload(client, &q);
            let out = client.empty(n * k * 2);
            launch_dequantize(
                client,
                dw.packed,
                dw.absmax,
                dw.code,
                n * k,
                cfg.blocksize.get(),
                out.clone(),
                half.elem(),
            );
            let bytes = client.read_one_unchecked(out);
            let ours: &[u16] = u16::from_bytes(&bytes);
            let diff = ours
                .iter()
                .zip(&want)
                .position(|(a, b)| *a != half.round(*b));
            assert!(
                diff.is_none(),
                "{half:?} {n}x{k} {cfg:?}: first difference at {diff:?}"
            );
        }
    }
}

/// Forward and backward-input matmuls equal the reference within 1e-5 relative (f32).
pub fn matmuls_match_the_reference(client: &Client) {
    // Shapes that are multiples of no tile: K = 4096 + 64, M = 1, 3, 17, N odd.
    check_matmul(
        client,
        launch_nf4_matmul,
        &[(1, 33, 4160), (3, 17, 100), (17, 65, 37), (16, 16, 64)],
        50,
        "simple",
    );
}

/// A random `[n, k]` weight quantized with QLoRA's configuration (NF4 + DQ, blocksize 64) from
/// `seed`, and its dequantized values (the reference every kernel is held to).
fn qlora_weight(n: usize, k: usize, seed: u64) -> (QuantizedTensor, Vec<f32>) {
    let q =
        QuantizedTensor::quantize("w", &randn(n * k, seed), &[n, k], QuantConfig::qlora()).unwrap();
    let deq = q.dequantize_f32();
    (q, deq)
}

/// `launch` computes forward and backward-input within 1e-5 of the f64 reference (inputs drawn
/// from seeds `seed + i`, `seed + 10 + i`, `seed + 20 + i` for shape `i`).
fn check_matmul(
    client: &Client,
    launch: Nf4MatmulLaunch,
    shapes: &[(usize, usize, usize)],
    seed: u64,
    what: &str,
) {
    for (i, &(m, n, k)) in shapes.iter().enumerate() {
        let (q, deq) = qlora_weight(n, k, seed + i as u64);
        let dw = upload(client, &q);
        let x = randn(m * k, seed + 10 + i as u64);
        let y = client.empty(m * n * 4);
        let xh = client.create_from_slice(f32::as_bytes(&x));
        let (p, a, c) = (dw.packed.clone(), dw.absmax.clone(), dw.code.clone());
        launch(client, xh, p, a, c, y.clone(), (m, n, k), false, 64, F32);
        assert_close(
            &read_f32(client, y),
            &forward_reference(&x, &deq, m, n, k),
            &format!("{what}: y {m}x{n}x{k}"),
        );
        let dy = randn(m * n, seed + 20 + i as u64);
        let dx = client.empty(m * k * 4);
        let dyh = client.create_from_slice(f32::as_bytes(&dy));
        launch(
            client,
            dyh,
            dw.packed,
            dw.absmax,
            dw.code,
            dx.clone(),
            (m, k, n),
            true,
            64,
            F32,
        );
        let want: Vec<f64> = (0..m * k)
            .map(|j| {
                (0..n)
                    .map(|r| dy[j / k * n + r] as f64 * deq[r * k + j % k] as f64)
                    .sum()
            })
            .collect();
        assert_close(
            &read_f32(client, dx),
            &want,
            &format!("{what}: dx {m}x{n}x{k}"),
        );
    }
}

/// `y[m, n] = Σ_k x[m, k] · W[n, k]` in f64.
fn forward_reference(x: &[f32], deq: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    (0..m * n)
        .map(|j| {
            (0..k)
                .map(|kk| x[j / n * k + kk] as f64 * deq[j % n * k + kk] as f64)
                .sum()
        })
        .collect()
}

/// The register-blocked kernel on shapes that are multiples of no tile (64 × 64 outputs,
/// steps of 16), several cubes in both directions.
pub fn tiled_matmuls_match_the_reference(client: &Client) {
    check_matmul(
        client,
        launch_nf4_matmul_tiled,
        &[
            (1, 33, 4160),
            (3, 17, 100),
            (17, 65, 37),
            (130, 67, 4160),
            (64, 128, 64),
        ],
        150,
        "tiled",
    );
}

/// The decode GEMV for every row count it takes, aligned (`k % 8 == 0`) or not, and a row
/// count past one grid dimension is not needed: rows beyond 65,535 wrap onto a second one.
pub fn gemv_matches_the_reference(client: &Client) {
    for (i, &(n, k)) in [(33usize, 4160usize), (17, 100), (65, 37), (300, 64)]
        .iter()
        .enumerate()
    {
        let (q, deq) = qlora_weight(n, k, 80 + i as u64);
        for m in [1, 3, GEMV_MAX_M] {
            let dw = upload(client, &q);
            let x = randn(m * k, 90 + (i * 10 + m) as u64);
            let y = client.empty(m * n * 4);
            let xh = client.create_from_slice(f32::as_bytes(&x));
            launch_nf4_gemv(
                client,
                xh,
                dw.packed,
                dw.absmax,
                dw.code,
                y.clone(),
                (m, n, k),
                64,
                F32,
            );
            assert_close(
                &read_f32(client, y),
                &forward_reference(&x, &deq, m, n, k),
                &format!("gemv {m}x{n}x{k}"),
            );
        }
    }
}

/// With half-precision input and output (f32 accumulation), every matmul kernel is within 1e-2
/// of the f64 reference.
pub fn half_matmuls_within_1e2(client: &Client, half: Half) {
    half.require(client, &[TypeUsage::Arithmetic, TypeUsage::Buffer]);
    let (name, dtype) = (format!("{half:?}"), half.elem());
    let to = |v: f32| half.round(v);
    let from = |b: u16| half.widen(b);
    {
        for (i, &(m, n, k)) in [(3usize, 33usize, 4160usize), (17, 65, 100), (130, 67, 520)]
            .iter()
            .enumerate()
        {
            let (q, deq) = qlora_weight(n, k, 200 + i as u64);
            let xh: Vec<u16> = randn(m * k, 210 + i as u64).into_iter().map(to).collect();
            let x: Vec<f32> = xh.iter().map(|&b| from(b)).collect();
            let want = forward_reference(&x, &deq, m, n, k);
            let mut runs: Vec<(&str, Nf4MatmulLaunch)> = vec![
                ("tiled", launch_nf4_matmul_tiled),
                ("simple", launch_nf4_matmul),
            ];
            if m <= GEMV_MAX_M {
                runs.push(("gemv", |c, x, p, a, code, o, s, _, bs, d| {
                    launch_nf4_gemv(c, x, p, a, code, o, s, bs, d)
                }));
            }
            for (kernel, launch) in runs {
                let dw = upload(client, &q);
                let y = client.empty(m * n * 2);
                let xb = client.create_from_slice(u16::as_bytes(&xh));
                launch(
                    client,
                    xb,
                    dw.packed,
                    dw.absmax,
                    dw.code,
                    y.clone(),
                    (m, n, k),
                    false,
                    64,
                    dtype,
                );
                let bytes = client.read_one_unchecked(y);
                let ours: Vec<f32> = u16::from_bytes(&bytes).iter().map(|&b| from(b)).collect();
                assert_close_f64(&ours, &want, 1e-2, &format!("{name} {kernel} {m}x{n}x{k}"));
            }
        }
    }
}

use qlora_testenv::compare::assert_close_f64;

fn assert_close(ours: &[f32], want: &[f64], what: &str) {
    assert_close_f64(ours, want, 1e-5, what);
}

/// The checks as tests, on every runtime compiled in.
///
/// Kernel tests as generic functions over a CubeCL client, run on every runtime compiled in.
/// Results are compared with `qlora-nf4`, the reference: dequantize bit for bit, matmuls within
/// 1e-5 relative in f32.
///
/// The wgpu runtime runs here on any Vulkan driver, including Mesa's software lavapipe
/// (`.ci/setup-wgpu-lavapipe.sh`). Where the build finds no Vulkan driver the wgpu tests are
/// listed as ignored with that reason (`qlora-testenv`), which `.ci/run` counts as a failure.
/// Each half-precision type is its own test on each runtime that has it (f16 on wgpu and
/// CUDA, bf16 on CUDA: WGSL has none); a runtime that lacks a type its test needs fails it.
#[cfg(test)]
mod tests {
    mod wgpu {
        use super::super::*;

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
            crate::conformance::dequantize_is_bit_exact(&client());
        }

        #[test]
        #[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
        fn matmuls_match_the_reference() {
            crate::conformance::matmuls_match_the_reference(&client());
        }

        #[test]
        #[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
        fn tiled_matmuls_match_the_reference() {
            crate::conformance::tiled_matmuls_match_the_reference(&client());
        }

        // bf16 is not here: WGSL has no bf16 type, so CubeCL's wgpu runtime never offers it; the
        // bf16 cases run in the `cuda` module below.

        #[test]
        #[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
        fn f16_dequantize_rounds_to_nearest_even() {
            crate::conformance::half_dequantize_rounds_to_nearest_even(&client(), Half::F16);
        }

        #[test]
        #[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
        fn f16_matmuls_within_1e2() {
            crate::conformance::half_matmuls_within_1e2(&client(), Half::F16);
        }

        #[test]
        #[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
        fn gemv_matches_the_reference() {
            crate::conformance::gemv_matches_the_reference(&client());
        }
    }

    /// The same tests on CUDA, built with `--features cuda` (on a machine where cubecl-cuda builds);
    /// CUDA has bf16, so its cases run there.
    #[cfg(feature = "cuda")]
    mod cuda {
        use super::super::*;

        fn client() -> Client {
            match cubecl::Device::cuda(0) {
                Ok(device) => device.client(),
                Err(e) => {
                    panic!("built with the cuda feature but CUDA device 0 did not come up: {e}")
                }
            }
        }

        #[test]
        fn dequantize_is_bit_exact() {
            crate::conformance::dequantize_is_bit_exact(&client());
        }

        #[test]
        fn matmuls_match_the_reference() {
            crate::conformance::matmuls_match_the_reference(&client());
        }

        #[test]
        fn tiled_matmuls_match_the_reference() {
            crate::conformance::tiled_matmuls_match_the_reference(&client());
        }

        #[test]
        fn gemv_matches_the_reference() {
            crate::conformance::gemv_matches_the_reference(&client());
        }

        #[test]
        fn f16_dequantize_rounds_to_nearest_even() {
            crate::conformance::half_dequantize_rounds_to_nearest_even(&client(), Half::F16);
        }

        #[test]
        fn f16_matmuls_within_1e2() {
            crate::conformance::half_matmuls_within_1e2(&client(), Half::F16);
        }

        #[test]
        fn bf16_dequantize_rounds_to_nearest_even() {
            crate::conformance::half_dequantize_rounds_to_nearest_even(&client(), Half::Bf16);
        }

        #[test]
        fn bf16_matmuls_within_1e2() {
            crate::conformance::half_matmuls_within_1e2(&client(), Half::Bf16);
        }
    }
}
