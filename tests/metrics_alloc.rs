//! Counting a signature in /metrics allocates nothing once its (domain, selector) pair has
//! been seen (issue 18 item 2: no per-message allocation of metric labels). A counting
//! global allocator, per thread, sees every allocation the call makes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(|n| n.get())
}

#[test]
fn counting_a_known_signature_allocates_nothing() {
    let metrics = dkim_relay::metrics::global();
    // First sight of each label set may allocate (the names are kept).
    metrics.signature("alloc.example", "s2026", "rsa-sha256");
    metrics.signature("alloc.example", "s2026", "ed25519-sha256");
    let before = allocations();
    for _ in 0..1000 {
        metrics.signature("alloc.example", "s2026", "rsa-sha256");
        metrics.signature("alloc.example", "s2026", "ed25519-sha256");
    }
    let per_call = (allocations() - before) as f64 / 2000.0;
    assert_eq!(per_call, 0.0, "allocations per counted signature");
    metrics.refusal(550, "5.7.1");
    let before = allocations();
    metrics.refusal(550, "5.7.1");
    assert_eq!(allocations() - before, 0, "allocations per counted refusal");
}
