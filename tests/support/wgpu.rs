//! The wgpu device for a test. A test that needs it carries
//! `#[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]`: the build
//! script (`qlora-testenv`) sets that cfg when the machine has no Vulkan driver, and `cargo test`
//! then lists the test as ignored with the reason. Where a driver is installed, the device must
//! come up: a probe that fails is a test failure that says so, never a silent pass.
//! Shared by the test targets through `#[path]`.
#![allow(dead_code)]

use burn::tensor::{Device, DeviceKind, Tensor};

/// The wgpu device of `kind`, checked with one upload and read-back.
///
/// # Panics
/// When the device does not come up although a Vulkan driver is installed (with the reason, and
/// how to mark the wgpu tests ignored instead: `QLORA_NO_WGPU=1`).
pub fn device(kind: DeviceKind) -> Device {
    let name = format!("{kind:?}");
    let probe = std::panic::catch_unwind(|| {
        let d = Device::wgpu(kind);
        let _ = Tensor::<1>::from_floats([1.0], &d).into_data();
        d
    });
    match probe {
        Ok(d) => d,
        Err(e) => {
            let why = e
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| e.downcast_ref::<&str>().copied())
                .unwrap_or("unknown error");
            panic!(
                "a Vulkan driver is installed but the wgpu device {name} did not come up: {why} \
                 (set QLORA_NO_WGPU=1 to list the wgpu tests as ignored instead)"
            )
        }
    }
}
