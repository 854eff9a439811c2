//! Marks the tests that cannot run on this machine as ignored with the reason (here: no bf16
//! instructions for the bf16 kernels' tests): see `qlora-testenv`.
fn main() {
    qlora_testenv::emit();
}
