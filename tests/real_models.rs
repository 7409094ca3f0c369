//! Opt-in tests with the real models of ARTIFACTS.md (run scripts/fetch-artifacts.sh first);
//! each skips with a message when its file is absent.

mod common;

use common::artifact;
use dgpo::chat::Message;
use dgpo::generate::{GenerateOptions, generate};
use dgpo::model::{BackendKind, LanguageModel, LoadOptions};
use dgpo::sampling::{Sampler, SamplingParams};

const QUESTION: &str = "What is the capital of France? Answer in one sentence.";

fn answer(model: &dyn LanguageModel) -> String {
    let prompt = model
        .chat_template()
        .expect("the GGUF ships a chat template")
        .render(&[Message::new("user", QUESTION)], true)
        .unwrap();
    let ids = dgpo::agent::encode_prompt(model, &prompt).unwrap();
    let mut s = model.new_session().unwrap();
    let mut sampler = Sampler::new(SamplingParams::greedy());
    let opts = GenerateOptions {
        max_new_tokens: 40,
        stop: vec![],
    };
    let g = generate(
        s.as_mut(),
        model.tokenizer(),
        &ids,
        &mut sampler,
        &opts,
        &mut |_| {},
    )
    .unwrap();
    g.text.trim().to_string()
}

fn check(file: &str, backend: BackendKind) {
    let Some(path) = artifact(file) else { return };
    let opts = LoadOptions {
        backend,
        threads: Some(2),
        ..Default::default()
    };
    let model = dgpo::model::load(&path, &opts).unwrap();
    assert_eq!(
        answer(model.as_ref()),
        "The capital of France is Paris.",
        "{file} on {backend:?}"
    );
}

#[test]
fn smollm2_answers_the_france_question_candle() {
    check("smollm2-135m-instruct-q4_1.gguf", BackendKind::Candle);
}

#[test]
fn qwen_answers_the_france_question_candle() {
    check(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        BackendKind::Candle,
    );
}

#[cfg(feature = "llama")]
#[test]
fn smollm2_answers_the_france_question_llama_cpp() {
    check("smollm2-135m-instruct-q4_1.gguf", BackendKind::Llama);
}

#[cfg(feature = "llama")]
#[test]
fn qwen_answers_the_france_question_llama_cpp() {
    check(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        BackendKind::Llama,
    );
}
