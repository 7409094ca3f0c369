//! `train::keep_freed_memory` must stop training threads from faulting their tensor buffers back
//! in every step.
//!
//! A test inside libtest cannot check this: libtest's threads allocate before the test body
//! runs, so their malloc arenas exist and a worker may be handed one of them whatever the
//! `M_ARENA_MAX` setting. So this file is its own `main` (harness = false) and runs the
//! workload in fresh child processes, set up exactly as the `train` binary is: allocator
//! settings first, then threads. It also runs the workload with glibc's defaults and requires it
//! to fault there, so that the test shows the workload reproduces the problem it guards against.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod linux {
    use std::process::Command;

    /// Environment variable that turns this binary into a child running the workload.
    const CHILD: &str = "DGPO_ALLOCATOR_CHILD";

    /// Steps measured after the first (warm-up) step.
    const STEPS: i64 = 8;

    /// Minor page faults of the calling thread so far.
    fn thread_faults() -> i64 {
        // SAFETY: getrusage writes into the zeroed struct it is given.
        unsafe {
            let mut u: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut u), 0);
            u.ru_minflt
        }
    }

    /// One worker thread repeating a training step's allocation pattern: a logits-sized block
    /// (80 MiB, above the 64 MiB a glibc thread-arena heap can hold) and a dozen 8 MiB
    /// activations (96 MiB in all: more than one thread-arena heap), each written and freed.
    /// Returns the page faults of the steps after the first.
    fn workload() -> i64 {
        std::thread::spawn(|| {
            let step = || {
                let logits = vec![1u8; 80 << 20];
                let acts: Vec<Vec<u8>> = (0..12).map(|i| vec![i as u8 + 2; 8 << 20]).collect();
                std::hint::black_box((&logits, &acts));
            };
            step();
            let before = thread_faults();
            for _ in 0..STEPS {
                step();
            }
            thread_faults() - before
        })
        .join()
        .expect("the workload thread panicked")
    }

    /// Runs the workload in a fresh child process, with or without `keep_freed_memory`.
    fn faults_in_child(keep: bool) -> i64 {
        let exe = std::env::current_exe().expect("path of this test binary");
        let out = Command::new(exe)
            .env(CHILD, if keep { "keep" } else { "default" })
            .output()
            .expect("run the workload in a child process");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "workload child failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("child printed {stdout:?}, not a fault count: {e}"))
    }

    pub fn main() {
        if let Ok(mode) = std::env::var(CHILD) {
            // Count 4 KiB pages whatever the machine's transparent-huge-page setting: with THP
            // `always` an 80 MiB mmap faults in 2 MiB pages, 512x fewer, and the defaults'
            // faults would no longer show that the memory went back to the kernel.
            // SAFETY: prctl with PR_SET_THP_DISABLE only sets a flag of this process.
            let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
            assert_eq!(
                rc,
                0,
                "prctl(PR_SET_THP_DISABLE): {}",
                std::io::Error::last_os_error()
            );
            if mode == "keep" {
                train::keep_freed_memory();
            }
            println!("{}", workload());
            return;
        }
        // Each step writes 176 MiB = 45,056 pages. Measured on glibc 2.36 (Debian 12): 96,000
        // faults in 8 steps with the defaults (260,000 in a debug build), 82,000 with keep_freed_memory's settings but
        // without `M_ARENA_MAX` 1 (the worker's own arena sends the 80 MiB block to mmap), 0 with
        // all of them.
        let pages_per_step = (176i64 << 20) / 4096;
        let default = faults_in_child(false);
        let kept = faults_in_child(true);
        println!(
            "page faults in {STEPS} steps: glibc defaults {default}, keep_freed_memory {kept} \
             ({pages_per_step} pages written per step)"
        );
        assert!(
            default > STEPS * 5_000,
            "the workload should fault with glibc's defaults (it reproduces the problem), \
             got {default} faults"
        );
        assert!(
            kept < 2_000,
            "keep_freed_memory: {kept} page faults in {STEPS} steps of reused buffers \
             (the buffers went back to the kernel)"
        );
        println!("test a_worker_threads_freed_buffers_are_reused_without_page_faults ... ok");
    }
}

fn main() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    linux::main();
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    println!("allocator test: glibc only, skipped");
}
