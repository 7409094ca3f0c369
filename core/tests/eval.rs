//! Evaluation: datasets in Search-R1 / FlashRAG schemas, ARCap on hand-written traces (scores
//! computed by hand here), the evidence lookup and prompt, and `evaluate` on a tiny real model.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dgpo_core::corpus::Passage;
use dgpo_core::data::{self, Question};
use dgpo_core::eval::arcap::{rewrite_distance, trace_metrics};
use dgpo_core::eval::evidence::{
    EvidenceSource, Forced, evidence_prompt, find_evidence, run_forced,
};
use dgpo_core::eval::{
    EvalConfig, NamedModel, QuestionResult, Scores, Summary, evaluate, markdown_table,
};
use dgpo_core::protocol;
use dgpo_core::retrieve::{MemoryRetriever, Retriever};
use dgpo_core::sampling::SamplingParams;
use dgpo_core::trace::{Finish, Step, StepAction, Timings, Trace, TraceDoc};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn strings(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------- datasets

#[test]
fn search_r1_parquet_and_jsonl_give_the_same_questions() {
    let pq = data::load(&fixtures().join("data/searchr1_test.parquet")).unwrap();
    let js = data::load(&fixtures().join("data/searchr1_test.jsonl")).unwrap();
    assert_eq!(pq, js);
    assert_eq!(pq.len(), 6);
    assert_eq!(pq[0].id, "test_0");
    assert_eq!(pq[0].question, "what is the capital of france?");
    assert_eq!(pq[0].golden_answers, strings(&["Paris"]));
    assert_eq!(pq[0].data_source, "nq");
    assert_eq!(pq[3].id, "5a8b57f25542995d1e6f1371");
    assert_eq!(
        pq[3].golden_answers,
        strings(&["English Channel", "the English Channel"])
    );
    assert_eq!(pq[3].data_source, "hotpotqa");
    assert_eq!(
        pq[5].golden_answers,
        strings(&["Nile", "the Nile", "Nile River"])
    );
}

#[test]
fn flashrag_jsonl_takes_its_source_from_the_file() {
    let fr = data::load(&fixtures().join("data/flashrag_test.jsonl")).unwrap();
    assert_eq!(fr.len(), 6);
    assert!(fr.iter().all(|q| q.data_source == "flashrag_test"));
    assert_eq!(
        fr[2].golden_answers,
        strings(&["Albert Einstein", "Einstein"])
    );
    // FlashRAG's <dataset>/test.jsonl layout names the source by folder.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("musique")).unwrap();
    let p = dir.path().join("musique/test.jsonl");
    std::fs::write(
        &p,
        "{\"id\": \"a\", \"question\": \"q\", \"golden_answers\": [\"x\"]}\n",
    )
    .unwrap();
    assert_eq!(data::load(&p).unwrap()[0].data_source, "musique");
}

#[test]
fn a_jsonl_row_without_answers_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.jsonl");
    std::fs::write(
        &p,
        "{\"id\": \"a\", \"question\": \"q1\", \"golden_answers\": [\"x\"]}\n\n{\"id\": \"b\", \"question\": \"q2\"}\n",
    )
    .unwrap();
    let e = data::load(&p).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl:3:"), "{e}");
    assert!(e.contains("golden_answers") && e.contains("\"b\""), "{e}");
    std::fs::write(
        &p,
        "{\"id\": \"a\", \"question\": \"q1\", \"golden_answers\": [\"x\"]}\n{oops\n",
    )
    .unwrap();
    let e = data::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("bad.jsonl:2:") && e.contains("not valid JSON"),
        "{e}"
    );
    let other = dir.path().join("data.csv");
    std::fs::write(&other, "x").unwrap();
    assert!(
        data::load(&other)
            .unwrap_err()
            .to_string()
            .contains("unknown dataset format")
    );
}

/// A parquet file with an optional `golden_answers` string column, null in the second row.
fn write_parquet_with_a_null_answer(path: &Path) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    let schema = Arc::new(
        parse_message_type(
            "message schema { REQUIRED BYTE_ARRAY id (UTF8); REQUIRED BYTE_ARRAY question (UTF8); OPTIONAL BYTE_ARRAY golden_answers (UTF8); }",
        )
        .unwrap(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut w =
        SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build()))
            .unwrap();
    let mut rg = w.next_row_group().unwrap();
    let columns: [(Vec<&str>, Option<Vec<i16>>); 3] = [
        (vec!["r1", "r2"], None),
        (vec!["q1", "q2"], None),
        (vec!["A"], Some(vec![1, 0])),
    ];
    for (vals, def) in columns {
        let mut col = rg.next_column().unwrap().unwrap();
        let vals: Vec<ByteArray> = vals.iter().map(|s| ByteArray::from(*s)).collect();
        col.typed::<ByteArrayType>()
            .write_batch(&vals, def.as_deref(), None)
            .unwrap();
        col.close().unwrap();
    }
    rg.close().unwrap();
    w.close().unwrap();
}

#[test]
fn a_parquet_row_without_answers_is_reported_with_its_row() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nq.parquet");
    write_parquet_with_a_null_answer(&p);
    let e = data::load(&p).unwrap_err().to_string();
    assert!(e.contains("nq.parquet:2:") && e.contains("row 2"), "{e}");
    assert!(e.contains("\"r2\"") && e.contains("golden_answers"), "{e}");
    let junk = dir.path().join("junk.parquet");
    std::fs::write(&junk, b"not parquet at all").unwrap();
    let e = data::load(&junk).unwrap_err().to_string();
    assert!(e.contains("junk.parquet") && e.contains("parquet"), "{e}");
}

// ---------------------------------------------------------------- ARCap on hand-written traces

fn doc(id: &str, title: &str, text: &str) -> TraceDoc {
    TraceDoc {
        id: id.into(),
        title: title.into(),
        text: text.into(),
        score: 1.0,
    }
}

fn search_step(turn: usize, query: &str, docs: Vec<TraceDoc>, executed: bool) -> Step {
    let passages: Vec<Passage> = docs
        .iter()
        .map(|d| Passage {
            id: d.id.clone(),
            title: d.title.clone(),
            text: d.text.clone(),
        })
        .collect();
    Step {
        turn,
        generated: format!("<search> {query} </search>"),
        think: None,
        action: StepAction::Search {
            query: query.into(),
            docs,
            executed,
        },
        observation: executed.then(|| protocol::format_information(&passages)),
        prefill_tokens: 0,
        generated_tokens: 5,
        timings: Timings::default(),
    }
}

fn step(turn: usize, action: StepAction, observation: Option<&str>) -> Step {
    Step {
        turn,
        generated: String::new(),
        think: None,
        action,
        observation: observation.map(str::to_string),
        prefill_tokens: 0,
        generated_tokens: 3,
        timings: Timings::default(),
    }
}

fn trace(question: &str, answer: Option<&str>, steps: Vec<Step>, total_ms: f64) -> Trace {
    Trace {
        question: question.into(),
        answer: answer.map(str::to_string),
        finish: if answer.is_some() {
            Finish::Answered
        } else {
            Finish::TurnLimit
        },
        steps,
        response: String::new(),
        prompt_tokens: 100,
        generated_tokens: 20,
        observation_tokens: 40,
        timings: Timings {
            total_ms,
            ..Timings::default()
        },
    }
}

/// Q1: repeats the question as its query, finds the answer verbatim, copies it.
fn trace_one() -> (Trace, Vec<String>) {
    let t = trace(
        "Who wrote Hamlet?",
        Some("Shakespeare"),
        vec![
            search_step(
                0,
                "who wrote hamlet",
                vec![
                    doc(
                        "1",
                        "\"Hamlet\"",
                        "Hamlet is a tragedy by William Shakespeare.",
                    ),
                    doc("2", "\"Macbeth\"", "Macbeth is a play."),
                ],
                true,
            ),
            step(
                1,
                StepAction::Answer {
                    answer: "Shakespeare".into(),
                },
                None,
            ),
        ],
        1000.0,
    );
    (t, strings(&["William Shakespeare", "Shakespeare"]))
}

/// Q2: an invalid turn, one rewritten query whose block holds the answer only in other case,
/// an unexecuted final search, no answer.
fn trace_two() -> (Trace, Vec<String>) {
    let t = trace(
        "what is the capital of France",
        None,
        vec![
            step(0, StepAction::Invalid, Some(protocol::INVALID_ACTION)),
            search_step(
                1,
                "France capital city",
                vec![doc("3", "\"France\"", "Its capital is PARIS.")],
                true,
            ),
            search_step(2, "paris", vec![], false),
        ],
        3000.0,
    );
    (t, strings(&["Paris"]))
}

#[test]
fn rewrite_distance_by_hand() {
    assert_eq!(
        rewrite_distance("Who wrote Hamlet", "who wrote hamlet?"),
        0.0
    );
    // [france, capital, city] vs [what, is, capital, of, france]: at most one word can stay
    // aligned, so 4 edits over 5 words.
    assert!(
        (rewrite_distance("France capital city", "what is the capital of France") - 0.8).abs()
            < 1e-12
    );
    // Articles go first: [who, wrote, hamlet, play] vs [.., poem]: one substitution in four.
    assert!(
        (rewrite_distance("who wrote the hamlet play", "who wrote the hamlet poem") - 0.25).abs()
            < 1e-12
    );
    assert_eq!(rewrite_distance("", ""), 0.0);
    assert_eq!(rewrite_distance("x", ""), 1.0);
}

#[test]
fn trace_metrics_by_hand() {
    let (t1, g1) = trace_one();
    let m = trace_metrics(&t1, &g1);
    assert_eq!(m.searches, 1);
    assert!(m.hit && m.hit_normalized);
    assert_eq!((m.steps, m.invalid_steps), (2, 0));
    assert!(m.answered && m.copied_answer);
    assert_eq!(m.rewrite_distances, vec![0.0]);
    assert_eq!(m.repeated_queries, 1);
    assert_eq!(
        (m.prompt_tokens, m.generated_tokens, m.observation_tokens),
        (100, 20, 40)
    );
    assert_eq!(m.wall_ms, 1000.0);

    let (t2, g2) = trace_two();
    let m = trace_metrics(&t2, &g2);
    assert_eq!(m.searches, 1, "the final, unexecuted search does not count");
    assert!(!m.hit, "PARIS is not Paris verbatim");
    assert!(m.hit_normalized);
    assert_eq!((m.steps, m.invalid_steps), (3, 1));
    assert!(!m.answered && !m.copied_answer);
    assert_eq!(m.rewrite_distances.len(), 1);
    assert!((m.rewrite_distances[0] - 0.8).abs() < 1e-12);
    assert_eq!(m.repeated_queries, 0);
}

fn result_of(t: Trace, golden: Vec<String>, source: &str) -> QuestionResult {
    QuestionResult {
        id: t.question.clone(),
        question: t.question.clone(),
        data_source: source.into(),
        answer: t.answer.clone(),
        scores: Scores::of(t.answer.as_deref(), &golden),
        metrics: trace_metrics(&t, &golden),
        golden_answers: golden,
        evidence: None,
        trace: Some(t),
        error: None,
    }
}

#[test]
fn summary_by_hand() {
    let (t1, g1) = trace_one();
    let (t2, g2) = trace_two();
    let r1 = result_of(t1, g1, "nq");
    let r2 = result_of(t2, g2, "nq");
    let s = Summary::of([&r1, &r2]);
    assert_eq!(s.n, 2);
    assert_eq!(s.em, 0.5);
    assert_eq!(s.cover_em, 0.5);
    assert_eq!(s.f1, 0.5);
    assert_eq!(s.answered_rate, 0.5);
    assert_eq!(s.hit_ratio, 0.5);
    assert_eq!(s.hit_ratio_normalized, 1.0);
    assert_eq!(s.search_steps, 1.0);
    // 1 invalid turn out of 2 + 3 turns.
    assert!((s.invalid_rate - 0.2).abs() < 1e-12);
    // The one answer was copied.
    assert_eq!(s.copied_answer_rate, 1.0);
    // Queries: distance 0 (repeat) and 0.8.
    assert_eq!(s.repeated_query_rate, 0.5);
    assert!((s.rewrite_distance - 0.4).abs() < 1e-12);
    assert_eq!(s.evidence_n, 0);
    assert_eq!(s.em_without_think, None);
    assert_eq!(
        (s.prompt_tokens, s.generated_tokens, s.observation_tokens),
        (100.0, 20.0, 40.0)
    );
    assert_eq!(s.wall_ms, 2000.0);
}

// ---------------------------------------------------------------- evidence-given runs

fn corpus() -> Vec<Passage> {
    vec![
        Passage::from_contents("0", "\"Berlin\"\nBerlin is the capital of Germany."),
        Passage::from_contents("1", "\"Lyon\"\nLyon is a city in France, not its capital."),
        Passage::from_contents("2", "\"Paris\"\nParis is the capital of France."),
        Passage::from_contents("3", "\"Seine\"\nThe Seine flows through Paris."),
    ]
}

fn question(q: &str, golden: &[&str], evidence_ids: &[&str]) -> Question {
    Question {
        id: "q".into(),
        question: q.into(),
        golden_answers: strings(golden),
        data_source: "nq".into(),
        evidence_ids: strings(evidence_ids),
    }
}

#[test]
fn evidence_is_found_by_rank_then_dataset_then_corpus() {
    let c = corpus();
    let r = MemoryRetriever::new(c.clone());
    let q = question("what is the capital of France", &["Paris"], &["3"]);
    // BM25 ranks Paris (2) first for this question (hand-checked: it has capital, of, france).
    let hits = r.search(&q.question, 3).unwrap();
    assert_eq!(hits[0].passage.id, "2");
    let e = find_evidence(&q, &r, Some(&c), 20).unwrap().unwrap();
    assert_eq!(
        (e.passage.id.as_str(), e.source, e.rank),
        ("2", EvidenceSource::Retrieval, Some(1))
    );
    // A question whose retrieval misses the answer: the dataset's passage, then the corpus.
    let q = question("capital of Germany", &["Paris"], &["3"]);
    let top = r.search(&q.question, 1).unwrap();
    assert_eq!(top[0].passage.id, "0");
    let e = find_evidence(&q, &r, Some(&c), 1).unwrap().unwrap();
    assert_eq!(
        (e.passage.id.as_str(), e.source),
        ("3", EvidenceSource::Dataset)
    );
    let q = question("capital of Germany", &["Paris"], &[]);
    let e = find_evidence(&q, &r, Some(&c), 1).unwrap().unwrap();
    assert_eq!(
        (e.passage.id.as_str(), e.source, e.rank),
        ("2", EvidenceSource::Corpus, None)
    );
    // Without a corpus, nothing beyond retrieval.
    assert!(find_evidence(&q, &r, None, 1).unwrap().is_none());
    // No passage holds the answer.
    let q = question("capital of Germany", &["Madrid"], &[]);
    assert!(find_evidence(&q, &r, Some(&c), 20).unwrap().is_none());
}

fn tiny_model() -> Arc<dyn dgpo_core::model::LanguageModel> {
    dgpo_core::model::load(&fixtures().join("tiny-qwen2"), &Default::default()).unwrap()
}

#[test]
fn evidence_prompt_puts_the_block_then_the_forced_prefix() {
    let m = tiny_model();
    let p = &corpus()[2];
    let wo = evidence_prompt(m.as_ref(), "capital of france", p, Forced::Answer, true).unwrap();
    let base = dgpo_core::agent::build_prompt(m.as_ref(), "capital of france", true).unwrap();
    assert!(base.ends_with("<|im_start|>assistant\n"), "{base}");
    assert_eq!(
        wo,
        format!(
            "{base}<information>Doc 1(Title: \"Paris\") Paris is the capital of France.</information>\n\n<answer>"
        )
    );
    let w = evidence_prompt(m.as_ref(), "capital of france", p, Forced::Think, true).unwrap();
    assert_eq!(w, format!("{}<think>", &wo[..wo.len() - "<answer>".len()]));

    let q = question("capital of france", &["Paris"], &[]);
    let run = run_forced(
        m.as_ref(),
        &q,
        p,
        Forced::Answer,
        SamplingParams::greedy(),
        6,
        true,
    )
    .unwrap();
    assert!(run.text.starts_with("<answer>"));
    assert!(run.generated_tokens <= 6);
    // The answer is what the protocol parser reads from prefix + generation.
    let parsed = match protocol::parse_action(&run.text) {
        protocol::Action::Answer(a) => Some(a),
        _ => None,
    };
    assert_eq!(run.answer, parsed);
    assert_eq!(
        run.em,
        run.answer
            .as_deref()
            .map_or(0.0, |a| dgpo_core::eval::score::exact_match(
                a,
                &q.golden_answers
            ))
    );
}

#[test]
fn evaluate_runs_every_model_and_question_and_aggregates() {
    let m = tiny_model();
    let c = corpus();
    let r = MemoryRetriever::new(c.clone());
    let mut qs = vec![
        question("what is the capital of France", &["Paris"], &[]),
        question("capital of Germany", &["Berlin"], &[]),
        question("where is the Seine", &["nowhere-to-be-found"], &[]),
    ];
    qs[1].data_source = "hotpotqa".into();
    let mut cfg = EvalConfig::default();
    cfg.agent.max_turns = 1;
    cfg.agent.max_turn_tokens = 6;
    cfg.concurrency = 2;
    let models = [
        NamedModel {
            name: "a",
            model: m.as_ref(),
        },
        NamedModel {
            name: "b",
            model: m.as_ref(),
        },
    ];
    let rep = evaluate(&models, &r, Some(&c), &qs, &cfg).unwrap();
    assert_eq!(rep.models.len(), 2);
    for mr in &rep.models {
        assert_eq!(mr.questions.len(), 3);
        // Dataset order is kept despite two workers.
        let ids: Vec<&str> = mr.questions.iter().map(|q| q.question.as_str()).collect();
        assert_eq!(
            ids,
            qs.iter().map(|q| q.question.as_str()).collect::<Vec<_>>()
        );
        assert!(
            mr.questions
                .iter()
                .all(|q| q.error.is_none() && q.trace.is_some())
        );
        // Evidence exists for the first two questions only.
        let ev: Vec<bool> = mr.questions.iter().map(|q| q.evidence.is_some()).collect();
        assert_eq!(ev, vec![true, true, false]);
        assert_eq!(mr.overall.evidence_n, 2);
        assert_eq!(
            mr.by_source.keys().collect::<Vec<_>>(),
            vec!["hotpotqa", "nq"]
        );
        assert_eq!(mr.by_source["nq"].n, 2);
        assert_eq!(mr.overall, Summary::of(mr.questions.iter()));
    }
    // Greedy decoding: the same model gives the same answers twice.
    assert_eq!(
        rep.models[0]
            .questions
            .iter()
            .map(|q| &q.answer)
            .collect::<Vec<_>>(),
        rep.models[1]
            .questions
            .iter()
            .map(|q| &q.answer)
            .collect::<Vec<_>>()
    );
    let table = markdown_table(&rep);
    assert_eq!(table.lines().count(), 2 + 2 * 2 + 2, "{table}");
    assert!(table.contains("| hotpotqa | a | 1 |"), "{table}");
    // The report is plain JSON.
    let v = serde_json::to_value(&rep).unwrap();
    assert!(v["models"][0]["questions"][0]["trace"]["steps"].is_array());
}
