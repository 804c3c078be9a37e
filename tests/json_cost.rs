//! Calibration of `json_cost::estimate` against what serde_json really allocates.
//!
//! A counting global allocator records, on the test's own thread, the heap bytes live at
//! the peak of `serde_json::from_slice::<Value>` and once it returns, each allocation
//! rounded as glibc's malloc would ([`json_cost::heap`]), and a move on every `realloc`
//! (old and new buffers both live, the worst case). For every shape the estimate must be
//! an upper bound, and within twice the measured figure. It is its own test binary because
//! a `#[global_allocator]` replaces the allocator of the whole binary; the `unsafe` it
//! needs stays here, outside the crate (`#![forbid(unsafe_code)]` in lib.rs).

use ollama_gateway::json_cost::{self, heap};
use serde_json::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

fn add(bytes: i64) {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let live = LIVE.get() + bytes;
            LIVE.set(live);
            PEAK.set(PEAK.get().max(live));
        }
    });
}

fn chunk(size: usize) -> i64 {
    heap(size as u64) as i64
}

// SAFETY: every call goes straight to `System` with the caller's own arguments; the
// counters are plain thread-local cells that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            add(chunk(layout.size()));
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        add(-chunk(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        if !moved.is_null() {
            add(chunk(new_size));
            add(-chunk(layout.size()));
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What parsing `json` really took: (peak, final) heap bytes.
fn measure(json: &[u8], also_parse_arguments: bool) -> (u64, u64) {
    // Room for the parsed arguments, allocated before counting starts.
    let mut arguments: Vec<Value> = Vec::with_capacity(4096);
    LIVE.set(0);
    PEAK.set(0);
    COUNTING.set(true);
    let value: Value = serde_json::from_slice(json).expect("valid JSON");
    // What the chat translator does with tool-call arguments: parse them too.
    if also_parse_arguments {
        for call in value["messages"][0]["tool_calls"].as_array().unwrap() {
            let text = call["function"]["arguments"].as_str().unwrap();
            arguments.push(serde_json::from_str(text).unwrap());
        }
    }
    let held = LIVE.get();
    COUNTING.set(false);
    drop((value, arguments));
    (PEAK.get() as u64, held as u64)
}

fn repeat(item: &str, times: usize) -> String {
    let mut list = String::with_capacity(item.len() * times + 2);
    list.push('[');
    for i in 0..times {
        if i > 0 {
            list.push(',');
        }
        list.push_str(item);
    }
    list.push(']');
    list
}

fn shapes() -> Vec<(&'static str, String, bool)> {
    let tokens: Vec<String> =
        (0..16).map(|i| repeat(&format!("{}", 1000 + i * 37), 8192).replace(",", ",1")).collect();
    let message = r#"{"role":"user","content":"Tell me about the weather in Paris today, please."}"#;
    let call = r#"{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"city\":\"Paris\",\"days\":[1,2,3],\"units\":{\"t\":\"C\"}}"}}"#;
    let many_keys: Vec<String> = (0..100_000).map(|i| format!("\"key{i}\":{i}")).collect();
    let nested = format!("{}0{}", "[".repeat(126), "]".repeat(126));
    let nested_objects = format!("{}0{}", r#"{"a":"#.repeat(126), "}".repeat(126));
    vec![
        ("100k zeros", repeat("0", 100_000), false),
        ("2^18+1 zeros", repeat("0", (1 << 18) + 1), false),
        ("100k {}", repeat("{}", 100_000), false),
        ("100k {\"a\":1}", repeat(r#"{"a":1}"#, 100_000), false),
        ("20k messages", format!(r#"{{"model":"m","messages":{}}}"#, repeat(message, 20_000)), false),
        ("100k keys", format!("{{{}}}", many_keys.join(",")), false),
        ("1k × 126-deep arrays", repeat(&nested, 1000), false),
        ("1k × 126-deep objects", repeat(&nested_objects, 1000), false),
        ("4 MB plain string", format!(r#"{{"s":"{}"}}"#, "a".repeat(4 << 20)), false),
        ("4 MB escaped string", format!(r#"{{"s":"{}"}}"#, "ab\\n".repeat(1 << 20)), false),
        ("10k long floats", repeat("3.14159265358979323846264338327950288", 10_000), false),
        ("8192 tokens × 16", format!(r#"{{"model":"m","input":{}}}"#, repeat(&tokens.join(","), 1)), false),
        (
            "1k tool calls",
            format!(r#"{{"messages":[{{"role":"assistant","tool_calls":{}}}]}}"#, repeat(call, 1000)),
            true,
        ),
    ]
}

#[test]
fn the_estimate_bounds_what_serde_json_allocates_within_twice() {
    let mut failures = Vec::new();
    eprintln!(
        "{:<24} {:>10} {:>12} {:>12} {:>12} {:>12} {:>6}",
        "shape", "body", "real final", "real peak", "est tree", "est peak", "ratio"
    );
    for (name, json, arguments) in shapes() {
        let cost = json_cost::estimate(json.as_bytes()).expect("an estimate");
        let (peak, held) = measure(json.as_bytes(), arguments);
        let estimated_peak = cost.peak_tree() + cost.scratch;
        let ratio = estimated_peak as f64 / peak as f64;
        eprintln!(
            "{name:<24} {:>10} {held:>12} {peak:>12} {:>12} {estimated_peak:>12} {ratio:>6.2}",
            json.len(),
            cost.tree
        );
        if cost.tree < held || estimated_peak < peak || ratio > 2.0 {
            failures.push(format!(
                "{name}: held {held} (estimated {}), peak {peak} (estimated {estimated_peak})",
                cost.tree
            ));
        }
    }
    assert!(failures.is_empty(), "the estimate is off:\n{}", failures.join("\n"));
}
