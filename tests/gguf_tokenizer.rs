//! Tokenizers rebuilt from GGUF metadata (`dgpo::tokenizer::gguf`).
//!
//! * Always: the fixture tokenizer.json goes through `gguf_tokenizer_metadata`, a real GGUF
//!   file and `tokenizer_from_gguf`, and must behave like the tokenizer.json (pre "gpt2") and
//!   reproduce the ids Python transformers wrote to `tests/fixtures/tokenizer/reference.json`
//!   (pre "qwen2", see below).
//! * Opt-in (artifacts from `scripts/fetch-artifacts.sh`): the Qwen2.5-Coder GGUF against
//!   Qwen2.5's own tokenizer.json, and the SmolLM2 GGUF (round trips and known ids).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use candle_core::quantized::gguf_file::{self, Content, Value};
use dgpo::tokenizer::gguf::{GgufTokenizer, gguf_tokenizer_metadata, tokenizer_from_gguf};
use tokenizers::Tokenizer;

const QWEN_GGUF: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
const QWEN_TOKENIZER_JSON: &str = "qwen2.5-tokenizer/tokenizer.json";
const SMOLLM_GGUF: &str = "smollm2-135m-instruct-q4_1.gguf";

const SAMPLE: &str = "Hello, world! Ünïcödé 日本語のテキスト 🙂👍🏽 fn main() { println!(\"{}\", 42); }\n\t  indented\r\n<|im_start|>user\nhi<|im_end|>";

/// Texts that stress pre-tokenization: contractions in any case, digit runs, whitespace runs
/// of every kind, decomposed accents (NFC), scripts without spaces, emoji sequences, code,
/// the Search-R1 protocol tags, and special tokens glued to text.
fn texts() -> Vec<String> {
    let mut v: Vec<String> = [
        SAMPLE,
        "",
        " ",
        "\n",
        "I'm sure you'LL see THEY'RE right, isn't it? We'd've known. DON'T 'S 'st",
        "1234567 + 89 = 1234656; 3.14159e-10, 0x1F, 1,000,000.00 and ١٢٣ / ½ / Ⅻ",
        "   leading spaces\n\n\n  trailing   \t\n",
        "\u{a0}non-breaking\u{a0}\u{a0}spaces\u{3000}ideographic\u{2003}em\u{200b}zero-width",
        "cafe\u{301} vs caf\u{e9}; A\u{30a}ngstro\u{308}m; ﬁ ligature; ＦＵＬＬ width",
        "Привет, мир! Γειά σου Κόσμε! مرحبا بالعالم! שלום עולם! नमस्ते दुनिया! 안녕하세요 세계! 你好，世界！",
        "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 🇫🇷 regional indicators, 👍🏿 skin tone, ❤️ variation selector",
        "<think>I should search.</think>\n<search>capital of France</search>\n<information>Doc 1 (Title: Paris) Paris is the capital.</information>\n<answer>Paris</answer>",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
        "<|endoftext|><|endoftext|>x<|im_end|><|im_start|><|im_start|>",
        "    def f(x):\r\n        return x**2  # square\n\n\nclass A:\n\tpass\n",
        "{\"name\": \"search\", \"arguments\": {\"query\": \"who wrote \\\"Hamlet\\\"?\", \"k\": 3}}",
        "fn main() -> Result<(), Box<dyn Error>> {\n    let v: Vec<u8> = (0..=255).collect();\n    Ok(())\n}",
        "a\r\nb\rc\n\rd\r\r\n\n e \t\t f  \n  g",
        "!!! ??? ... --- *** ((( ))) [[[ ]]] {{{ }}} <<< >>> ''' \"\"\" ``` ~~~ ^^^ $$$",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // A long document: everything above, many times, joined by varied separators.
    let joined = v.join(" \n ");
    v.push(
        (0..20)
            .map(|i| format!("{joined}{}", ["\n", " ", "\n\n", "\t", ""][i % 5]))
            .collect(),
    );
    v.extend(fuzz(300));
    v
}

/// Deterministic pseudo-random strings over an alphabet chosen to hit regex edge cases.
fn fuzz(n: usize) -> Vec<String> {
    let pool: Vec<char> = "aZé'sStTlLdDmMrReEvV 0123456789\t\n\r\u{a0}\u{3000}.,;:!?-_()[]{}<>|/\\\"`~@#$%^&*+=日本語한국어مرحباПриветé\u{301}🙂👍🏽\u{200d}\u{fe0f}½Ⅻ٣"
        .chars()
        .collect();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|_| {
            let len = (next() % 40) as usize;
            (0..len)
                .map(|_| pool[(next() % pool.len() as u64) as usize])
                .collect()
        })
        .collect()
}

fn ids(tok: &Tokenizer, text: &str) -> Vec<u32> {
    tok.encode(text, false)
        .unwrap_or_else(|e| panic!("encoding {text:?}: {e}"))
        .get_ids()
        .to_vec()
}

fn read_metadata(path: &Path) -> HashMap<String, Value> {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Content::read(&mut f)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .metadata
}

fn string(md: &HashMap<String, Value>, key: &str) -> String {
    match md.get(key) {
        Some(Value::String(s)) => s.clone(),
        other => panic!("{key}: {other:?}"),
    }
}

fn strings(md: &HashMap<String, Value>, key: &str) -> Vec<String> {
    match md.get(key) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                v => panic!("{key}: {v:?}"),
            })
            .collect(),
        other => panic!("{key}: {:?}", other.map(|v| v.value_type())),
    }
}

fn ints(md: &HashMap<String, Value>, key: &str) -> Vec<i64> {
    match md.get(key) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match *v {
                Value::I32(x) => x as i64,
                Value::U32(x) => x as i64,
                ref v => panic!("{key}: {v:?}"),
            })
            .collect(),
        other => panic!("{key}: {:?}", other.map(|v| v.value_type())),
    }
}

fn rebuild(md: &HashMap<String, Value>, what: &str) -> GgufTokenizer {
    tokenizer_from_gguf(md).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Write GGUF metadata entries to a real (tensor-less) GGUF file and read them back.
fn through_a_file(md: &[(String, Value)]) -> HashMap<String, Value> {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tok.gguf");
    {
        let mut f = std::fs::File::create(&path).unwrap();
        let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut f, &md_refs, &[]).unwrap();
    }
    read_metadata(&path)
}

/// The fixture tokenizer.json (GPT-2 style: 509 BPE tokens + 3 specials) written to a real
/// GGUF file with pre "gpt2" and rebuilt from it behaves exactly like the tokenizer.json.
#[test]
fn fixture_tokenizer_survives_a_gguf_file() {
    let dir = common::fixture("tokenizer");
    let tok_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    let hf = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();

    // 520 embedding rows: ids 512..520 are padding.
    let md = gguf_tokenizer_metadata(&tok_json, "gpt2", 520, None, Some(511), false).unwrap();
    let md = through_a_file(&md);
    assert_eq!(
        string(&md, "tokenizer.ggml.pre"),
        "gpt-2",
        "llama.cpp's name for it"
    );
    let g = rebuild(&md, "fixture");
    assert_eq!(g.eos_id, Some(511));
    assert_eq!(g.bos_id, None);
    assert!(!g.add_bos);
    assert_eq!(g.eot_ids, vec![509], "<|endoftext|> ends generation too");
    assert_eq!(g.tokenizer.id_to_token(515).as_deref(), Some("[PAD515]"));
    for text in texts() {
        let want = ids(&hf, &text);
        let got = ids(&g.tokenizer, &text);
        assert_eq!(got, want, "ids of {text:?}");
        assert_eq!(
            g.tokenizer.decode(&got, false).unwrap(),
            hf.decode(&want, false).unwrap()
        );
        assert_eq!(
            g.tokenizer.decode(&got, true).unwrap(),
            hf.decode(&want, true).unwrap()
        );
        assert_eq!(
            g.tokenizer.decode(&got, false).unwrap(),
            text,
            "byte-level BPE is lossless"
        );
    }
}

/// The same vocabulary rebuilt with pre "qwen2" gives the ids that Python transformers wrote to
/// `reference.json`: its `Qwen2Tokenizer` class applies Qwen2's own NFC + split regex whatever
/// the tokenizer.json says (hence "300,000" as single digits).
#[test]
fn qwen2_pre_tokenizer_matches_transformers() {
    let dir = common::fixture("tokenizer");
    let tok_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let md = gguf_tokenizer_metadata(&tok_json, "qwen2", 512, None, Some(511), false).unwrap();
    let g = rebuild(&through_a_file(&md), "fixture (qwen2)");
    let encodings = reference["encodings"].as_array().unwrap();
    assert!(!encodings.is_empty());
    for e in encodings {
        let text = e["text"].as_str().unwrap();
        let want: Vec<u32> = e["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let got = ids(&g.tokenizer, text);
        assert_eq!(got, want, "ids of {text:?}");
        assert_eq!(
            g.tokenizer.decode(&got, false).unwrap(),
            e["decoded"].as_str().unwrap()
        );
        assert_eq!(
            g.tokenizer.decode(&got, true).unwrap(),
            e["decoded_skip_special"].as_str().unwrap()
        );
    }
}

/// Qwen2.5-Coder's GGUF (converted by llama.cpp) rebuilds to the same tokenizer as Qwen2.5's
/// tokenizer.json, and `gguf_tokenizer_metadata` on that tokenizer.json writes the same
/// tokens and merges llama.cpp wrote.
#[test]
fn qwen25_gguf_matches_its_tokenizer_json() {
    let (Some(gguf), Some(json_path)) = (
        common::artifact(QWEN_GGUF),
        common::artifact(QWEN_TOKENIZER_JSON),
    ) else {
        return;
    };
    let md = read_metadata(&gguf);
    assert_eq!(string(&md, "tokenizer.ggml.model"), "gpt2");
    assert_eq!(string(&md, "tokenizer.ggml.pre"), "qwen2");
    let gguf_tokens = strings(&md, "tokenizer.ggml.tokens");

    // The tokenizer.json may be a later Qwen's, with added tokens (<think>, ...) that
    // Qwen2.5's vocabulary pads: keep only added tokens the GGUF has at the same id.
    let mut tok_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let added = tok_json["added_tokens"].as_array_mut().unwrap();
    let before = added.len();
    added.retain(|t| {
        let id = t["id"].as_u64().unwrap() as usize;
        gguf_tokens.get(id).map(String::as_str) == t["content"].as_str()
    });
    let dropped = before - added.len();
    assert!(
        dropped <= 4,
        "{dropped} added tokens of tokenizer.json are not in the GGUF"
    );
    eprintln!("qwen: dropped {dropped} added tokens the GGUF does not have");
    let hf = Tokenizer::from_str(&tok_json.to_string()).unwrap();

    let started = std::time::Instant::now();
    let g = rebuild(&md, "qwen");
    eprintln!(
        "qwen: rebuilt {} tokens in {:?}",
        gguf_tokens.len(),
        started.elapsed()
    );

    // Special ids.
    let id = |s: &str| {
        hf.token_to_id(s)
            .unwrap_or_else(|| panic!("{s} not in tokenizer.json"))
    };
    assert_eq!(g.eos_id, Some(id("<|im_end|>")));
    assert!(g.eot_ids.contains(&id("<|endoftext|>")));
    assert!(!g.add_bos);
    let template = g.chat_template.as_deref().expect("chat template");
    assert!(template.contains("<|im_start|>"));
    for t in hf.get_added_tokens_decoder().values() {
        assert_eq!(
            g.tokenizer.token_to_id(&t.content),
            hf.token_to_id(&t.content),
            "{}",
            t.content
        );
    }

    // Same ids and decodes.
    let mut n_ids = 0;
    for text in texts() {
        let want = ids(&hf, &text);
        let got = ids(&g.tokenizer, &text);
        assert_eq!(got, want, "ids of {text:?}");
        assert_eq!(
            g.tokenizer.decode(&got, false).unwrap(),
            hf.decode(&want, false).unwrap(),
            "{text:?}"
        );
        n_ids += got.len();
    }
    // Every added token, alone and in context.
    for t in hf.get_added_tokens_decoder().values() {
        let text = format!("x{}y {} z", t.content, t.content);
        assert_eq!(ids(&g.tokenizer, &text), ids(&hf, &text), "{text:?}");
    }
    eprintln!(
        "qwen: {} texts, {n_ids} ids identical to tokenizer.json",
        texts().len()
    );

    // Special-ness: llama.cpp's converter marks <|...|>-looking added tokens as control even
    // when tokenizer.json does not; everything else must agree.
    let mut differ = Vec::new();
    for t in hf.get_added_tokens_decoder().values() {
        let id = hf.token_to_id(&t.content).unwrap();
        let ours = g.tokenizer.decode(&[id], true).unwrap().is_empty();
        if ours != t.special {
            assert!(
                t.content.starts_with("<|") && t.content.ends_with("|>"),
                "{} special-ness differs",
                t.content
            );
            differ.push(t.content.clone());
        }
    }
    differ.sort();
    eprintln!("qwen: control in the GGUF but not special in tokenizer.json: {differ:?}");

    // The inverse: tokenizer.json -> metadata gives llama.cpp's tokens and merges.
    let out = gguf_tokenizer_metadata(
        &tok_json,
        "qwen2",
        gguf_tokens.len(),
        g.bos_id,
        g.eos_id,
        false,
    )
    .unwrap();
    let out: HashMap<String, Value> = out.into_iter().collect();
    assert_eq!(strings(&out, "tokenizer.ggml.tokens"), gguf_tokens);
    assert_eq!(
        strings(&out, "tokenizer.ggml.merges"),
        strings(&md, "tokenizer.ggml.merges")
    );
    let (ours, theirs) = (
        ints(&out, "tokenizer.ggml.token_type"),
        ints(&md, "tokenizer.ggml.token_type"),
    );
    let type_diffs: Vec<(usize, i64, i64)> = (0..ours.len())
        .filter(|&i| ours[i] != theirs[i])
        .map(|i| (i, ours[i], theirs[i]))
        .collect();
    for &(i, o, t) in &type_diffs {
        assert!(
            o == 4 && t == 3 && differ.contains(&gguf_tokens[i]),
            "token type of {i} {:?}: ours {o}, llama.cpp {t}",
            gguf_tokens[i]
        );
    }
}

/// SmolLM2's GGUF: lossless round trips, individual digits, and ids known from SmolLM2.
#[test]
fn smollm2_gguf_tokenizer() {
    let Some(gguf) = common::artifact(SMOLLM_GGUF) else {
        return;
    };
    let md = read_metadata(&gguf);
    assert_eq!(string(&md, "tokenizer.ggml.model"), "gpt2");
    assert_eq!(string(&md, "tokenizer.ggml.pre"), "smollm");
    let g = rebuild(&md, "smollm2");
    let t = &g.tokenizer;

    for text in texts() {
        let got = ids(t, &text);
        assert_eq!(
            t.decode(&got, false).unwrap(),
            text,
            "decode(encode(x)) != x"
        );
    }
    // Specials are single tokens at SmolLM2's ids.
    assert_eq!(ids(t, "<|endoftext|><|im_start|><|im_end|>"), vec![0, 1, 2]);
    assert_eq!(
        g.eos_id,
        Some(2),
        "SmolLM2-Instruct ends turns with <|im_end|>"
    );
    assert!(g.eot_ids.contains(&0), "<|endoftext|> also ends generation");
    assert!(!g.add_bos);
    assert!(
        g.chat_template
            .as_deref()
            .is_some_and(|c| c.contains("<|im_start|>"))
    );
    // Digits are split one by one, with or without a leading space.
    let digit = |d: char| t.token_to_id(&d.to_string()).unwrap();
    assert_eq!(
        ids(t, "2024"),
        "2024".chars().map(digit).collect::<Vec<_>>()
    );
    // Known SmolLM2 ids ("Hello" " world" "!" " " "1" "2" "3").
    assert_eq!(
        ids(t, "Hello world! 123"),
        vec![19556, 905, 17, 216, 33, 34, 35]
    );
    assert_eq!(ids(t, "  multiple   spaces"), vec![216, 2701, 256, 5600]);
    assert_eq!(ids(t, "\n"), vec![198]);
}
