//! The per-token cancellation hook libdgpo's cancel flag relies on: `generate_cancellable`
//! stops before the next token once the flag is up, not at the end of the turn.

use std::cell::Cell;
use std::path::Path;

use dgpo_core::Error;
use dgpo_core::generate::{GenerateOptions, generate, generate_cancellable};
use dgpo_core::model::LoadOptions;
use dgpo_core::sampling::{Sampler, SamplingParams};

#[test]
fn generation_stops_within_one_token() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-qwen2");
    let model = dgpo_core::model::load(&dir, &LoadOptions::default()).unwrap();
    let tok = model.tokenizer();
    let prompt = tok.encode("who wrote the iliad?").unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 12,
        stop: Vec::new(),
    };
    // Uncancelled, the turn runs past the point where we cancel below.
    let mut s = model.new_session().unwrap();
    let mut sampler = Sampler::new(SamplingParams::greedy());
    let full = generate(s.as_mut(), tok, &prompt, &mut sampler, &opts, &mut |_| {}).unwrap();
    assert!(full.tokens.len() > 3, "{} tokens", full.tokens.len());

    let polls = Cell::new(0);
    let pieces = Cell::new(0);
    let mut s = model.new_session().unwrap();
    let mut sampler = Sampler::new(SamplingParams::greedy());
    let r = generate_cancellable(
        s.as_mut(),
        tok,
        &prompt,
        &mut sampler,
        &opts,
        &mut |_| pieces.set(pieces.get() + 1),
        &|| {
            polls.set(polls.get() + 1);
            polls.get() > 3
        },
    );
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    assert_eq!(polls.get(), 4, "polled once per token");
    assert_eq!(pieces.get(), 3, "three tokens, then the cancel");
}
