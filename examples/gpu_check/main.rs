//! The GPU check (issue #25): one program, built here for wgpu (Vulkan), carried to a GPU
//! machine and run once by `benches/gpu/run.sh`, that turns a short loan of a GPU into the GPU
//! figures the project lacks. It says what it found (adapter, memory, half types, cooperative
//! matrices), then:
//! 1. kernel correctness against `qlora-nf4` (the conformance checks of `qlora-kernels`);
//! 2. the `cube_kernels` table: dequantize GB/s against copy bandwidth, the chosen
//!    `nf4_linear` and each kernel against the dense matmul, the GEMV against the dense GEMV;
//! 3. QLoRA training steps: the default model's shape at 8 × 512 and the LLaMA-7B-shaped stack
//!    at 2 and 4 layers (per-layer memory and the 32-layer extrapolation), with and without
//!    block checkpointing.
//!
//! Results land in `--out` (default `$OUT`) as `gpu_check.json` and `gpu_check.md` (the rows
//! `benches/README.md` takes), written again after every section so that a run cut short keeps
//! what it measured. `--dry-run` takes small sizes and accepts a software adapter (lavapipe),
//! so that CI runs the whole program before a GPU is lent; without it a software adapter is an
//! error (exit 2): the check is for a GPU.
//!
//! ```text
//! cargo run --release --example gpu_check -- --dry-run --out /tmp/gpu-check
//! ```

mod found;
mod kernels;
mod table;
mod train;

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{Device, DeviceKind};
use burn_qlora::nn::GradientCheckpointing;
use clap::Parser;
use serde_json::{Value, json};

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
    #[arg(long, value_delimiter = ',', default_value = "kernels,table,train")]
    sections: Vec<String>,
}

/// The report, written whole after every section.
struct Report {
    dir: PathBuf,
    json: serde_json::Map<String, Value>,
    markdown: String,
}

impl Report {
    fn add(&mut self, key: &str, title: &str, json: Value, markdown: &str) {
        self.json.insert(key.into(), json);
        self.markdown += &format!("\n## {title}\n\n{markdown}");
        let write = |name: &str, text: String| {
            let path = self.dir.join(name);
            if let Err(e) = std::fs::write(&path, text) {
                eprintln!("gpu_check: cannot write {}: {e}", path.display());
            }
        };
        write(
            "gpu_check.json",
            serde_json::to_string_pretty(&Value::Object(self.json.clone())).unwrap_or_default(),
        );
        write("gpu_check.md", self.markdown.clone());
    }
}

fn main() {
    let args = Args::parse();
    std::process::exit(run(args));
}

fn run(args: Args) -> i32 {
    for s in &args.sections {
        if !["kernels", "table", "train"].contains(&s.as_str()) {
            eprintln!("--sections: `{s}` is not kernels, table or train");
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
    let mut report = Report {
        dir,
        json: serde_json::Map::new(),
        markdown: format!(
            "# GPU check{}\n",
            if args.dry_run {
                " (dry run: small sizes)"
            } else {
                ""
            }
        ),
    };
    let client = match cubecl::Device::wgpu(Default::default()) {
        Ok(d) => d.client(),
        Err(e) => {
            eprintln!(
                "gpu_check: wgpu found no adapter ({e}): no Vulkan driver (ICD) reached the \
                 loader; benches/gpu/run.sh lists what it found"
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
    report.add("found", "Found", found.json, &found.markdown);
    if software && !args.dry_run {
        eprintln!(
            "gpu_check: wgpu's adapter is a software renderer, not a GPU: the NVIDIA Vulkan \
             driver (ICD) is missing or was not picked (see run.sh's lines above); use \
             --dry-run to check the program itself on it"
        );
        return 2;
    }
    let mut failed = 0;
    let section = |name: &str| args.sections.iter().any(|s| s == name);
    if section("kernels") {
        let checks = kernels::run(&client, f16, bf16);
        failed += checks.failed;
        report.add(
            "kernels",
            "Kernel correctness against qlora-nf4",
            checks.json,
            &checks.markdown,
        );
    }
    if section("table") {
        let t = table::run(&device, args.dry_run);
        report.add("cube_kernels", "cube_kernels", t.json, &t.markdown);
    }
    if section("train") {
        let (rows, md, bad) = train_section(&device.clone().autodiff(), args.dry_run);
        failed += bad;
        report.add("train", "QLoRA training steps", rows, &md);
    }
    let secs = started.elapsed().as_secs_f64();
    report.add(
        "summary",
        "Summary",
        json!({"seconds": secs, "failed": failed}),
        &format!("{failed} failure(s), {secs:.0} s\n"),
    );
    eprintln!(
        "gpu_check: {failed} failure(s) in {secs:.0} s; results in {}",
        report.dir.display()
    );
    i32::from(failed > 0)
}

/// The training cases (small ones in a dry run), their rows, and how many did not train (a
/// non-finite loss).
fn train_section(device: &Device, dry_run: bool) -> (Value, String, usize) {
    let (warmup, steps) = if dry_run { (1, 2) } else { (2, 5) };
    let shrink = |mut c: train::Case| {
        if dry_run {
            (c.hidden, c.ffn, c.heads, c.kv_heads, c.vocab, c.seq) = (128, 344, 4, 4, 512, 64);
            c.batch = c.batch.min(2);
        }
        c
    };
    let mut cases = vec![shrink(train::smollm2(8, 512))];
    if dry_run {
        cases[0].layers = 2;
    }
    for ckpt in [GradientCheckpointing::Off, GradientCheckpointing::Block] {
        for layers in [2, 4] {
            cases.push(shrink(train::Case {
                checkpointing: ckpt,
                ..train::llama7b(layers, 512)
            }));
        }
    }
    let mut rows = Vec::new();
    let mut md = String::from(train::HEADER);
    let mut bad = 0;
    for case in &cases {
        eprintln!("train: {case:?}");
        let r = train::run(device, case, warmup, steps);
        eprintln!("train: {r}");
        if r["finite"] != Value::Bool(true) {
            bad += 1;
        }
        md += &train::row(&r);
        rows.push(r);
    }
    // Per layer: the 4-layer stack's peak less the 2-layer one's, halved.
    for ckpt in ["Off", "Block"] {
        let peak = |layers: u64| {
            rows.iter()
                .find(|r| {
                    r["case"] == "LLaMA-7B-shaped stack"
                        && r["layers"] == layers
                        && r["grad_checkpointing"] == ckpt
                })
                .and_then(|r| r["peak_in_use_mib"].as_f64())
        };
        if let (Some(two), Some(four)) = (peak(2), peak(4)) {
            let per_layer = (four - two) / 2.0;
            md += &format!(
                "\nLLaMA-7B-shaped stack, checkpointing {ckpt}: {per_layer:.1} MiB per layer; \
                 32 layers ≈ {:.0} MiB\n",
                two + 30.0 * per_layer
            );
            rows.push(
                json!({"per_layer_mib": per_layer, "grad_checkpointing": ckpt,
                             "extrapolated_32_layers_mib": two + 30.0 * per_layer}),
            );
        }
    }
    (Value::Array(rows), md, bad)
}
