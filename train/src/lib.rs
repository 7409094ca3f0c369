//! The dgpo training engine: trainable Qwen2/Llama models over core's differentiable decoder,
//! losses (cross-entropy, full-vocabulary forward KL), AdamW with warmup and decay, and atomic,
//! resumable checkpoints.
//!
//! The `train` binary is a thin command-line layer over this library.

#![warn(missing_docs)]
pub mod checkpoint;
pub mod data;
pub mod demo;
pub mod evaluate;
pub mod loss;
pub mod model;
pub mod optim;
pub mod phases;
pub mod plot;
pub mod presets;
pub mod rl;
pub mod synth;
pub mod teacher_cache;
pub mod trainer;

pub use model::{Batch, ModelOptions, TrainModel};

/// Keep freed tensor buffers in the heap instead of returning them to the kernel. Call it
/// first thing in `main` of a program that trains (the `train` binary and its benches do).
///
/// candle allocates a fresh buffer for every intermediate tensor and frees it soon after.
/// glibc serves blocks above its (dynamic, at most 32 MiB) mmap threshold with `mmap`/`munmap`,
/// so each op of a training step faulted in freshly zeroed pages: on a teacher fine-tuning run
/// 7 of 20 s were kernel time. With the threshold pinned at 32 MiB and no trimming the same run
/// took 12 s (1 s kernel), for a larger but stable resident set. Blocks above 32 MiB (a 0.5B
/// model's logits, embedding gradients: 300-550 MB each) still went to `mmap`, and zeroing their
/// pages was a third of a Qwen2.5-0.5B update; so `mmap` is switched off for `malloc`
/// altogether: every block comes from the heap and is reused once freed.
///
/// That holds for the main arena only. Threads that allocate (the data-parallel slices of a
/// supervised step, the PPO update's micro-batches, parallel rollouts) get arenas of their own,
/// whose heaps glibc unmaps and shrinks when they empty, whatever the trim threshold: the
/// teacher preset's fine-tuning with two training threads ran at 110,000 page faults/s, a
/// quarter of its CPU time in the kernel, 33 updates/min. So every thread shares the main
/// arena (`M_ARENA_MAX` 1): 0 faults/s and 49 updates/min on the same run (2 cores). The
/// allocations are few and large (whole tensors), so the one arena lock is not contended.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn keep_freed_memory() {
    if std::env::var_os("DGPO_KEEP_FREED_MEMORY").is_some_and(|v| v == "0") {
        return;
    }
    // SAFETY: mallopt only changes allocator parameters; glibc serialises it with the arenas'
    // locks, and blocks already allocated keep being freed the way they were allocated.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// The process's peak resident memory so far, in MB (`VmHWM` of `/proc/self/status`; None
/// where that file does not exist). RL logs it after each phase of a step, so that a real
/// model's memory is read off a run rather than guessed.
pub fn peak_resident_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kb: f64 = kb.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

/// Return the freed heap memory that [`keep_freed_memory`] keeps to the kernel (e.g. before
/// handing the machine to another large process).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_freed_memory() {
    // SAFETY: malloc_trim only returns unused pages of the heap to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Return freed heap memory to the kernel (a no-op off glibc).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_freed_memory() {}

/// Keep freed tensor buffers in the heap (a no-op off glibc).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_memory() {}
