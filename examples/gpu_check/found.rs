//! What the program found: the adapter Vulkan came up on, its memory, its subgroup sizes, the
//! half-precision types its kernels can use and whether it offers cooperative matrices (tensor
//! cores). The driver, the Vulkan loader and the ICD manifests are found by `benches/gpu/run.sh`
//! before this program starts, so that a missing piece is named even when wgpu cannot start.

use burn::tensor::{Device, DeviceType};
use cubecl::prelude::Client;
use qlora_kernels::conformance::Half;
use serde_json::{Value, json};

/// The adapter as the report gives it, and whether it is a software renderer.
pub struct Found {
    pub json: Value,
    pub markdown: String,
    pub software: bool,
}

/// Describes `device` (Burn's wgpu device) and `client` (CubeCL's client of the same adapter).
pub fn describe(device: &Device, client: &Client) -> Found {
    let props = client.properties();
    let name = props.identity.name.clone();
    let listed: Vec<String> = Device::enumerate(DeviceType::Wgpu)
        .iter()
        .map(|d| format!("{d:?}"))
        .collect();
    // lavapipe names itself "llvmpipe (LLVM ..)"; SwiftShader is the other software Vulkan.
    let lower = name.to_lowercase();
    let software = ["llvmpipe", "lavapipe", "swiftshader", "softpipe"]
        .iter()
        .any(|s| lower.contains(s));
    let cmma: Vec<String> = props
        .features
        .matmul
        .cmma
        .iter()
        .map(|c| format!("{c:?}"))
        .collect();
    let (f16_ok, bf16_ok) = (Half::F16.usable(client), Half::Bf16.usable(client));
    let memory_gib = props
        .memory
        .max_memory()
        .map(|b| b as f64 / (1u64 << 30) as f64);
    let hw = &props.hardware;
    let json = json!({
        "adapter": name, "device": format!("{device:?}"), "wgpu_devices": listed,
        "software_renderer": software,
        "memory_gib": memory_gib, "max_page_bytes": props.memory.max_page_size,
        "plane_size": [hw.plane_size_min, hw.plane_size_max],
        "max_shared_memory_bytes": hw.max_shared_memory_size,
        "streaming_multiprocessors": hw.num_streaming_multiprocessors,
        "f16": f16_ok, "bf16": bf16_ok, "cooperative_matrix_configs": cmma,
    });
    let yes = |b: bool| if b { "yes" } else { "no" };
    let markdown = format!(
        "| adapter | memory | subgroup | f16 | bf16 | cooperative matrices |\n\
         |---|---|---|---|---|---|\n\
         | {name} | {} | {}–{} | {} | {} | {} |\n",
        memory_gib.map_or("not reported".into(), |g| format!("{g:.1} GiB")),
        hw.plane_size_min,
        hw.plane_size_max,
        yes(f16_ok),
        yes(bf16_ok),
        if cmma.is_empty() {
            // cubecl-wgpu lists them from its SPIR-V (Vulkan) backend only.
            if cfg!(feature = "vulkan") {
                "none listed (SPIR-V build: the driver offers none)".to_string()
            } else {
                "none listed (this build compiles WGSL, which has none)".to_string()
            }
        } else {
            format!("{} configurations", cmma.len())
        }
    );
    Found {
        json,
        markdown,
        software,
    }
}
