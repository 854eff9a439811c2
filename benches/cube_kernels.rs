//! The CubeCL NF4 kernels against the device's own limits, printed as a table (the body is
//! `examples/gpu_check/table.rs`, which the GPU check runs too): dequantize GB/s against the
//! measured copy bandwidth, the fused `nf4_linear` (kernel chosen by measuring) and each kernel
//! forced, against the dense matmul of the same shape in f32 and, where the device has it, bf16;
//! the decode GEMV against the dense GEMV.
//!
//! ```text
//! cargo bench --bench cube_kernels                      # wgpu (any Vulkan/Metal/DX12 device)
//! cargo bench --features cuda --bench cube_kernels      # CUDA device 0
//! cargo bench --bench cube_kernels -- --quick           # K = N = 1024 shapes (software drivers)
//! cargo bench --bench cube_kernels -- --json rows.json  # the rows as JSON too
//! ```

use burn::tensor::Device;

#[path = "../examples/gpu_check/table.rs"]
mod table;

fn device() -> Device {
    #[cfg(feature = "cuda")]
    {
        Device::cuda(0)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Device::wgpu(burn::tensor::DeviceKind::default())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let tables = table::run(&device(), quick);
    print!("{}", tables.markdown);
    if let Some(path) = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
    {
        std::fs::write(path, tables.json.to_string()).expect("--json: cannot write the file");
    }
}
