//! The GPU check (issue #25): one program, built here for wgpu (Vulkan), carried to a GPU
//! machine and run once by `benches/gpu/run.sh`, that turns a short loan of a GPU into the GPU
//! figures the project lacks. It says what it found (adapter, memory, half types, cooperative
//! matrices), then:
//! 1. kernel correctness against `qlora-nf4` (the conformance checks of `qlora-kernels`);
//! 2. the `cube_kernels` table: dequantize GB/s against copy bandwidth, the chosen
//!    `nf4_linear` and each kernel against the dense matmul, the GEMV against the dense GEMV;
//! 3. QLoRA training steps: the default model's shape at 8 × 512 and the LLaMA-7B-shaped stack
//!    at 2 and 4 layers (per-layer memory and the 32-layer extrapolation), with and without
//!    block checkpointing;
//! 4. a short fine-tune of the bundled data with the library's `Trainer` (random-init model of
//!    the default shape): the held-out loss falls, and a checkpoint resumed takes the same
//!    steps.
//!
//! Results land in `--out` (default `$OUT`) as `gpu_check.json` and `gpu_check.md` (the rows
//! `benches/README.md` takes), written again after every section and every training case, so
//! that a run cut short keeps what it measured; past `--deadline-s` the remaining parts are
//! skipped and said so. A part that panics (out of device memory, a lost device) is a failure
//! of that part, and the others still run. `--dry-run` takes small sizes and accepts a software adapter (lavapipe),
//! so that CI runs the whole program before a GPU is lent; without it a software adapter is an
//! error (exit 2): the check is for a GPU.
//!
//! ```text
//! cargo run --release --example gpu_check -- --dry-run --out gpu-check-out
//! ```

#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;
mod finetune;
mod found;
mod kernels;
mod table;
mod train;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{Device, DeviceKind};
use burn_qlora::nn::GradientCheckpointing;
use clap::Parser;
use serde_json::{Value, json};

use common::bench_model::{LLAMA7B, SMOLLM2, Shape};

#[derive(Parser, Debug)]
#[command(about = "Everything the project measures on a GPU, in one short run (issue #25)")]
struct Args {
    /// Where the results go (default: $OUT, else ./gpu-check-out).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Small sizes, a software adapter accepted (CI's run on lavapipe).
    #[arg(long)]
    dry_run: bool,
    /// The sections to run, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kernels,table,train,finetune"
    )]
    sections: Vec<String>,
    /// Seconds after which the parts not yet started are skipped (run.sh's timeout is 30 s
    /// later).
    #[arg(long, default_value_t = 450)]
    deadline_s: u64,
    /// The tokenized bundled data the fine-tune trains on (written by `--prepare-samples`).
    #[arg(long, default_value = "benches/gpu/kit/chitchat-samples.json")]
    samples: PathBuf,
    /// Tokenize `--data` with the cached default model's tokenizer into this file, and stop
    /// (`benches/gpu/build.sh` does this for the kit).
    #[arg(long)]
    prepare_samples: Option<PathBuf>,
    /// The data `--prepare-samples` reads.
    #[arg(long, default_value = "data/chitchat.jsonl")]
    data: PathBuf,
}

/// The report: its sections in order, written whole whenever one is set.
struct Report {
    dir: PathBuf,
    title: String,
    sections: Vec<(String, String, Value, String)>,
}

impl Report {
    /// Sets section `key` (replacing it if set before) and writes both files.
    fn set(&mut self, key: &str, title: &str, json: Value, markdown: String) {
        let entry = (key.to_string(), title.to_string(), json, markdown);
        match self.sections.iter_mut().find(|s| s.0 == key) {
            Some(s) => *s = entry,
            None => self.sections.push(entry),
        }
        let mut md = self.title.clone();
        let mut all = serde_json::Map::new();
        for (key, title, json, markdown) in &self.sections {
            md += &format!("\n## {title}\n\n{markdown}");
            all.insert(key.clone(), json.clone());
        }
        for (name, text) in [
            (
                "gpu_check.json",
                serde_json::to_string_pretty(&Value::Object(all)).unwrap_or_default(),
            ),
            ("gpu_check.md", md),
        ] {
            let path = self.dir.join(name);
            if let Err(e) = std::fs::write(&path, text) {
                eprintln!("gpu_check: cannot write {}: {e}", path.display());
            }
        }
    }
}

/// `f()`, or the panic's message.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into())
    })
}

fn main() {
    let args = Args::parse();
    std::process::exit(run(args));
}

fn run(args: Args) -> i32 {
    if let Some(out) = &args.prepare_samples {
        return match finetune::prepare(&args.data, out) {
            Ok(n) => {
                eprintln!(
                    "gpu_check: {n} samples of {} in {}",
                    args.data.display(),
                    out.display()
                );
                0
            }
            Err(e) => {
                eprintln!("gpu_check --prepare-samples: {e}");
                1
            }
        };
    }
    const SECTIONS: [&str; 4] = ["kernels", "table", "train", "finetune"];
    for s in &args.sections {
        if !SECTIONS.contains(&s.as_str()) {
            eprintln!("--sections: `{s}` is not one of {}", SECTIONS.join(", "));
            return 2;
        }
    }
    let dir = args
        .out
        .clone()
        .or_else(|| std::env::var_os("OUT").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("gpu-check-out"));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("--out {}: cannot create it: {e}", dir.display());
        return 2;
    }
    let started = Instant::now();
    let in_time = || started.elapsed().as_secs() < args.deadline_s;
    let mut report = Report {
        dir,
        title: format!(
            "# GPU check{}\n",
            if args.dry_run {
                " (dry run: small sizes)"
            } else {
                ""
            }
        ),
        sections: Vec::new(),
    };
    // Vulkan by name: on the GPU machine wgpu must reach the NVIDIA driver through Vulkan, not
    // settle on another API. Burn's wgpu device below takes the same default adapter, and its
    // automatic choice tries Vulkan first.
    let client = match cubecl::Device::vulkan(Default::default()) {
        Ok(d) => d.client(),
        Err(e) => {
            eprintln!(
                "gpu_check: Vulkan has no adapter ({e}): no Vulkan driver (ICD) reached the \
                 loader; benches/gpu/run.sh's lines above say what it found"
            );
            return 2;
        }
    };
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    let found = found::describe(&device, &client);
    eprintln!("gpu_check: found {}", found.json);
    let software = found.software;
    let (f16, bf16) = (
        found.json["f16"].as_bool() == Some(true),
        found.json["bf16"].as_bool() == Some(true),
    );
    report.set("found", "Found", found.json, found.markdown);
    if software && !args.dry_run {
        eprintln!(
            "gpu_check: Vulkan's adapter is a software renderer, not a GPU: the NVIDIA Vulkan \
             driver (ICD) is missing or was not picked (see run.sh's lines above); use \
             --dry-run to check the program itself on it"
        );
        return 2;
    }
    let mut failed = 0;
    let mut skipped = Vec::new();
    let section = |name: &str| args.sections.iter().any(|s| s == name);
    if section("kernels") {
        let checks = kernels::run(&client, f16, bf16);
        failed += checks.failed;
        let title = "Kernel correctness against qlora-nf4";
        report.set("kernels", title, checks.json, checks.markdown);
    }
    if section("table") && in_time() {
        match guarded(|| table::run(&device, args.dry_run)) {
            Ok(t) => report.set("cube_kernels", "cube_kernels", t.json, t.markdown),
            Err(e) => {
                failed += 1;
                report.set(
                    "cube_kernels",
                    "cube_kernels",
                    json!({"error": e}),
                    format!("FAILED: {e}\n"),
                );
            }
        }
    } else if section("table") {
        skipped.push("table");
    }
    if section("train") {
        failed += train_section(
            &mut report,
            &device.clone().autodiff(),
            args.dry_run,
            &in_time,
        );
    }
    if section("finetune") && in_time() {
        let work = report.dir.join("finetune-work");
        let title = "A short fine-tune, checkpointed and resumed";
        let ad = device.clone().autodiff();
        match guarded(|| finetune::run(&ad, &args.samples, &work, args.dry_run)) {
            Ok((json, md, bad)) => {
                failed += usize::from(bad);
                report.set("finetune", title, json, md);
            }
            Err(e) => {
                failed += 1;
                report.set(
                    "finetune",
                    title,
                    json!({"error": e}),
                    format!("FAILED: {e}\n"),
                );
            }
        }
    } else if section("finetune") {
        skipped.push("finetune");
    }
    let secs = started.elapsed().as_secs_f64();
    let skipped_line = if skipped.is_empty() {
        String::new()
    } else {
        format!(
            "; skipped past the {} s deadline: {}",
            args.deadline_s,
            skipped.join(", ")
        )
    };
    report.set(
        "summary",
        "Summary",
        json!({"seconds": secs, "failed": failed, "skipped": skipped}),
        format!("{failed} failure(s), {secs:.0} s{skipped_line}\n"),
    );
    eprintln!(
        "gpu_check: {failed} failure(s) in {secs:.0} s{skipped_line}; results in {}",
        report.dir.display()
    );
    i32::from(failed > 0)
}

/// The training cases (small ones in a dry run), set in the report after each; returns how
/// many failed (a panic or a non-finite loss).
fn train_section(
    report: &mut Report,
    device: &Device,
    dry_run: bool,
    in_time: &dyn Fn() -> bool,
) -> usize {
    let (warmup, steps) = if dry_run { (1, 2) } else { (2, 5) };
    let small = |shape: Shape| Shape {
        hidden: 128,
        ffn: 344,
        heads: 4,
        kv_heads: 4,
        vocab: 512,
        ..shape
    };
    let (smollm2, llama7b, seq) = if dry_run {
        (
            Shape {
                layers: 2,
                ..small(SMOLLM2)
            },
            small(LLAMA7B),
            64,
        )
    } else {
        (SMOLLM2, LLAMA7B, 512)
    };
    let mut cases = vec![train::Case {
        name: "default model (SmolLM2-135M shape)",
        shape: smollm2,
        batch: if dry_run { 2 } else { 8 },
        seq,
        checkpointing: GradientCheckpointing::Off,
    }];
    for checkpointing in [GradientCheckpointing::Off, GradientCheckpointing::Block] {
        for layers in [2, 4] {
            cases.push(train::Case {
                name: "LLaMA-7B-shaped stack",
                shape: Shape { layers, ..llama7b },
                batch: 1,
                seq,
                checkpointing,
            });
        }
    }
    let title = "QLoRA training steps";
    let mut rows = Vec::new();
    let mut md = String::from(train::HEADER);
    let mut failed = 0;
    for case in &cases {
        if !in_time() {
            md += &format!(
                "| {} | {} | skipped: past the deadline |\n",
                case.name, case.shape.layers
            );
            continue;
        }
        eprintln!("train: {case:?}");
        match guarded(|| train::run(device, case, warmup, steps)) {
            Ok(r) => {
                eprintln!("train: {r}");
                if r["finite"] != Value::Bool(true) {
                    failed += 1;
                }
                md += &train::row(&r);
                rows.push(r);
            }
            Err(e) => {
                failed += 1;
                md += &format!("| {} | {} | FAILED: {e} |\n", case.name, case.shape.layers);
                rows.push(json!({"case": case.name, "layers": case.shape.layers, "error": e}));
            }
        }
        report.set("train", title, Value::Array(rows.clone()), md.clone());
    }
    // Per layer: the 4-layer stack's figure less the 2-layer one's, halved.
    for ckpt in ["Off", "Block"] {
        let probed = |layers: u64| {
            rows.iter()
                .find(|r| {
                    r["case"] == "LLaMA-7B-shaped stack"
                        && r["layers"] == layers
                        && r["grad_checkpointing"] == ckpt
                })
                .and_then(|r| r["in_use_after_pass_mib"].as_f64())
        };
        if let (Some(two), Some(four)) = (probed(2), probed(4)) {
            let per_layer = (four - two) / 2.0;
            md += &format!(
                "\nLLaMA-7B-shaped stack, checkpointing {ckpt}: {per_layer:.1} MiB per layer \
                 (most in use after a pass); 32 layers ≈ {:.0} MiB\n",
                two + 30.0 * per_layer
            );
            rows.push(
                json!({"per_layer_mib": per_layer, "grad_checkpointing": ckpt,
                             "extrapolated_32_layers_mib": two + 30.0 * per_layer}),
            );
        }
    }
    report.set("train", title, Value::Array(rows), md);
    failed
}
