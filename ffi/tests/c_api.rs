//! The C ABI as C and C++ programs see it: the committed header is what cbindgen generates,
//! the examples build with the system compilers against the built `libdgpo.so` and answer like
//! the Rust agent does (same tiny model, same corpus, greedy decoding), misuse comes back as
//! status codes, threads work as documented, valgrind finds no leaks or invalid accesses, and
//! the pkg-config install works.
//!
//! The shared library under test is the `libdgpo.so` that cargo wrote into `target/<profile>/deps/`
//! while building this test: cargo compiles the library target once with all its crate types
//! (cdylib, staticlib, rlib), so it is the same compilation this test binary links. It is copied
//! to a private folder first, because `deps/` also holds an unrelated `libdgpo.rlib` (the root
//! package's). When it is absent (or `DGPO_FFI_REBUILD=1`), the test builds it with
//! `cargo build -p dgpo-ffi`; that rebuilds every dependency under ffi's own feature set, which
//! costs minutes, hence the copy.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use dgpo_core::agent::{Agent, AgentConfig};
use dgpo_core::model::LoadOptions;
use dgpo_core::retrieve::{MemoryRetriever, Retriever};
use serde_json::Value;

const QUESTION: &str = "who wrote the iliad?";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `target/<profile>`: this executable lives in `target/<profile>/deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The directory holding a freshly built `libdgpo.so` (built once per test process).
fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = profile_dir();
        let target_dir = dir.parent().unwrap();
        let profile = dir.file_name().unwrap().to_str().unwrap();
        let built = dir.join("deps").join("libdgpo.so");
        if built.is_file() && std::env::var_os("DGPO_FFI_REBUILD").is_none() {
            let own = target_dir.join("c-api-lib").join(profile);
            std::fs::create_dir_all(&own).expect("create the c-api-lib folder");
            // The shared and the static library (ffi/install.sh installs both). Link (or copy)
            // to a temporary name and rename: parallel test processes may race here.
            for name in ["libdgpo.so", "libdgpo.a"] {
                let from = dir.join("deps").join(name);
                let tmp = own.join(format!("{name}.{}", std::process::id()));
                let _ = std::fs::remove_file(&tmp);
                if std::fs::hard_link(&from, &tmp).is_err() {
                    std::fs::copy(&from, &tmp).unwrap_or_else(|e| panic!("copy {from:?}: {e}"));
                }
                std::fs::rename(&tmp, own.join(name)).expect("rename into c-api-lib");
            }
            return own;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "dgpo-ffi", "--target-dir"])
            .arg(target_dir)
            .current_dir(repo_root());
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let status = cmd.status().expect("run cargo build -p dgpo-ffi");
        assert!(status.success(), "cargo build -p dgpo-ffi failed");
        assert!(dir.join("libdgpo.so").is_file(), "no libdgpo.so in {dir:?}");
        dir
    })
}

fn tool(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

fn check_output(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compile C (`cc`) or C++17 (`c++`) sources against the built library.
fn compile(cpp: bool, src: &Path, exe: &Path, extra: &[&str]) {
    compile_against(lib_dir(), cpp, src, exe, extra)
}

/// Compile against the `libdgpo.so` in `lib`.
fn compile_against(lib: &Path, cpp: bool, src: &Path, exe: &Path, extra: &[&str]) {
    let mut cmd = if cpp {
        let mut c = Command::new(tool("CXX", "c++"));
        c.arg("-std=c++17");
        c
    } else {
        let mut c = Command::new(tool("CC", "cc"));
        c.arg("-std=c11");
        c
    };
    cmd.args(["-Wall", "-Wextra", "-Werror", "-g", "-O1"])
        .arg("-I")
        .arg(repo_root().join("include"))
        .arg(src)
        .arg("-o")
        .arg(exe)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-ldgpo")
        .args(extra);
    let out = cmd.output().expect("run the C compiler");
    check_output(&format!("compiling {}", src.display()), &out);
}

/// A tiny model, a five-passage corpus and an agent config in a temporary directory.
struct Fixture {
    dir: tempfile::TempDir,
    model: PathBuf,
    corpus: PathBuf,
    config: PathBuf,
    agent_cfg: AgentConfig,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let model = repo_root().join("tests/fixtures/tiny-qwen2");
    let corpus = dir.path().join("corpus.jsonl");
    let rows = [
        (
            "1",
            "\"Iliad\"\nThe Iliad is an ancient Greek epic poem attributed to Homer.",
        ),
        (
            "2",
            "\"Homer\"\nHomer is the legendary author of the Iliad and the Odyssey.",
        ),
        (
            "3",
            "\"Odyssey\"\nThe Odyssey follows Odysseus on his journey home.",
        ),
        (
            "4",
            "\"Paris\"\nParis is the capital and largest city of France.",
        ),
        (
            "5",
            "\"Rust\"\nRust is a systems programming language focused on safety.",
        ),
    ];
    let text: String = rows
        .iter()
        .map(|(id, c)| serde_json::json!({"id": id, "contents": c}).to_string() + "\n")
        .collect();
    std::fs::write(&corpus, text).unwrap();
    // Short turns keep the run (and valgrind) fast; two turns give several steps.
    let agent_cfg = AgentConfig {
        max_turns: 2,
        topk: 2,
        max_turn_tokens: 8,
        ..AgentConfig::default()
    };
    let config = dir.path().join("config.json");
    let json = serde_json::json!({
        "model": model,
        "corpus": corpus,
        "max_turns": agent_cfg.max_turns,
        "topk": agent_cfg.topk,
        "max_turn_tokens": agent_cfg.max_turn_tokens,
        "threads": 1,
    });
    std::fs::write(&config, json.to_string()).unwrap();
    Fixture {
        dir,
        model,
        corpus,
        config,
        agent_cfg,
    }
}

/// `v` without its (run-dependent) `timings` objects.
fn without_timings(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("timings");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

/// What the Rust agent does with the same model, corpus and settings: the trace (without
/// timings) and the search hits for the question.
fn reference(f: &Fixture) -> (Value, Value) {
    let model = dgpo_core::model::load(&f.model, &LoadOptions::default()).unwrap();
    let retriever = MemoryRetriever::from_jsonl(&f.corpus).unwrap();
    let trace = Agent::new(model.as_ref(), &retriever, f.agent_cfg.clone())
        .run(QUESTION)
        .unwrap();
    let hits: Vec<_> = retriever
        .search(QUESTION, 2)
        .unwrap()
        .iter()
        .map(dgpo_core::trace::TraceDoc::from)
        .collect();
    // Through JSON text, as the C side sees it (f32 scores print shortest-round-trip).
    let json = |s: String| serde_json::from_str::<Value>(&s).unwrap();
    (
        without_timings(json(serde_json::to_string(&trace).unwrap())),
        json(serde_json::to_string(&hits).unwrap()),
    )
}

/// Lines `<label> <json>` of an example's output, in order.
fn records(stdout: &[u8]) -> Vec<(String, String)> {
    String::from_utf8(stdout.to_vec())
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap_or((l, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Check an example's output against the Rust agent: version, hits, one `step` line per trace
/// step (equal to it), and the trace itself.
fn check_example_output(stdout: &[u8], f: &Fixture) {
    let (want_trace, want_hits) = reference(f);
    let recs = records(stdout);
    assert_eq!(
        recs[0],
        ("version".into(), env!("CARGO_PKG_VERSION").into())
    );
    assert_eq!(recs[1].0, "hits");
    let hits: Value = serde_json::from_str(&recs[1].1).unwrap();
    assert_eq!(hits, want_hits);
    // Only the two passages that mention the Iliad match.
    let mut ids = [hits[0]["id"].as_str(), hits[1]["id"].as_str()];
    ids.sort();
    assert_eq!(ids, [Some("1"), Some("2")]);
    let (last, steps) = recs[2..].split_last().unwrap();
    assert_eq!(last.0, "trace");
    let trace = without_timings(serde_json::from_str(&last.1).unwrap());
    assert_eq!(trace, want_trace);
    let want_steps = want_trace["steps"].as_array().unwrap();
    assert!(
        want_steps.len() >= 2,
        "the fixture should give several steps"
    );
    assert_eq!(steps.len(), want_steps.len(), "one callback per step");
    for (i, (label, json)) in steps.iter().enumerate() {
        assert_eq!(label, "step");
        let step = without_timings(serde_json::from_str(json).unwrap());
        assert_eq!(&step, &want_steps[i], "step {i}");
    }
}

fn run(exe: &Path, args: &[&Path]) -> Output {
    Command::new(exe).args(args).output().unwrap()
}

#[test]
fn header_is_fresh() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let mut fresh = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen")
        .write(&mut fresh);
    let fresh = String::from_utf8(fresh).unwrap();
    let path = repo_root().join("include/dgpo.h");
    if std::env::var_os("DGPO_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "include/dgpo.h differs from what cbindgen generates from ffi/src/lib.rs; \
         regenerate it with `DGPO_BLESS=1 cargo test -p dgpo-ffi --test c_api header_is_fresh`"
    );
    // Every function is documented (ownership and thread-safety live in these comments).
    for name in [
        "dgpo_version",
        "dgpo_status_name",
        "dgpo_open",
        "dgpo_ask",
        "dgpo_search",
        "dgpo_last_error",
        "dgpo_string_free",
        "dgpo_close",
    ] {
        let lines: Vec<&str> = fresh.lines().collect();
        let decl = lines
            .iter()
            .position(|l| !l.trim_start().starts_with("//") && l.contains(&format!("{name}(")))
            .unwrap_or_else(|| panic!("{name} is not declared"));
        let doc_lines: Vec<&str> = lines[..decl]
            .iter()
            .rev()
            .take_while(|l| l.starts_with("//"))
            .copied()
            .collect();
        let doc = doc_lines.join("\n");
        assert!(
            doc.contains("Ownership") || doc.contains("own"),
            "{name}: {doc}"
        );
        assert!(
            doc.contains("hread-safe"),
            "{name} says nothing on threads: {doc}"
        );
    }
}

#[test]
fn c_example_answers_like_the_rust_agent() {
    let f = fixture();
    let exe = f.dir.path().join("ask");
    compile(false, &repo_root().join("examples/c/ask.c"), &exe, &[]);
    let out = run(&exe, &[&f.config, Path::new(QUESTION)]);
    check_output("examples/c/ask", &out);
    check_example_output(&out.stdout, &f);
}

#[test]
fn cpp_example_answers_like_the_rust_agent() {
    let f = fixture();
    let exe = f.dir.path().join("ask_cpp");
    compile(true, &repo_root().join("examples/cpp/ask.cpp"), &exe, &[]);
    let out = run(&exe, &[&f.config, Path::new(QUESTION)]);
    check_output("examples/cpp/ask", &out);
    check_example_output(&out.stdout, &f);
}

#[test]
fn examples_report_a_missing_model() {
    let f = fixture();
    let missing = f.dir.path().join("no-such-model.gguf");
    let bad = f.dir.path().join("bad.json");
    let json = serde_json::json!({"model": missing, "corpus": f.corpus});
    std::fs::write(&bad, json.to_string()).unwrap();
    for (cpp, src) in [(false, "examples/c/ask.c"), (true, "examples/cpp/ask.cpp")] {
        let exe = f.dir.path().join(if cpp { "ask_cpp" } else { "ask" });
        compile(cpp, &repo_root().join(src), &exe, &[]);
        let out = run(&exe, &[&bad, Path::new(QUESTION)]);
        assert_eq!(out.status.code(), Some(1), "{src}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("error i/o error: ") && err.contains(&*missing.to_string_lossy()),
            "{src}: {err}"
        );
    }
}

#[test]
fn c_misuse_returns_errors() {
    let f = fixture();
    let exe = f.dir.path().join("misuse");
    compile(false, &repo_root().join("ffi/tests/c/misuse.c"), &exe, &[]);
    let missing = f.dir.path().join("missing/nothing-here");
    let out = run(&exe, &[&f.model, &f.corpus, &missing]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    check_output("misuse", &out);
    // The program checks each case itself; make sure they all ran.
    let oks = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(oks, 26, "{stdout}");
    assert!(stdout.ends_with("0 failures\n"), "{stdout}");
}

#[test]
fn threads_share_and_split_handles() {
    let f = fixture();
    let exe = f.dir.path().join("threads");
    compile(
        false,
        &repo_root().join("ffi/tests/c/threads.c"),
        &exe,
        &["-pthread"],
    );
    let out = run(&exe, &[&f.config, Path::new(QUESTION)]);
    check_output("threads", &out);
    let (want, _) = reference(&f);
    let recs = records(&out.stdout);
    let count = |label: &str| recs.iter().filter(|(k, _)| k == label).count();
    assert_eq!(
        (count("single"), count("two-handles"), count("shared")),
        (1, 2, 4)
    );
    for (label, json) in recs.iter().filter(|(k, _)| k != "cancel") {
        let got = without_timings(serde_json::from_str(json).unwrap());
        assert_eq!(
            got, want,
            "{label}: concurrent runs answer like a single run"
        );
    }
    // Cancelled from another thread after the first step: the run stops at the next token.
    let cancel = &recs.iter().find(|(k, _)| k == "cancel").unwrap().1;
    assert_eq!(cancel, "cancelled 1");
}

/// Valgrind's memcheck on the C example: no definite leaks, no invalid reads or writes.
///
/// Valgrind (3.19 to 3.2x) cannot decode AVX-512 instructions, which `-C target-cpu=native`
/// (.cargo/config.toml) emits on CPUs that have them. `DGPO_VALGRIND_LIB_DIR` names a directory
/// with a `libdgpo.so` built for valgrind, e.g. by
/// `RUSTFLAGS="-C target-cpu=x86-64-v3" CARGO_TARGET_DIR=target/valgrind cargo build -p
/// dgpo-ffi --no-default-features`; without it the test uses the test build and skips with a
/// message when valgrind meets an instruction it does not know.
#[test]
fn c_example_under_valgrind() {
    let valgrind = tool("VALGRIND", "valgrind");
    if Command::new(&valgrind).arg("--version").output().is_err() {
        eprintln!("SKIP c_example_under_valgrind: valgrind is not installed");
        return;
    }
    let f = fixture();
    let exe = f.dir.path().join("ask");
    let lib = std::env::var_os("DGPO_VALGRIND_LIB_DIR").map(PathBuf::from);
    let lib = lib.as_deref().unwrap_or_else(|| lib_dir());
    compile_against(lib, false, &repo_root().join("examples/c/ask.c"), &exe, &[]);
    let log = f.dir.path().join("valgrind.log");
    let out = Command::new(&valgrind)
        .args([
            "--tool=memcheck",
            "--leak-check=full",
            "--show-leak-kinds=definite",
            "--errors-for-leak-kinds=definite",
            "--error-exitcode=99",
        ])
        .arg(format!("--log-file={}", log.display()))
        .arg(&exe)
        .arg(&f.config)
        .arg(QUESTION)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    let report = std::fs::read_to_string(&log).unwrap_or_default();
    if report.contains("unhandled instruction bytes") && report.contains("SIGILL") {
        eprintln!(
            "SKIP c_example_under_valgrind: valgrind cannot decode an instruction in {} \
             (AVX-512 from target-cpu=native?); set DGPO_VALGRIND_LIB_DIR to a build without it",
            lib.display()
        );
        return;
    }
    assert!(
        out.status.success(),
        "valgrind exited with {}:\n{report}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    check_example_output(&out.stdout, &f);
    assert!(
        report.contains("ERROR SUMMARY: 0 errors"),
        "memcheck errors:\n{report}"
    );
    assert!(!report.contains("Invalid read") && !report.contains("Invalid write"));
    let no_definite = report.contains("definitely lost: 0 bytes")
        || report.contains("All heap blocks were freed");
    assert!(no_definite, "definite leaks:\n{report}");
}

/// `ffi/install.sh` into a temporary prefix, then the C and C++ examples compiled with nothing
/// but `pkg-config --cflags --libs dgpo`, and run without `LD_LIBRARY_PATH`.
#[test]
fn pkg_config_install_builds_the_examples() {
    if Command::new("pkg-config")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP pkg_config_install_builds_the_examples: pkg-config is not installed");
        return;
    }
    let f = fixture();
    let prefix = f.dir.path().join("prefix");
    let out = Command::new("sh")
        .arg(repo_root().join("ffi/install.sh"))
        .arg(&prefix)
        .arg(lib_dir())
        .output()
        .unwrap();
    check_output("ffi/install.sh", &out);
    for p in [
        "lib/libdgpo.so",
        "lib/libdgpo.a",
        "include/dgpo.h",
        "include/dgpo.hpp",
        "lib/pkgconfig/dgpo.pc",
    ] {
        assert!(prefix.join(p).is_file(), "{p} not installed");
    }
    let pc_path = prefix.join("lib/pkgconfig");
    let version = Command::new("pkg-config")
        .args(["--modversion", "dgpo"])
        .env("PKG_CONFIG_PATH", &pc_path)
        .output()
        .unwrap();
    check_output("pkg-config --modversion", &version);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        env!("CARGO_PKG_VERSION")
    );
    for (compiler, src, exe) in [
        ("cc", "examples/c/ask.c", "ask_pc"),
        ("c++ -std=c++17", "examples/cpp/ask.cpp", "ask_cpp_pc"),
    ] {
        let exe = f.dir.path().join(exe);
        let script = format!(
            "{compiler} '{}' $(pkg-config --cflags --libs dgpo) -o '{}'",
            repo_root().join(src).display(),
            exe.display()
        );
        let out = Command::new("sh")
            .args(["-c", &script])
            .env("PKG_CONFIG_PATH", &pc_path)
            .output()
            .unwrap();
        check_output(&script, &out);
        let out = Command::new(&exe)
            .arg(&f.config)
            .arg(QUESTION)
            .env_remove("LD_LIBRARY_PATH")
            .output()
            .unwrap();
        check_output(src, &out);
        check_example_output(&out.stdout, &f);
    }
    // Static linking: libdgpo.a plus the system libraries of `Libs.private`.
    let exe = f.dir.path().join("ask_static");
    let script = format!(
        "cc '{}' $(pkg-config --cflags dgpo) '{}' \
         $(pkg-config --static --libs-only-l dgpo | sed 's/-ldgpo//') -o '{}'",
        repo_root().join("examples/c/ask.c").display(),
        prefix.join("lib/libdgpo.a").display(),
        exe.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .env("PKG_CONFIG_PATH", &pc_path)
        .output()
        .unwrap();
    check_output(&script, &out);
    let out = Command::new(&exe)
        .arg(&f.config)
        .arg(QUESTION)
        .output()
        .unwrap();
    check_output("static ask", &out);
    check_example_output(&out.stdout, &f);
}
