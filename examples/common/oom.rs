//! Out of host memory: Rust aborts the process when an allocation fails, so nothing after it can
//! print advice. This allocator wraps the system's and, when an allocation fails, writes a
//! message prepared in advance (what to change, which checkpoint is intact) to stderr first;
//! the writing allocates nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::OnceLock;

static ADVICE: OnceLock<String> = OnceLock::new();

/// Sets the message printed if an allocation fails (once; later calls are ignored).
pub fn set_advice(text: String) {
    let _ = ADVICE.set(text);
}

/// The system allocator, printing the advice set with [`set_advice`] when it runs out.
pub struct ReportingAlloc;

fn report() {
    if let Some(text) = ADVICE.get() {
        let _ = std::io::stderr().write_all(text.as_bytes());
    }
}

// SAFETY: every call is forwarded unchanged to `System`; only a null result adds a write to
// stderr, which does not allocate.
unsafe impl GlobalAlloc for ReportingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            report();
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            report();
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            report();
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}
