"""PyTorch's matmul (oneDNN underneath) in f32 and bf16 on the shapes of
crates/qlora-cpu-gemm/benches/bf16_gemm.rs, 2 threads (BENCH_THREADS), median of repeats.
Prints one markdown row per shape: M x N x K, f32 GFLOP/s, bf16 GFLOP/s.
Usage: python bf16_gemm.py [--quick]"""
import os, sys, time
import torch

torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
quick = "--quick" in sys.argv
shapes = [(1024, 1536, 576), (1024, 576, 1536), (1024, 576, 576), (1024, 192, 576),
          (2048, 2048, 2048), (4096, 4096, 4096)]


def median_seconds(f):
    f()
    t = time.perf_counter(); f(); once = max(time.perf_counter() - t, 1e-6)
    reps = max(3, min(200, int(0.3 / once)))
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[reps // 2]


print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
      f"oneDNN bf16 (mkldnn_bf16 supported: {torch.ops.mkldnn._is_mkldnn_bf16_supported()})")
print("| M × N × K | torch f32 GFLOP/s | torch bf16 GFLOP/s |")
for m, n, k in shapes:
    if quick and m * n * k > 2048 ** 3:
        continue
    flops = 2 * m * n * k
    row = []
    for dt in (torch.float32, torch.bfloat16):
        a = torch.randn(m, k, dtype=dt); b = torch.randn(k, n, dtype=dt)
        row.append(flops / median_seconds(lambda: torch.matmul(a, b)) / 1e9)
    print(f"| {m} × {n} × {k} | {row[0]:.0f} | {row[1]:.0f} |", flush=True)
