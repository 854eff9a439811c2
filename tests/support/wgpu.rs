//! The wgpu device for a test, or `None` (with a line saying the test is skipped) when this
//! machine has no adapter; with `QLORA_REQUIRE_WGPU=1` (as in CI) a missing adapter fails.
//! Shared by the test targets through `#[path]`.
#![allow(dead_code)]

use burn::tensor::{Device, DeviceKind, Tensor};

pub fn device(kind: DeviceKind) -> Option<Device> {
    let probe = std::panic::catch_unwind(|| {
        let d = Device::wgpu(kind);
        let _ = Tensor::<1>::from_floats([1.0], &d).into_data();
        d
    });
    match probe {
        Ok(d) => Some(d),
        Err(_) if std::env::var("QLORA_REQUIRE_WGPU").as_deref() != Ok("1") => {
            eprintln!("wgpu: no adapter; skipped (QLORA_REQUIRE_WGPU=1 fails instead)");
            None
        }
        Err(e) => std::panic::resume_unwind(e),
    }
}

/// True when the default wgpu device works (see [`device`]).
pub fn available() -> bool {
    device(DeviceKind::default()).is_some()
}
