//! What the example binaries share: the `--device` names, the default model, peak RSS.

pub mod adapter;
pub mod args;
pub mod bench_model;
pub mod checkpointing;
pub mod compute;
pub mod data;
pub mod mpi;
pub mod oom;
pub mod quant;
pub mod sample;

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use burn_qlora::llama::default_model;

/// The device named on the command line. `auto` is the first CUDA GPU when burn-qlora is built
/// with the `cuda` feature and one is present, else wgpu's default adapter when built with the
/// `wgpu` feature, else Flex (pure-Rust CPU). `cpu` is Flex too: the CubeCL CPU runtime is not
/// wired in (its build downloads LLVM).
pub fn device(name: &str) -> Result<Device, String> {
    use burn::tensor::DeviceKind;
    let index = |i: &str| {
        i.parse::<usize>()
            .map_err(|_| format!("device `{name}`: `{i}` is not a device index"))
    };
    let parts: Vec<&str> = name.split(':').collect();
    match parts.as_slice() {
        ["auto"] => Ok(auto_device()),
        ["flex"] | ["cpu"] => Ok(Device::flex()),
        ["wgpu"] | ["wgpu", "default"] => Ok(Device::wgpu(DeviceKind::DefaultDevice)),
        ["wgpu", "cpu"] => Ok(Device::wgpu(DeviceKind::Cpu)),
        ["wgpu", "discrete", i] => listed(name, Device::wgpu(DeviceKind::DiscreteGpu(index(i)?))),
        ["wgpu", "integrated", i] => {
            listed(name, Device::wgpu(DeviceKind::IntegratedGpu(index(i)?)))
        }
        ["wgpu", "virtual", i] => listed(name, Device::wgpu(DeviceKind::VirtualGpu(index(i)?))),
        ["cuda"] => cuda(0, name),
        ["cuda", i] => cuda(index(i)?, name),
        _ => Err(format!(
            "unknown device `{name}` (auto, flex, cpu, wgpu, wgpu:default, wgpu:cpu, \
             wgpu:discrete:N, wgpu:integrated:N, wgpu:virtual:N, cuda, cuda:N)"
        )),
    }
}

fn auto_device() -> Device {
    #[cfg(feature = "cuda")]
    if let Some(gpu) = Device::enumerate(burn::tensor::DeviceType::Cuda).first() {
        return gpu.clone();
    }
    if cfg!(feature = "wgpu") {
        Device::wgpu(burn::tensor::DeviceKind::default())
    } else {
        Device::flex()
    }
}

/// `device` if wgpu lists it (an adapter named by kind and index that this machine lacks would
/// fail at its first use, deep in a run): a named error otherwise.
fn listed(name: &str, device: Device) -> Result<Device, String> {
    let found = Device::enumerate(burn::tensor::DeviceType::Wgpu);
    if found.contains(&device) {
        return Ok(device);
    }
    Err(format!(
        "device `{name}` does not exist on this machine (wgpu lists {}: {})",
        found.len(),
        found
            .iter()
            .map(|d| format!("{d:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

#[cfg(feature = "cuda")]
fn cuda(index: usize, name: &str) -> Result<Device, String> {
    let found = Device::enumerate(burn::tensor::DeviceType::Cuda);
    if index < found.len() {
        Ok(Device::cuda(index))
    } else {
        Err(format!(
            "device `{name}` does not exist on this machine ({} CUDA device(s))",
            found.len()
        ))
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize, _name: &str) -> Result<Device, String> {
    Err("this build has no CUDA backend: build with `--features cuda`".into())
}

/// `--model` or, without one, the default model (SmolLM2-135M-Instruct, fetched on first use).
/// A `--model` that does not exist is an error naming it (not a missing file inside it).
pub fn model_path(arg: &Option<PathBuf>) -> Result<PathBuf, Box<dyn std::error::Error>> {
    Ok(match arg {
        Some(p) => {
            check_exists(p, "--model")?;
            p.clone()
        }
        None => default_model()?,
    })
}

/// `--data`, checked to exist, or the bundled chitchat conversations.
pub fn data_path(arg: &Option<PathBuf>) -> Result<PathBuf, String> {
    let path = arg
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/chitchat.jsonl"));
    check_exists(&path, "--data")?;
    Ok(path)
}

/// The process's peak resident set (VmHWM) in MiB; 0 where `/proc` does not tell.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs `main`, printing its error and exiting with status 1 on failure.
pub fn exit_on_error(result: Result<(), Box<dyn std::error::Error>>) {
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Whether `path` is a model file or folder that exists.
pub fn check_exists(path: &Path, what: &str) -> Result<(), String> {
    if path.exists() {
        Ok(())
    } else {
        Err(format!("{what} {}: no such file or folder", path.display()))
    }
}

/// Applies `--chat-template`: `chatml` (ChatML) or a Jinja template file replaces the model's
/// template; without the option the model's own is kept (and a model without one refuses chat
/// data and chat prompts by name, as transformers does).
pub fn apply_chat_template_option(
    tok: &mut burn_qlora::llama::LlamaTokenizer,
    choice: &Option<String>,
) -> Result<(), String> {
    use burn_qlora::llama::ChatTemplate;
    match choice.as_deref() {
        None => {}
        Some("chatml") => tok.set_chat_template(ChatTemplate::chatml()),
        Some(file) => {
            let path = Path::new(file);
            if !path.is_file() {
                return Err(format!(
                    "--chat-template {file}: neither `chatml` nor a template file"
                ));
            }
            let t = ChatTemplate::from_file(path).map_err(|e| format!("--chat-template: {e}"))?;
            tok.set_chat_template(t);
        }
    }
    Ok(())
}

/// The 4-bit settings of a bnb-4bit folder (`quantization_config` of its `config.json`):
/// `(bnb_4bit_quant_type, bnb_4bit_use_double_quant)`; `None` for a float folder or a file.
pub fn bnb_4bit_of(model: &Path) -> Result<Option<(String, bool)>, String> {
    let config = model.join("config.json");
    if !config.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&config).map_err(|e| format!("{}: {e}", config.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not valid JSON: {e}", config.display()))?;
    let Some(q) = v.get("quantization_config").filter(|q| !q.is_null()) else {
        return Ok(None);
    };
    let kind = q
        .get("bnb_4bit_quant_type")
        .and_then(|t| t.as_str())
        .unwrap_or("fp4")
        .to_string();
    let dq = q
        .get("bnb_4bit_use_double_quant")
        .and_then(|d| d.as_bool())
        .unwrap_or(false);
    Ok(Some((kind, dq)))
}
