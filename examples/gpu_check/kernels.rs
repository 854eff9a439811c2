//! Kernel correctness on the device: the conformance checks of `qlora-kernels` (the same
//! bodies its tests run, against `qlora-nf4`), each run on its own so that one failure does not
//! hide the others. A half-precision type the runtime lacks is reported as not available, never
//! as passed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use cubecl::prelude::Client;
use qlora_kernels::conformance::{
    Half, dequantize_is_bit_exact, gemv_matches_the_reference,
    half_dequantize_rounds_to_nearest_even, half_matmuls_within_1e2, matmuls_match_the_reference,
    tiled_matmuls_match_the_reference,
};
use serde_json::{Value, json};

/// The checks' results: JSON rows, markdown rows and how many failed.
pub struct Checks {
    pub json: Value,
    pub markdown: String,
    pub failed: usize,
}

/// Runs every check on `client`; `f16` / `bf16` say whether the runtime can use the type.
pub fn run(client: &Client, f16: bool, bf16: bool) -> Checks {
    type Check<'a> = Box<dyn Fn() + 'a>;
    let mut checks: Vec<(&str, Option<Check>)> = vec![
        (
            "dequantize f32, bit-exact",
            Some(Box::new(|| dequantize_is_bit_exact(client))),
        ),
        (
            "simple matmul f32 (fwd, dx), 1e-5",
            Some(Box::new(|| matmuls_match_the_reference(client))),
        ),
        (
            "tiled matmul f32 (fwd, dx), 1e-5",
            Some(Box::new(|| tiled_matmuls_match_the_reference(client))),
        ),
        (
            "GEMV f32, 1e-5",
            Some(Box::new(|| gemv_matches_the_reference(client))),
        ),
    ];
    for (half, usable, dq, mm) in [
        (
            Half::F16,
            f16,
            "dequantize f16, bit-exact",
            "matmuls f16 in/out, 1e-2",
        ),
        (
            Half::Bf16,
            bf16,
            "dequantize bf16, bit-exact",
            "matmuls bf16 in/out, 1e-2",
        ),
    ] {
        let run_dq: Check = Box::new(move || half_dequantize_rounds_to_nearest_even(client, half));
        let run_mm: Check = Box::new(move || half_matmuls_within_1e2(client, half));
        checks.push((dq, usable.then_some(run_dq)));
        checks.push((mm, usable.then_some(run_mm)));
    }
    let mut rows = Vec::new();
    let mut markdown = String::from("| check | result | s |\n|---|---|---|\n");
    let mut failed = 0;
    for (name, check) in checks {
        let Some(check) = check else {
            markdown += &format!("| {name} | not available on this runtime (not tested) | - |\n");
            rows.push(json!({"check": name, "result": "not available"}));
            continue;
        };
        let t = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(check));
        let secs = t.elapsed().as_secs_f64();
        let (result, detail) = match outcome {
            Ok(()) => ("passed", String::new()),
            Err(e) => {
                failed += 1;
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into());
                ("FAILED", msg)
            }
        };
        eprintln!("kernels: {name}: {result} ({secs:.1} s) {detail}");
        markdown += &format!("| {name} | {result} {detail} | {secs:.1} |\n");
        rows.push(json!({"check": name, "result": result, "detail": detail, "seconds": secs}));
    }
    Checks {
        json: Value::Array(rows),
        markdown,
        failed,
    }
}
