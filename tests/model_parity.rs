//! The candle backend against HF transformers (reference logits written by
//! scripts/fixtures/make_fixtures.py), GGUF export round trips, and bad-input handling.

mod common;

use std::collections::HashMap;

use common::{assert_greedy_agrees, fixture, greedy, greedy_with_margins, max_abs_diff, reference};

/// How far Q8_0 rounding (of weights, and in the decode path of activations) moves the logits of
/// the tiny random fixtures: measured up to 0.06; a step whose top-2 margin is below this is a
/// tie on which two correct implementations may choose differently.
const Q8_TIE: f32 = 0.1;
use dgpo::model::export::{Quant, export_gguf};
use dgpo::model::{BackendKind, CandleModel, LanguageModel, LoadOptions};

fn load_hf(name: &str) -> CandleModel {
    CandleModel::from_hf_folder(&fixture(name), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn check_against_transformers(name: &str, tol: f32) {
    let dir = fixture(name);
    let r = reference(&dir);
    let model = load_hf(name);
    let mut s = model.new_session().unwrap();
    let logits = s.feed_all(&r.input_ids).unwrap();
    let diff = max_abs_diff(&logits, &r.logits);
    assert!(
        diff < tol,
        "{name}: max |logit diff| {diff} vs transformers"
    );
    let mut s = model.new_session().unwrap();
    let g = greedy(s.as_mut(), &r.input_ids, r.greedy_32.len());
    assert_eq!(
        g, r.greedy_32,
        "{name}: greedy continuation differs from transformers"
    );
}

#[test]
fn qwen2_logits_match_transformers() {
    check_against_transformers("tiny-qwen2", 1e-4);
}

#[test]
fn qwen2_bf16_logits_match_transformers() {
    check_against_transformers("tiny-qwen2-bf16", 1e-4);
}

#[test]
fn qwen2_sharded_checkpoint_loads() {
    check_against_transformers("tiny-qwen2-sharded", 1e-4);
}

#[test]
fn llama_logits_match_transformers() {
    check_against_transformers("tiny-llama", 1e-4);
}

#[test]
fn llama3_rope_scaling_logits_match_transformers() {
    check_against_transformers("tiny-llama3", 1e-4);
}

#[test]
fn incremental_prefill_equals_full_encoding() {
    let r = reference(&fixture("tiny-qwen2"));
    let model = load_hf("tiny-qwen2");
    let mut whole = model.new_session().unwrap();
    let full = whole.feed_all(&r.input_ids).unwrap();
    // Three turns: 7 tokens, 1 token, the rest: only new tokens are prefilled each time.
    let mut s = model.new_session().unwrap();
    let mut parts = s.feed_all(&r.input_ids[..7]).unwrap();
    parts.extend(s.feed_all(&r.input_ids[7..8]).unwrap());
    parts.extend(s.feed_all(&r.input_ids[8..]).unwrap());
    assert_eq!(s.len(), r.input_ids.len());
    let diff = max_abs_diff(&full, &parts);
    assert!(diff < 1e-5, "incremental vs whole: {diff}");
    // Rewinding and re-feeding reproduces the same logits (prefix reuse, stop-string trims).
    s.truncate(10).unwrap();
    let again = s.feed_all(&r.input_ids[10..]).unwrap();
    assert!(max_abs_diff(&full[10..], &again) < 1e-5);
}

fn export(name: &str, quant: Quant) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(format!("{name}.gguf"));
    export_gguf(&fixture(name), &out, quant).unwrap_or_else(|e| panic!("export {name}: {e}"));
    (tmp, out)
}

fn gguf_candle(path: &std::path::Path) -> CandleModel {
    let opts = LoadOptions {
        backend: BackendKind::Candle,
        ..Default::default()
    };
    CandleModel::from_gguf(path, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check_gguf_roundtrip(name: &str) {
    let r = reference(&fixture(name));
    let hf = load_hf(name);
    let (want, margins) = greedy_with_margins(hf.new_session().unwrap().as_mut(), &r.input_ids, 32);
    let (_tmp, f32_path) = export(name, Quant::F32);
    let m = gguf_candle(&f32_path);
    let logits = m.new_session().unwrap().feed_all(&r.input_ids).unwrap();
    assert!(
        max_abs_diff(&logits, &r.logits) < 1e-4,
        "{name}: f32 GGUF logits differ from transformers"
    );
    let (_tmp2, q8_path) = export(name, Quant::Q8_0);
    let m = gguf_candle(&q8_path);
    let got = greedy(m.new_session().unwrap().as_mut(), &r.input_ids, 32);
    // Q8_0 moves these random-weight logits by a few hundredths: the paths may only part on a
    // step whose top-2 margin is below that, and never in the first 16 steps.
    assert_greedy_agrees(
        &format!("{name}: Q8_0 GGUF vs f32 weights"),
        &want,
        &margins,
        &got,
        Q8_TIE,
        16,
    );
    // The tokenizer rebuilt from GGUF metadata encodes like tokenizer.json.
    let text = "Hello world, the capital of France is Paris.<|im_end|>";
    assert_eq!(
        m.tokenizer().encode(text).unwrap(),
        hf.tokenizer().encode(text).unwrap()
    );
}

#[test]
fn qwen2_gguf_export_roundtrip() {
    check_gguf_roundtrip("tiny-qwen2");
}

#[test]
fn llama_gguf_export_roundtrip() {
    // Exercises the Q/K permutation for llama.cpp's adjacent-pair rotation.
    check_gguf_roundtrip("tiny-llama");
}

#[cfg(feature = "llama")]
#[test]
fn llama_cpp_is_the_reference_for_gguf() {
    use dgpo::llama::LlamaModel;
    // Q4_K_M on these small rows falls back to Q5_0 (rows not a multiple of 256, as in
    // Qwen2.5-0.5B's real file): that exercises our own Q5_0 kernel against ggml's.
    // The random tiny models have near-ties everywhere; with Q5_0's coarser weights the two
    // greedy paths may part on one within the first steps, so there the logit bound is the check
    // (the real Q4_K_M file's greedy text is compared in tests/real_models.rs).
    for (name, quant, min_agree) in [
        ("tiny-qwen2", Quant::Q8_0, 16),
        ("tiny-llama", Quant::Q8_0, 16),
        ("tiny-qwen2", Quant::Q4KM, 0),
        ("tiny-llama", Quant::Q4KM, 0),
    ] {
        let r = reference(&fixture(name));
        let (_tmp, path) = export(name, quant);
        let name = format!("{name} {quant:?}");
        let candle = gguf_candle(&path);
        let lcpp = LlamaModel::load(
            &path,
            &LoadOptions {
                threads: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
        let b = lcpp.new_session().unwrap().feed_all(&r.input_ids).unwrap();
        // Both paths of candle (token by token: Q8_0 dot products on activations quantised to
        // Q8_0; whole prompt: dequantise-and-GEMM in f32) stay within Q8_0 rounding of llama.cpp.
        let mut s = candle.new_session().unwrap();
        let step: Vec<Vec<f32>> = r.input_ids.iter().map(|&t| s.feed(&[t]).unwrap()).collect();
        let whole = candle
            .new_session()
            .unwrap()
            .feed_all(&r.input_ids)
            .unwrap();
        for (path, a) in [("decode", &step), ("GEMM prefill", &whole)] {
            let diff = max_abs_diff(a, &b);
            eprintln!("{name}: candle ({path}) vs llama.cpp: max |diff| {diff}");
            assert!(
                diff < Q8_TIE,
                "{name}: candle ({path}) vs llama.cpp logits differ by {diff}"
            );
        }
        let (ga, margins) =
            greedy_with_margins(lcpp.new_session().unwrap().as_mut(), &r.input_ids, 32);
        let gb = greedy(candle.new_session().unwrap().as_mut(), &r.input_ids, 32);
        assert_greedy_agrees(
            &format!("{name}: candle vs llama.cpp"),
            &ga,
            &margins,
            &gb,
            Q8_TIE,
            min_agree,
        );
    }
}

// ---------------------------------------------------------------- bad input

fn err_of<T>(r: dgpo::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_gguf_is_refused_with_file_name() {
    let (tmp, path) = export("tiny-qwen2", Quant::Q8_0);
    let bytes = std::fs::read(&path).unwrap();
    for cut in [bytes.len() / 2, 100, 10] {
        let bad = tmp.path().join(format!("cut{cut}.gguf"));
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        let msg = err_of(CandleModel::from_gguf(&bad, &LoadOptions::default()));
        assert!(msg.contains(&format!("cut{cut}.gguf")), "{msg}");
        assert!(
            msg.contains("truncated") || msg.contains("not a valid GGUF"),
            "{msg}"
        );
    }
}

#[test]
fn gguf_with_wrong_tensor_shape_is_refused() {
    use dgpo::candle_core::quantized::gguf_file::{self, Value};
    let (tmp, path) = export("tiny-qwen2", Quant::F32);
    let mut f = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut tensors = Vec::new();
    for name in content.tensor_infos.keys() {
        let mut t = content
            .tensor(&mut f, name, &dgpo::candle_core::Device::Cpu)
            .unwrap();
        if name == "blk.1.ffn_up.weight" {
            // (128, 64) -> (64, 64): a wrong shape for this model.
            // Copied out: candle's quantizer reads the whole storage of a narrowed view.
            let rows = t
                .dequantize(&dgpo::candle_core::Device::Cpu)
                .unwrap()
                .narrow(0, 0, 64)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let d = dgpo::candle_core::Tensor::new(rows, &dgpo::candle_core::Device::Cpu).unwrap();
            t = dgpo::candle_core::quantized::QTensor::quantize(
                &d,
                dgpo::candle_core::quantized::GgmlDType::F32,
            )
            .unwrap();
        }
        tensors.push((name.clone(), t));
    }
    let md: Vec<(String, Value)> = content.metadata.into_iter().collect();
    let bad = tmp.path().join("shape.gguf");
    let mut w = std::fs::File::create(&bad).unwrap();
    gguf_file::write(
        &mut w,
        &md.iter().map(|(k, v)| (k.as_str(), v)).collect::<Vec<_>>(),
        &tensors
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let msg = err_of(CandleModel::from_gguf(&bad, &LoadOptions::default()));
    assert!(
        msg.contains("shape.gguf") && msg.contains("blk.1.ffn_up.weight") && msg.contains("shape"),
        "{msg}"
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn safetensors_with_missing_tensor_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_dir(&fixture("tiny-qwen2"), &dir);
    let st = dir.join("model.safetensors");
    let mut ts: HashMap<String, dgpo::candle_core::Tensor> =
        dgpo::candle_core::safetensors::load(&st, &dgpo::candle_core::Device::Cpu).unwrap();
    ts.remove("model.layers.1.mlp.down_proj.weight").unwrap();
    dgpo::candle_core::safetensors::save(&ts, &st).unwrap();
    let msg = err_of(CandleModel::from_hf_folder(&dir, &LoadOptions::default()));
    assert!(
        msg.contains("model.safetensors") && msg.contains("model.layers.1.mlp.down_proj.weight"),
        "{msg}"
    );
}

#[test]
fn truncated_safetensors_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_dir(&fixture("tiny-qwen2"), &dir);
    let st = dir.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() - 1000]).unwrap();
    let msg = err_of(CandleModel::from_hf_folder(&dir, &LoadOptions::default()));
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn unknown_architecture_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_dir(&fixture("tiny-qwen2"), &dir);
    let cfg = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("\"qwen2\"", "\"mamba\"");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let msg = err_of(CandleModel::from_hf_folder(&dir, &LoadOptions::default()));
    assert!(
        msg.contains("config.json") && msg.contains("mamba"),
        "{msg}"
    );
    // Not a model at all.
    let junk = tmp.path().join("junk.bin");
    std::fs::write(&junk, b"hello").unwrap();
    let msg = err_of(dgpo::model::load(&junk, &LoadOptions::default()).map(|_| ()));
    assert!(msg.contains("junk.bin") && msg.contains("GGUF"), "{msg}");
}

#[test]
fn out_of_vocabulary_ids_are_an_error_not_a_panic() {
    let model = load_hf("tiny-qwen2");
    let mut s = model.new_session().unwrap();
    assert!(s.feed(&[1, 2, 100_000]).is_err());
    assert!(s.feed(&[]).is_err());
}

#[test]
fn transformers5_config_keys_parse_the_same() {
    // transformers 5 writes `rope_parameters` instead of `rope_theta`/`rope_scaling`.
    use dgpo::model::hf::read_config;
    for name in ["tiny-qwen2", "tiny-llama3"] {
        let old = read_config(&fixture(name).join("config.json")).unwrap();
        let new = read_config(&fixture(name).join("config.transformers5.json")).unwrap();
        assert_eq!(old, new, "{name}");
    }
}

#[test]
fn long_prefill_gemm_path_matches_token_by_token_decoding() {
    // Prompts of >= PREFILL_GEMM_MIN_ROWS tokens take the dequantise-and-GEMM path; single
    // tokens take candle's quantised dot products. Both must agree.
    let (_tmp, path) = export("tiny-qwen2", Quant::Q8_0);
    let m = gguf_candle(&path);
    let ids: Vec<u32> = (0..48u32).map(|i| (i * 37 + 5) % 500).collect();
    assert!(ids.len() >= dgpo::model::decoder::PREFILL_GEMM_MIN_ROWS);
    let batch = m.new_session().unwrap().feed_all(&ids).unwrap();
    let mut s = m.new_session().unwrap();
    let step: Vec<Vec<f32>> = ids.iter().map(|&t| s.feed(&[t]).unwrap()).collect();
    // The decode path quantises activations to Q8_0 (as llama.cpp does); GEMM keeps them f32.
    let diff = max_abs_diff(&batch, &step);
    assert!(diff < Q8_TIE, "GEMM prefill vs quantised decode: {diff}");
    for (i, (a, b)) in batch.iter().zip(&step).enumerate() {
        let mut sorted = a.clone();
        sorted.sort_by(|x, y| y.total_cmp(x));
        if sorted[0] - sorted[1] >= 2.0 * Q8_TIE {
            assert_eq!(
                dgpo::sampling::argmax(a),
                dgpo::sampling::argmax(b),
                "position {i}"
            );
        }
    }
}

/// `LoadOptions::placement` is honoured: the same folder loaded in bf16 runs in bf16 (its logits
/// move off transformers' f32 ones by bf16 rounding, not by 0) and stays close to them.
#[test]
fn qwen2_placed_in_bf16_runs_in_bf16_near_the_f32_reference() {
    use dgpo::model::Placement;
    let dir = fixture("tiny-qwen2");
    let r = reference(&dir);
    let placement = Placement::parse("cpu", "bf16").unwrap();
    let model = CandleModel::from_hf_folder(&dir, &LoadOptions::on(&placement)).unwrap();
    assert_eq!(model.decoder().dtype(), candle_core::DType::BF16);
    let logits = model.new_session().unwrap().feed_all(&r.input_ids).unwrap();
    let diff = max_abs_diff(&logits, &r.logits);
    // f32 agrees to 1e-4 (above); bf16 keeps 8 bits of mantissa.
    assert!(
        diff > 1e-3 && diff < 0.1,
        "bf16 max |logit diff| {diff} vs transformers' f32"
    );
}

/// Every tensor of an HF folder, as f32 values by name.
fn folder_tensors(dir: &std::path::Path) -> HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    dgpo::candle_core::safetensors::load_buffer(&bytes, &dgpo::candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            let v = t
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (n, v)
        })
        .collect()
}

/// GGUF → HF folder is the inverse of export: an f32 file imports back to the fixture's
/// tensors bit for bit (Llama's Q/K permutation undone), and the folder computes transformers'
/// logits with the same tokenizer, end-of-generation ids and chat template as the fixture.
fn check_import_inverts_export(name: &str) {
    use dgpo::model::import::import_gguf;
    let (tmp, gguf) = export(name, Quant::F32);
    let out = tmp.path().join("imported");
    import_gguf(&gguf, &out, candle_core::DType::F32).unwrap();
    let (want, got) = (folder_tensors(&fixture(name)), folder_tensors(&out));
    let mut names: Vec<_> = want.keys().collect();
    names.sort();
    assert_eq!(
        {
            let mut g: Vec<_> = got.keys().collect();
            g.sort();
            g
        },
        names,
        "{name}: tensor names"
    );
    for n in names {
        assert!(
            want[n] == got[n],
            "{name}: tensor {n} differs after the round trip"
        );
    }
    let r = reference(&fixture(name));
    let (orig, back) = (
        load_hf(name),
        CandleModel::from_hf_folder(&out, &LoadOptions::default()).unwrap(),
    );
    let logits = back.new_session().unwrap().feed_all(&r.input_ids).unwrap();
    let diff = max_abs_diff(&logits, &r.logits);
    assert!(
        diff < 1e-4,
        "{name}: imported logits {diff} off transformers'"
    );
    let text = "Hello world, the capital of France is Paris.<|im_end|>";
    assert_eq!(
        back.tokenizer().encode(text).unwrap(),
        orig.tokenizer().encode(text).unwrap()
    );
    assert_eq!(
        back.tokenizer().eos_ids(),
        gguf_candle(&gguf).tokenizer().eos_ids()
    );
    assert!(!back.tokenizer().eos_ids().is_empty());
    assert_eq!(back.tokenizer().bos_id(), orig.tokenizer().bos_id());
    let chat = [dgpo::chat::Message::new("user", "Who wrote it?")];
    assert_eq!(
        back.chat_template().map(|t| t.render(&chat, true).unwrap()),
        orig.chat_template().map(|t| t.render(&chat, true).unwrap()),
        "{name}: chat template"
    );
    // The folder is complete: nothing temporary is left beside it.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn qwen2_gguf_import_inverts_export() {
    check_import_inverts_export("tiny-qwen2");
}

#[test]
fn llama_gguf_import_inverts_export() {
    check_import_inverts_export("tiny-llama");
}

/// A quantised file imports to its dequantised weights: the folder's f32 logits agree with the
/// GGUF's own (which quantise activations in the Q8_0 matmul) to that rounding, and greedy
/// decoding takes the same path.
#[test]
fn quantised_gguf_imports_to_its_dequantised_weights() {
    use dgpo::model::import::import_gguf;
    let (tmp, gguf) = export("tiny-qwen2", Quant::Q8_0);
    let out = tmp.path().join("q8");
    import_gguf(&gguf, &out, candle_core::DType::F32).unwrap();
    let r = reference(&fixture("tiny-qwen2"));
    let q = gguf_candle(&gguf);
    let hf = CandleModel::from_hf_folder(&out, &LoadOptions::default()).unwrap();
    let (a, b) = (
        q.new_session().unwrap().feed_all(&r.input_ids).unwrap(),
        hf.new_session().unwrap().feed_all(&r.input_ids).unwrap(),
    );
    let diff = max_abs_diff(&a, &b);
    assert!(diff < Q8_TIE, "Q8_0 GGUF vs its import: {diff}");
    // Not the original weights: Q8_0 rounding moved them.
    assert!(max_abs_diff(&b, &r.logits) > 1e-4);
    let (want, margins) = greedy_with_margins(q.new_session().unwrap().as_mut(), &r.input_ids, 32);
    let got = greedy(hf.new_session().unwrap().as_mut(), &r.input_ids, 32);
    assert_greedy_agrees("Q8_0 GGUF vs its import", &want, &margins, &got, Q8_TIE, 16);
}

/// Bad input loses nothing: an existing folder is refused untouched, a truncated file is
/// refused by name, and neither leaves a folder or a temporary behind.
#[test]
fn import_refuses_existing_folders_and_truncated_files() {
    use dgpo::model::import::import_gguf;
    let (tmp, gguf) = export("tiny-qwen2", Quant::Q8_0);
    let existing = tmp.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    std::fs::write(existing.join("keep.txt"), "mine").unwrap();
    let msg = err_of(import_gguf(&gguf, &existing, candle_core::DType::F32));
    assert!(
        msg.contains("existing") && msg.contains("already exists"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read_to_string(existing.join("keep.txt")).unwrap(),
        "mine"
    );

    let bytes = std::fs::read(&gguf).unwrap();
    let bad = tmp.path().join("cut.gguf");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let out = tmp.path().join("from-cut");
    let msg = err_of(import_gguf(&bad, &out, candle_core::DType::F32));
    assert!(
        msg.contains("cut.gguf") && msg.contains("truncated"),
        "{msg}"
    );
    assert!(!out.exists());
    let msg = err_of(import_gguf(&gguf, &out, candle_core::DType::U8));
    assert!(msg.contains("f32, bf16 or f16"), "{msg}");
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}
