//! Marks the tests that cannot run on this machine (no Vulkan driver, default model not cached)
//! as ignored with the reason: see `qlora-testenv`.
fn main() {
    qlora_testenv::emit();
}
