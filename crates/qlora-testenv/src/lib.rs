//! What a test needs that a machine may lack, found when the test targets are built, so that a
//! test which cannot run here is reported by `cargo test` as `ignored` with its reason instead of
//! passing without having run.
//!
//! A package's `build.rs` calls [`emit`]; its tests then carry
//! `#[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: ...")]` or the same with
//! `qlora_no_default_model`. Every reason starts with `cannot run here:` so that `.ci/run` can
//! count them (and fails if there is any: CI installs what these tests need).
//!
//! - `qlora_no_vulkan`: no Vulkan driver manifest (ICD) is installed, so wgpu has no adapter.
//!   `QLORA_REQUIRE_WGPU=1` turns that into a build error; `QLORA_NO_WGPU=1` sets it on purpose.
//!   A driver that is installed but gives no adapter is not guessed at here: the tests then fail
//!   at run time, saying so.
//! - `qlora_no_default_model`: the default model is not in the cache and `QLORA_FETCH_MODEL` is
//!   not set (with it, the tests fetch the model first).
//! - `qlora_no_cpu_bf16`: the CPU has neither AVX512-BF16 nor AMX, so there is no bf16 kernel
//!   to test. Its reason starts `not on this CPU:` (not `cannot run here:`): CI cannot install
//!   hardware, and the f32 path those tests compare against is tested everywhere regardless.

pub mod compare;
pub mod random;

use std::path::{Path, PathBuf};

/// The cfg names this crate may set, for `cargo::rustc-check-cfg`.
pub const CFGS: [&str; 3] = [
    "qlora_no_vulkan",
    "qlora_no_default_model",
    "qlora_no_cpu_bf16",
];

/// Whether this CPU has a bf16 product instruction: AVX512-BF16, or AMX-BF16 with tiles
/// (CPUID leaf 7, EDX bits 22 and 24). Whether Linux grants the AMX tile state is checked at
/// run time by `qlora-cpu-gemm`; a CPU with AMX has AVX512-BF16 too.
pub fn cpu_has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512bf16") {
            return true;
        }
        if std::arch::x86_64::__cpuid(0).eax >= 7 {
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            return edx & (1 << 22) != 0 && edx & (1 << 24) != 0;
        }
        false
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The cache folder: `$QLORA_CACHE`, else `$HOME/.cache/burn-qlora`. The same rule as
/// `qlora_llama::cache_dir` (its tests check that the two agree): a build script cannot depend
/// on `qlora-llama` without building Burn first, so the two lines live twice.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("QLORA_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("burn-qlora")
}

/// Where the default model lives once fetched (the same as `qlora_llama::default_model_path`).
pub fn default_model_path() -> PathBuf {
    cache_dir()
        .join("models")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The folders the Vulkan loader reads driver manifests from, in the loader's order:
/// `VK_DRIVER_FILES` / `VK_ICD_FILENAMES` (files or folders) when set, else `vulkan/icd.d` under
/// `$XDG_CONFIG_DIRS`, `/etc`, `$XDG_DATA_DIRS` (default `/usr/local/share:/usr/share`) and
/// `$HOME/.local/share`.
pub fn vulkan_manifest_places() -> Vec<PathBuf> {
    let list = |var: &str| -> Vec<PathBuf> {
        std::env::var_os(var)
            .map(|v| std::env::split_paths(&v).collect())
            .unwrap_or_default()
    };
    let explicit: Vec<PathBuf> = ["VK_DRIVER_FILES", "VK_ICD_FILENAMES"]
        .iter()
        .flat_map(|v| list(v))
        .collect();
    if !explicit.is_empty() {
        return explicit;
    }
    let mut roots = list("XDG_CONFIG_DIRS");
    roots.push(PathBuf::from("/etc/xdg"));
    roots.push(PathBuf::from("/etc"));
    let data = list("XDG_DATA_DIRS");
    if data.is_empty() {
        roots.push(PathBuf::from("/usr/local/share"));
        roots.push(PathBuf::from("/usr/share"));
    } else {
        roots.extend(data);
    }
    if let Some(home) = std::env::var_os("HOME") {
        roots.push(PathBuf::from(home).join(".local/share"));
    }
    roots.into_iter().map(|r| r.join("vulkan/icd.d")).collect()
}

/// The Vulkan driver manifests found (`*.json` files).
pub fn vulkan_manifests() -> Vec<PathBuf> {
    let is_manifest = |p: &Path| p.extension().is_some_and(|e| e == "json") && p.is_file();
    let mut found = Vec::new();
    for place in vulkan_manifest_places() {
        if is_manifest(&place) {
            found.push(place);
        } else if let Ok(rd) = std::fs::read_dir(&place) {
            found.extend(rd.flatten().map(|e| e.path()).filter(|p| is_manifest(p)));
        }
    }
    found.sort();
    found
}

fn flag(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// For a `build.rs`: declares the cfgs, sets those whose need is missing, and tells cargo what to
/// watch so that fetching the model or changing the variables above rebuilds the tests.
///
/// # Panics
/// With `QLORA_REQUIRE_WGPU=1` and no Vulkan driver (the build fails with the reason).
pub fn emit() {
    for cfg in CFGS {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    for var in [
        "QLORA_REQUIRE_WGPU",
        "QLORA_NO_WGPU",
        "QLORA_FETCH_MODEL",
        "QLORA_CACHE",
        "HOME",
        "VK_DRIVER_FILES",
        "VK_ICD_FILENAMES",
        "XDG_CONFIG_DIRS",
        "XDG_DATA_DIRS",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    // Only folders that exist are watched: cargo reruns a script whose watched path is missing
    // at every build, which would rebuild every test target each time. A driver installed into a
    // new folder is seen on the next build with QLORA_REQUIRE_WGPU changed (CI sets it).
    for place in vulkan_manifest_places().iter().filter(|p| p.exists()) {
        println!("cargo::rerun-if-changed={}", place.display());
    }
    let manifests = vulkan_manifests();
    if flag("QLORA_NO_WGPU") || manifests.is_empty() {
        assert!(
            !flag("QLORA_REQUIRE_WGPU"),
            "QLORA_REQUIRE_WGPU=1, but {}; install one (`sudo sh .ci/setup-wgpu-lavapipe.sh` installs \
             Mesa's software driver)",
            if flag("QLORA_NO_WGPU") {
                "QLORA_NO_WGPU=1 is set too".to_string()
            } else {
                format!(
                    "no Vulkan driver manifest was found (looked in {})",
                    vulkan_manifest_places()
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
        println!("cargo::rustc-cfg=qlora_no_vulkan");
    }
    // The models folder is made if missing, so that it can be watched: the default model
    // fetched later (by `finetune`, say) rebuilds the tests that need it.
    let model = default_model_path();
    let models = model.parent().expect("models folder");
    if std::fs::create_dir_all(models).is_ok() {
        println!("cargo::rerun-if-changed={}", models.display());
    }
    if std::env::var_os("QLORA_FETCH_MODEL").is_none() && !model.is_file() {
        println!("cargo::rustc-cfg=qlora_no_default_model");
    }
    if !cpu_has_bf16() {
        println!("cargo::rustc-cfg=qlora_no_cpu_bf16");
    }
}
