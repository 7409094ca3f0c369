//! `edge serve` end to end: the real binary on loopback, real HTTP over TCP, the tiny real
//! model and a corpus written here. References are computed in-process with `dgpo_core` (the
//! same retriever, agent loop and generation the server must reproduce).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dgpo_core::agent::{Agent, AgentConfig, encode_prompt};
use dgpo_core::chat::Message;
use dgpo_core::generate::{GenerateOptions, generate};
use dgpo_core::model::{LanguageModel, LoadOptions};
use dgpo_core::retrieve::{MemoryRetriever, Retriever};
use dgpo_core::sampling::{Sampler, SamplingParams};
use serde_json::{Value, json};

const CORPUS: &str = r#"{"id": "0", "contents": "\"Paris\"\nParis is the capital and largest city of France."}
{"id": "1", "contents": "\"Berlin\"\nBerlin is the capital of Germany."}
{"id": "2", "contents": "\"Lyon\"\nLyon is a city in France, known for its food."}
{"id": "3", "contents": "\"Rome\"\nRome is the capital of Italy, on the Tiber."}
{"id": "4", "title": "Madrid", "text": "Madrid is the capital and largest city of Spain."}
"#;

const KEY: &str = "test-key-0123456789";
/// A question long enough to keep the tiny model busy: 4 turns of up to 500 tokens fill its
/// 2048-token context (about 1.5 s in a debug build), since its random weights never answer.
const LONG_AGENT: &str =
    r#"{"question": "what is the capital of france", "max_turns": 4, "max_turn_tokens": 500"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn tiny_model() -> PathBuf {
    repo().join("tests/fixtures/tiny-qwen2")
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client (std only), so that the tests see exactly the bytes on the wire.

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A `Transfer-Encoding: chunked` body decoder.
struct Chunked<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or("");
            self.left = usize::from_str_radix(size, 16).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("chunk {line:?}"))
            })?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left);
        let got = self.inner.read(&mut buf[..n])?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= got;
        if self.left == 0 {
            let mut crlf = [0u8; 2];
            self.inner.read_exact(&mut crlf)?;
        }
        Ok(got)
    }
}

fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.set_write_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    Ok(s)
}

fn read_head(r: &mut impl BufRead) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("status line {line:?}"),
            )
        })?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok((status, headers))
}

fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let s = send(addr, method, path, headers, body)?;
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r)?;
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        Chunked {
            inner: r,
            left: 0,
            done: false,
        }
        .read_to_end(&mut resp.body)?;
    } else if let Some(n) = resp.header("content-length").and_then(|v| v.parse().ok()) {
        resp.body = vec![0; n];
        r.read_exact(&mut resp.body)?;
    } else {
        r.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

/// An open Server-Sent Events response.
struct Sse {
    status: u16,
    headers: Vec<(String, String)>,
    lines: BufReader<Chunked<BufReader<TcpStream>>>,
}

impl Sse {
    fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Sse {
        let s = send(addr, "POST", path, headers, body.as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        let (status, headers) = read_head(&mut r).unwrap();
        Sse {
            status,
            headers,
            lines: BufReader::new(Chunked {
                inner: r,
                left: 0,
                done: false,
            }),
        }
    }

    /// The next `(event, data)`; `event` is empty for bare `data:` messages.
    fn next(&mut self) -> Option<(String, String)> {
        let (mut event, mut data) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            if self.lines.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                if !data.is_empty() || !event.is_empty() {
                    return Some((event, data));
                }
                continue;
            }
            if let Some(v) = l.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = l.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server under test.

struct Server {
    child: Child,
    addr: SocketAddr,
    key: Option<String>,
    dir: tempfile::TempDir,
}

fn corpus_file(dir: &Path) -> PathBuf {
    let p = dir.join("corpus.jsonl");
    std::fs::write(&p, CORPUS).unwrap();
    p
}

/// Start `edge serve` and read the `listening on ADDR` line (not yet waiting for readiness).
fn spawn(corpus: &Path, extra: &[&str], env_key: Option<&str>) -> (Child, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge"));
    cmd.arg("serve")
        .arg("--model")
        .arg(tiny_model())
        .arg("--corpus")
        .arg(corpus)
        .args(["--bind", "127.0.0.1:0"])
        .args(extra)
        .env_remove("DGPO_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(k) = env_key {
        cmd.env("DGPO_API_KEY", k);
    }
    let mut child = cmd.spawn().expect("start edge serve");
    let addr = listening_addr(&mut child);
    (child, addr)
}

fn listening_addr(child: &mut Child) -> SocketAddr {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        if let Some(Ok(l)) = lines.next() {
            let _ = tx.send(l);
        }
        // Keep draining so the server never blocks on a full pipe.
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("edge serve printed no `listening on` line");
    line.strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap()
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        Self::start_with_key(extra, None)
    }

    fn start_with_key(extra: &[&str], key: Option<&str>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let corpus = corpus_file(dir.path());
        let mut args: Vec<&str> = extra.to_vec();
        if let Some(k) = key {
            args.extend(["--api-key", k]);
        }
        let (child, addr) = spawn(&corpus, &args, None);
        let s = Server {
            child,
            addr,
            key: key.map(String::from),
            dir,
        };
        s.wait_ready();
        s
    }

    fn corpus(&self) -> PathBuf {
        self.dir.path().join("corpus.jsonl")
    }

    fn wait_ready(&self) {
        let t = Instant::now();
        loop {
            if let Ok(r) = try_request(self.addr, "GET", "/health", &[], b"")
                && r.status == 200
            {
                return;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "server never ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn auth(&self) -> Option<String> {
        self.key.as_ref().map(|k| format!("Bearer {k}"))
    }

    fn post(&self, path: &str, body: &str) -> Resp {
        let auth = self.auth();
        let h: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        try_request(self.addr, "POST", path, &h, body.as_bytes()).unwrap()
    }

    fn get(&self, path: &str) -> Resp {
        let auth = self.auth();
        let h: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        try_request(self.addr, "GET", path, &h, b"").unwrap()
    }

    fn stream(&self, path: &str, body: &str) -> Sse {
        let auth = self.auth();
        let h: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        Sse::open(self.addr, path, &h, body)
    }

    /// One unlabelled metric's value.
    fn metric(&self, name: &str) -> f64 {
        let text = String::from_utf8(self.get("/metrics").body).unwrap();
        metric_in(&text, name)
    }

    /// Poll until `name` reaches `want` (bounded).
    fn wait_metric(&self, name: &str, want: f64) {
        let t = Instant::now();
        while self.metric(name) != want {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{name} never reached {want} (is {})",
                self.metric(name)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metric_in(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {pid}");
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            t.elapsed() < within,
            "the server did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn load_model() -> Arc<dyn LanguageModel> {
    dgpo_core::model::load(&tiny_model(), &LoadOptions::default()).unwrap()
}

/// What the server must answer for a greedy chat completion of `user` (template applied).
fn reference_completion(model: &dyn LanguageModel, user: &str, max_tokens: usize) -> String {
    let prompt = model
        .chat_template()
        .unwrap()
        .render(&[Message::new("user", user)], true)
        .unwrap();
    let ids = encode_prompt(model, &prompt).unwrap();
    let mut session = model.new_session().unwrap();
    let mut sampler = Sampler::new(SamplingParams::greedy());
    let opts = GenerateOptions {
        max_new_tokens: max_tokens,
        stop: Vec::new(),
    };
    generate(
        session.as_mut(),
        model.tokenizer(),
        &ids,
        &mut sampler,
        &opts,
        &mut |_| {},
    )
    .unwrap()
    .text
}

fn has_python_module(m: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {m}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// ---------------------------------------------------------------------------------------------

#[test]
fn retrieve_speaks_search_r1_json_with_and_without_scores() {
    let s = Server::start(&[]);
    let reference = MemoryRetriever::from_jsonl(&s.corpus()).unwrap();
    let queries = ["capital of France", "Spain", "zzz-no-match"];
    let r = s.post(
        "/retrieve",
        &json!({"queries": queries, "topk": 3, "return_scores": true}).to_string(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let result = r.json()["result"].as_array().unwrap().clone();
    assert_eq!(result.len(), queries.len());
    for (q, got) in queries.iter().zip(&result) {
        let want = reference.search(q, 3).unwrap();
        let got = got.as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{q}");
        for (g, w) in got.iter().zip(&want) {
            // Exactly Search-R1's shape: {"document": {"id", "contents"}, "score"}.
            assert_eq!(g.as_object().unwrap().len(), 2);
            assert_eq!(g["document"].as_object().unwrap().len(), 2);
            assert_eq!(g["document"]["id"], w.passage.id.as_str());
            assert_eq!(g["document"]["contents"], w.passage.contents().as_str());
            let score = g["score"].as_f64().unwrap() as f32;
            assert_eq!(score, w.score);
        }
    }
    // "title"/"text" rows come back in wiki-18 form.
    let madrid = &result[1][0]["document"];
    assert_eq!(madrid["id"], "4");
    assert_eq!(
        madrid["contents"],
        "Madrid\nMadrid is the capital and largest city of Spain."
    );
    assert!(result[2].as_array().unwrap().is_empty());

    // Without return_scores: bare documents. Without topk: the server's default (3).
    let r = s.post("/retrieve", r#"{"queries": ["capital"]}"#);
    assert_eq!(r.status, 200);
    let docs = r.json()["result"][0].as_array().unwrap().clone();
    let want = reference.search("capital", 3).unwrap();
    assert_eq!(docs.len(), 3);
    for (d, w) in docs.iter().zip(&want) {
        assert_eq!(
            d,
            &json!({"id": w.passage.id, "contents": w.passage.contents()})
        );
    }
    let r = s.post(
        "/retrieve",
        r#"{"queries": ["capital"], "topk": 1, "return_scores": false}"#,
    );
    assert_eq!(r.json()["result"][0].as_array().unwrap().len(), 1);
    // An empty batch is an empty result, as in Search-R1.
    assert_eq!(
        s.post("/retrieve", r#"{"queries": []}"#).json(),
        json!({"result": []})
    );
}

#[test]
fn python_search_r1_client_parses_retrieve() {
    if !has_python_module("requests") {
        eprintln!(
            "SKIP python_search_r1_client_parses_retrieve: python3 with `requests` not found"
        );
        return;
    }
    let s = Server::start(&[]);
    let queries = ["capital of France", "Germany", "food"];
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/searchr1_retrieve.py"))
        .arg(format!("http://{}/retrieve", s.addr))
        .arg(json!(queries).to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    // Search-R1's _passages2string over our answer equals our own observation format.
    let reference = MemoryRetriever::from_jsonl(&s.corpus()).unwrap();
    let want: Vec<String> = queries
        .iter()
        .map(|q| {
            let hits = reference.search(q, 3).unwrap();
            let passages: Vec<_> = hits.into_iter().map(|h| h.passage).collect();
            dgpo_core::protocol::format_docs(&passages)
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn openai_python_client_gets_a_completion_and_a_stream() {
    if !has_python_module("openai") {
        eprintln!(
            "SKIP openai_python_client_gets_a_completion_and_a_stream: python3 with `openai` not found"
        );
        return;
    }
    let s = Server::start_with_key(&["--model-name", "tiny"], Some(KEY));
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/openai_client.py"))
        .arg(format!("http://{}/v1", s.addr))
        .arg(KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let model = load_model();
    let want = reference_completion(model.as_ref(), "Say hello.", 12);
    assert_eq!(v["models"], json!(["tiny"]));
    assert_eq!(v["model"], "tiny");
    assert_eq!(v["text"], want.as_str());
    assert_eq!(v["stream_text"], want.as_str());
    assert_eq!(v["finish_reason"], "length");
    assert_eq!(v["stream_finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 12);
    assert_eq!(v["stream_usage"]["completion_tokens"], 12);
    assert_eq!(v["bad_key_status"], 401);
}

#[test]
fn agent_answers_with_the_trace_the_library_produces() {
    let s = Server::start(&[]);
    let r = s.post(
        "/v1/agent",
        r#"{"question": "what is the capital of france", "max_turns": 1, "max_turn_tokens": 24}"#,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let got: dgpo_core::trace::Trace = serde_json::from_value(v["trace"].clone()).unwrap();
    let model = load_model();
    let retriever = MemoryRetriever::from_jsonl(&s.corpus()).unwrap();
    let cfg = AgentConfig {
        max_turns: 1,
        max_turn_tokens: 24,
        ..AgentConfig::default()
    };
    let want = Agent::new(model.as_ref(), &retriever, cfg)
        .run("what is the capital of france")
        .unwrap();
    assert_eq!(got.response, want.response);
    assert_eq!(got.answer, want.answer);
    assert_eq!(got.finish, want.finish);
    assert_eq!(got.prompt_tokens, want.prompt_tokens);
    assert_eq!(got.generated_tokens, want.generated_tokens);
    assert_eq!(got.steps.len(), want.steps.len());
    for (g, w) in got.steps.iter().zip(&want.steps) {
        assert_eq!((&g.generated, &g.action), (&w.generated, &w.action));
    }
    assert_eq!(v["answer"], json!(want.answer));
    assert!(v["timings"]["total_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(v["model"], "tiny-qwen2");
    // The metrics saw the tokens and the phases.
    assert_eq!(
        s.metric("dgpo_generated_tokens_total"),
        want.generated_tokens as f64
    );
    assert!(s.metric("dgpo_phase_seconds_total{phase=\"prefill\"}") > 0.0);
}

#[test]
fn chat_completion_matches_generation_and_honours_stop() {
    let s = Server::start(&[]);
    let model = load_model();
    let want = reference_completion(model.as_ref(), "hello there", 16);
    let body = |extra: Value| {
        let mut b = json!({
            "model": "whatever",
            "messages": [{"role": "user", "content": "hello there"}],
            "temperature": 0,
            "max_tokens": 16,
        });
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b.to_string()
    };
    let v = s.post("/v1/chat/completions", &body(json!({}))).json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], want.as_str());
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 16);
    assert_eq!(
        v["usage"]["total_tokens"].as_u64(),
        Some(v["usage"]["prompt_tokens"].as_u64().unwrap() + 16)
    );
    // Text parts are the same message.
    let parts = s
        .post(
            "/v1/chat/completions",
            &body(json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]}]})),
        )
        .json();
    assert_eq!(parts["choices"][0]["message"]["content"], want.as_str());

    // A stop string taken from the middle of the greedy text cuts the completion before it.
    let chars: Vec<(usize, char)> = want.char_indices().collect();
    let (at, stop) = (3..chars.len().saturating_sub(2))
        .map(|i| {
            let (a, _) = chars[i];
            let end = chars.get(i + 2).map(|c| c.0).unwrap_or(want.len());
            (a, &want[a..end])
        })
        .find(|(a, st)| want.find(st) == Some(*a) && !st.trim().is_empty())
        .expect("a usable stop string in the reference text");
    let cut = s
        .post(
            "/v1/chat/completions",
            &body(json!({"stop": [stop, "never-generated"]})),
        )
        .json();
    assert_eq!(cut["choices"][0]["message"]["content"], &want[..at]);
    assert_eq!(cut["choices"][0]["finish_reason"], "stop");

    // Streaming: role first, deltas that concatenate to the same text, finish, [DONE].
    for (extra, expect, reason) in [
        (json!({"stream": true}), want.as_str(), "length"),
        (json!({"stream": true, "stop": stop}), &want[..at], "stop"),
    ] {
        let mut sse = s.stream("/v1/chat/completions", &body(extra));
        assert_eq!(sse.status, 200);
        assert!(
            sse.headers
                .iter()
                .any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v == "text/event-stream")
        );
        let mut text = String::new();
        let mut finish = None;
        let mut first = true;
        let mut done = false;
        while let Some((event, data)) = sse.next() {
            assert!(event.is_empty());
            assert!(!done, "data after [DONE]");
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let c: Value = serde_json::from_str(&data).unwrap();
            assert_eq!(c["object"], "chat.completion.chunk");
            let choice = &c["choices"][0];
            if first {
                assert_eq!(choice["delta"]["role"], "assistant");
                first = false;
            }
            if let Some(t) = choice["delta"]["content"].as_str() {
                text.push_str(t);
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
        assert!(done, "no [DONE]");
        assert_eq!(text, expect);
        assert_eq!(finish.as_deref(), Some(reason));
    }
    let models = s.get("/v1/models").json();
    assert_eq!(models["data"][0]["id"], "tiny-qwen2");
    assert_eq!(models["object"], "list");
}

#[test]
fn agent_stream_sends_steps_as_they_happen() {
    let s = Server::start(&[]);
    let mut sse = s.stream(
        "/v1/agent",
        r#"{"question": "capital of france?", "max_turns": 2, "max_turn_tokens": 40, "stream": true}"#,
    );
    assert_eq!(sse.status, 200);
    let mut events = Vec::new();
    while let Some(e) = sse.next() {
        events.push(e);
    }
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "done");
    let done: Value = serde_json::from_str(done).unwrap();
    let trace: dgpo_core::trace::Trace = serde_json::from_value(done["trace"].clone()).unwrap();
    // The text events of each turn add up to that turn's generated text, and each turn's
    // step event follows its text.
    for step in &trace.steps {
        let text: String = events
            .iter()
            .filter(|(e, _)| e == "text")
            .map(|(_, d)| serde_json::from_str::<Value>(d).unwrap())
            .filter(|d| d["turn"] == step.turn)
            .map(|d| d["text"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(text, step.generated, "turn {}", step.turn);
        let kind = match &step.action {
            dgpo_core::trace::StepAction::Search { .. } => "search",
            dgpo_core::trace::StepAction::Answer { .. } => "answer",
            dgpo_core::trace::StepAction::Invalid => "invalid",
        };
        let pos = events
            .iter()
            .position(|(e, d)| {
                e == kind && serde_json::from_str::<Value>(d).unwrap()["turn"] == step.turn
            })
            .unwrap_or_else(|| panic!("no {kind} event for turn {}", step.turn));
        let last_text = events
            .iter()
            .rposition(|(e, d)| {
                e == "text" && serde_json::from_str::<Value>(d).unwrap()["turn"] == step.turn
            })
            .unwrap();
        assert!(last_text < pos);
    }
    assert_eq!(trace.steps.len(), 3);
}

/// The first event reaches the client while the model is still generating: a client that
/// reads one event and hangs up cancels the run (a buffered answer could not be cancelled).
#[test]
fn disconnect_after_the_first_event_cancels_generation() {
    let s = Server::start(&[]);
    for path in ["/v1/agent", "/v1/chat/completions"] {
        let body = if path == "/v1/agent" {
            format!("{LONG_AGENT}, \"stream\": true}}")
        } else {
            r#"{"messages": [{"role": "user", "content": "go"}], "max_tokens": 1000, "temperature": 0, "stream": true}"#.to_string()
        };
        let before = s.metric("dgpo_cancelled_total");
        let mut sse = s.stream(path, &body);
        assert_eq!(sse.status, 200);
        let first = sse.next().expect("a first event");
        assert!(!first.1.is_empty());
        drop(sse);
        s.wait_metric("dgpo_cancelled_total", before + 1.0);
        s.wait_metric("dgpo_running_jobs", 0.0);
    }
    // A client of a non-streaming request that gives up cancels too.
    let before = s.metric("dgpo_cancelled_total");
    let conn = send(
        s.addr,
        "POST",
        "/v1/agent",
        &[],
        format!("{LONG_AGENT}}}").as_bytes(),
    )
    .unwrap();
    s.wait_metric("dgpo_running_jobs", 1.0);
    drop(conn);
    s.wait_metric("dgpo_cancelled_total", before + 1.0);
    s.wait_metric("dgpo_running_jobs", 0.0);
    assert_eq!(s.metric("dgpo_generated_tokens_total"), 0.0);
}

#[test]
fn full_server_answers_503_and_the_queue_drains() {
    let s = Server::start(&["--max-concurrency", "1", "--queue", "1"]);
    // A stream that is never read holds the only slot.
    let mut hog = s.stream("/v1/agent", &format!("{LONG_AGENT}, \"stream\": true}}"));
    assert_eq!(hog.status, 200);
    hog.next().unwrap();
    assert_eq!(s.metric("dgpo_running_jobs"), 1.0);
    // The next request waits in the queue...
    let addr = s.addr;
    let queued = std::thread::spawn(move || {
        try_request(
            addr,
            "POST",
            "/retrieve",
            &[],
            br#"{"queries": ["capital"]}"#,
        )
        .unwrap()
    });
    s.wait_metric("dgpo_queue_depth", 1.0);
    // ...and the one after that is refused at once.
    let t = Instant::now();
    let r = s.post(
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "x"}]}"#,
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(r.status, 503);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(r.json()["error"]["type"], "overloaded");
    assert_eq!(s.metric("dgpo_rejected_total"), 1.0);
    // Hanging up on the hog frees the slot for the queued request.
    drop(hog);
    let r = queued.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"][0].as_array().unwrap().len(), 3);
    s.wait_metric("dgpo_queue_depth", 0.0);
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn load_500_requests_from_64_clients() {
    const TOTAL: usize = 500;
    const CLIENTS: usize = 64;
    let s = Server::start(&["--max-concurrency", "2", "--queue", "48"]);
    s.post("/retrieve", r#"{"queries": ["warm up"]}"#);
    let rss_before = rss_kib(s.pid(), "VmRSS:");
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(120);
    let addr = s.addr;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= TOTAL || Instant::now() > deadline {
                        break;
                    }
                    let (path, body) = match i % 3 {
                        0 => (
                            "/v1/agent",
                            r#"{"question": "capital of italy", "max_turns": 1, "max_turn_tokens": 4}"#,
                        ),
                        1 => (
                            "/retrieve",
                            r#"{"queries": ["capital of italy", "food"], "topk": 2, "return_scores": true}"#,
                        ),
                        _ => (
                            "/v1/chat/completions",
                            r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}"#,
                        ),
                    };
                    let r = try_request(addr, "POST", path, &[], body.as_bytes())
                        .unwrap_or_else(|e| panic!("request {i} to {path}: {e}"));
                    match r.status {
                        200 => {
                            r.json();
                        }
                        503 => {
                            assert!(r.header("retry-after").is_some());
                            assert_eq!(r.json()["error"]["code"], 503);
                            // A short back-off (a real client would honour Retry-After), so
                            // the run mixes admitted and refused requests.
                            std::thread::sleep(Duration::from_millis(25));
                        }
                        other => panic!(
                            "request {i} to {path}: status {other}: {}",
                            String::from_utf8_lossy(&r.body)
                        ),
                    }
                    statuses.push(r.status);
                }
                statuses
            })
        })
        .collect();
    let statuses: Vec<u16> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert_eq!(statuses.len(), TOTAL, "the test ran out of time");
    let ok = statuses.iter().filter(|&&c| c == 200).count();
    let busy = statuses.len() - ok;
    eprintln!("load: {ok} x 200, {busy} x 503");
    assert!(ok > 0);
    assert_eq!(s.metric("dgpo_rejected_total"), busy as f64);
    // Still alive and idle, memory bounded.
    assert_eq!(
        try_request(s.addr, "GET", "/health", &[], b"")
            .unwrap()
            .status,
        200
    );
    assert_eq!(s.metric("dgpo_running_jobs"), 0.0);
    assert_eq!(s.metric("dgpo_queue_depth"), 0.0);
    let (rss_after, peak) = (rss_kib(s.pid(), "VmRSS:"), rss_kib(s.pid(), "VmHWM:"));
    eprintln!("load: rss {rss_before} KiB -> {rss_after} KiB, peak {peak} KiB");
    assert!(peak < 1 << 20, "peak RSS {peak} KiB");
    assert!(
        rss_after < rss_before + 256 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}

/// method, path, headers, body, expected status.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Vec<u8>, u16);

#[test]
fn bad_input_gets_a_4xx_json_error_never_a_500() {
    let s = Server::start_with_key(&[], Some(KEY));
    let auth = format!("Bearer {KEY}");
    let ok: &[(&str, &str)] = &[("Authorization", &auth)];
    let mut deep = "[".repeat(100_000);
    deep.push_str(&"]".repeat(100_000));
    let big = vec![b'a'; 10 << 20];
    let cases: Vec<Case> = vec![
        ("POST", "/v1/agent", ok, br#"{"question": "#.to_vec(), 400),
        ("POST", "/v1/agent", ok, br#"{"question": 3}"#.to_vec(), 400),
        (
            "POST",
            "/v1/agent",
            ok,
            br#"{"question": "   "}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/agent",
            ok,
            br#"{"question": "a", "topk": 0}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/agent",
            ok,
            br#"{"question": "a", "max_turns": 1000}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/agent",
            ok,
            br#"{"question": "a", "temperature": -1}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/agent",
            ok,
            br#"{"question": "a"} trailing"#.to_vec(),
            400,
        ),
        ("POST", "/v1/agent", ok, b"[1, 2]".to_vec(), 400),
        ("POST", "/v1/agent", ok, Vec::new(), 400),
        (
            "POST",
            "/v1/agent",
            ok,
            b"{\"question\": \"\xff\xfe\"}".to_vec(),
            400,
        ),
        ("POST", "/v1/agent", ok, b"\xc3\x28 not utf-8".to_vec(), 400),
        ("POST", "/v1/agent", ok, deep.clone().into_bytes(), 400),
        ("POST", "/v1/agent", ok, big.clone(), 413),
        ("POST", "/retrieve", ok, big, 413),
        (
            "POST",
            "/retrieve",
            ok,
            br#"{"queries": "capital"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/retrieve",
            ok,
            br#"{"queries": ["a"], "topk": "3"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/retrieve",
            ok,
            br#"{"queries": ["a"], "topk": 100000}"#.to_vec(),
            400,
        ),
        ("POST", "/retrieve", ok, br#"{"topk": 3}"#.to_vec(), 400),
        (
            "POST",
            "/v1/chat/completions",
            ok,
            br#"{"messages": "hi"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/chat/completions",
            ok,
            br#"{"messages": []}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/chat/completions",
            ok,
            br#"{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/chat/completions",
            ok,
            br#"{"messages": [{"role": "user", "content": "x"}], "n": 2}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/chat/completions",
            ok,
            br#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/chat/completions",
            ok,
            br#"{"messages": [{"role": "wizard", "content": "x"}]}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/chat/completions",
            ok,
            br#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#.to_vec(),
            400,
        ),
        ("GET", "/nope", ok, Vec::new(), 404),
        (
            "POST",
            "/v1/nope",
            ok,
            br#"{"question": "a"}"#.to_vec(),
            404,
        ),
        ("GET", "/../../etc/passwd", ok, Vec::new(), 404),
        ("GET", "/retrieve", ok, Vec::new(), 405),
        ("POST", "/metrics", ok, Vec::new(), 405),
        ("DELETE", "/health", ok, Vec::new(), 405),
        (
            "POST",
            "/v1/agent",
            &[],
            br#"{"question": "a"}"#.to_vec(),
            401,
        ),
        ("GET", "/metrics", &[], Vec::new(), 401),
        ("GET", "/nope", &[], Vec::new(), 401),
        (
            "POST",
            "/retrieve",
            &[("Authorization", "Bearer wrong-key-0123456789")],
            br#"{"queries": ["a"]}"#.to_vec(),
            401,
        ),
        (
            "POST",
            "/retrieve",
            &[("Authorization", "Bearer test-key-012345678")],
            br#"{"queries": ["a"]}"#.to_vec(),
            401,
        ),
        (
            "POST",
            "/retrieve",
            &[("Authorization", "Basic dGVzdDp0ZXN0")],
            br#"{"queries": ["a"]}"#.to_vec(),
            401,
        ),
        (
            "POST",
            "/retrieve",
            &[("Authorization", "Bearer")],
            br#"{"queries": ["a"]}"#.to_vec(),
            401,
        ),
        ("POST", "/v1/agent", &[], vec![b'a'; 10 << 20], 401),
    ];
    for (method, path, headers, body, want) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        let r = try_request(s.addr, method, path, headers, &body)
            .unwrap_or_else(|e| panic!("{method} {path} {shown:?}: {e}"));
        assert_eq!(
            r.status,
            want,
            "{method} {path} {shown:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        assert_eq!(v["error"]["code"], want, "{v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
        if want == 401 {
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
    }
    // /health needs no key; the server is still up and never answered 500.
    let h = try_request(s.addr, "GET", "/health", &[], b"").unwrap();
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    let metrics = String::from_utf8(s.get("/metrics").body).unwrap();
    assert!(!metrics.contains("status=\"500\""), "{metrics}");
    let ok = s.post("/retrieve", r#"{"queries": ["capital"], "topk": 1}"#);
    assert_eq!(ok.status, 200);
}

#[test]
fn non_loopback_bind_needs_an_api_key() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_file(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_edge"))
        .arg("serve")
        .arg("--model")
        .arg(tiny_model())
        .arg("--corpus")
        .arg(&corpus)
        .args(["--bind", "0.0.0.0:0"])
        .env_remove("DGPO_API_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("API key"), "{err}");
    assert!(out.stdout.is_empty(), "it must not have listened");

    // With the key from the environment it listens, and every route but /health wants it.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge"));
    cmd.arg("serve")
        .arg("--model")
        .arg(tiny_model())
        .arg("--corpus")
        .arg(&corpus)
        .args(["--bind", "0.0.0.0:0"])
        .env("DGPO_API_KEY", KEY)
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let port = listening_addr(&mut child).port();
    let s = Server {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        key: Some(KEY.into()),
        dir,
    };
    s.wait_ready();
    assert_eq!(
        try_request(s.addr, "GET", "/v1/models", &[], b"")
            .unwrap()
            .status,
        401
    );
    assert_eq!(s.get("/v1/models").status, 200);
}

#[test]
fn health_is_503_until_loaded_and_a_bad_index_stops_the_server() {
    // A corpus large enough that indexing it takes a while.
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("big.jsonl");
    let mut text = String::new();
    for i in 0..60_000 {
        text.push_str(&format!(
            "{{\"id\": \"{i}\", \"contents\": \"\\\"Title {i}\\\"\\nPassage {i} about topic {} and word{}.\"}}\n",
            i % 97,
            i * 7
        ));
    }
    std::fs::write(&corpus, text).unwrap();
    let (child, addr) = spawn(&corpus, &[], None);
    let s = Server {
        child,
        addr,
        key: None,
        dir,
    };
    let first = try_request(addr, "GET", "/health", &[], b"").unwrap();
    assert_eq!(
        first.status,
        503,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(first.json()["status"], "loading");
    assert!(first.header("retry-after").is_some());
    let busy = try_request(addr, "POST", "/retrieve", &[], br#"{"queries": ["a"]}"#).unwrap();
    assert_eq!(busy.status, 503);
    assert_eq!(busy.json()["error"]["type"], "loading");
    s.wait_ready();
    assert_eq!(
        s.post("/retrieve", r#"{"queries": ["topic 5"]}"#).status,
        200
    );
    drop(s);

    // A retriever that cannot be opened ends the process with an error naming it.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-index");
    let out = Command::new(env!("CARGO_BIN_EXE_edge"))
        .arg("serve")
        .arg("--model")
        .arg(tiny_model())
        .arg("--index")
        .arg(&missing)
        .args(["--bind", "127.0.0.1:0"])
        .env_remove("DGPO_API_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-index"), "{err}");
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits() {
    let mut s = Server::start(&[]);
    let addr = s.addr;
    let inflight = std::thread::spawn(move || {
        try_request(
            addr,
            "POST",
            "/v1/agent",
            &[],
            format!("{LONG_AGENT}}}").as_bytes(),
        )
    });
    s.wait_metric("dgpo_running_jobs", 1.0);
    sigterm(s.pid());
    let status = wait_exit(&mut s.child, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    let r = inflight
        .join()
        .unwrap()
        .expect("the in-flight request got its answer");
    assert_eq!(r.status, 200);
    let trace = &r.json()["trace"];
    assert!(trace["generated_tokens"].as_u64().unwrap() > 500);
    assert!(TcpStream::connect(addr).is_err(), "still listening");
}

#[test]
fn shutdown_deadline_cancels_what_is_left() {
    let mut s = Server::start(&["--shutdown-timeout", "0.2"]);
    let addr = s.addr;
    let inflight = std::thread::spawn(move || {
        try_request(
            addr,
            "POST",
            "/v1/agent",
            &[],
            format!("{LONG_AGENT}}}").as_bytes(),
        )
    });
    s.wait_metric("dgpo_running_jobs", 1.0);
    let t = Instant::now();
    sigterm(s.pid());
    let status = wait_exit(&mut s.child, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The cut request did not get a normal answer.
    if let Ok(r) = inflight.join().unwrap() {
        assert_ne!(r.status, 200);
    }
}

#[test]
fn request_deadline_stops_generation_with_504() {
    let s = Server::start(&["--request-timeout", "0.3"]);
    let t = Instant::now();
    let r = s.post("/v1/agent", &format!("{LONG_AGENT}}}"));
    assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["type"], "timeout");
    // Well before the ~1.5 s the full run takes.
    assert!(
        t.elapsed() < Duration::from_millis(1200),
        "{:?}",
        t.elapsed()
    );
    // A stream ends with an error event instead.
    let mut sse = s.stream("/v1/agent", &format!("{LONG_AGENT}, \"stream\": true}}"));
    let mut last = None;
    while let Some(e) = sse.next() {
        last = Some(e);
    }
    let (event, data) = last.unwrap();
    assert_eq!(event, "error");
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap()["error"]["code"],
        504
    );
    s.wait_metric("dgpo_timeouts_total", 2.0);
    s.wait_metric("dgpo_running_jobs", 0.0);
}
