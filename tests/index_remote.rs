//! The remote retriever against a real HTTP server on loopback speaking Search-R1's
//! `POST /retrieve` API (a tiny std::net server, started by the test).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

use dgpo::corpus::Passage;
use dgpo::retrieve::{self, MemoryRetriever, RemoteRetriever, Retriever, RetrieverSpec};

/// Serve `/retrieve` over BM25 on a small corpus; `/fail` answers 500. Returns the base URL.
fn serve() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mem = MemoryRetriever::new(vec![
        Passage::from_contents("0", "\"Paris\"\nParis is the capital of France."),
        Passage::from_contents("1", "\"Seine\"\nThe Seine flows through Paris."),
        Passage::from_contents("2", "\"Berlin\"\nBerlin is the capital of Germany."),
    ]);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut s = stream.unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut request_line = String::new();
            r.read_line(&mut request_line).unwrap();
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let (status, reply) = if request_line.starts_with("POST /retrieve ") {
                let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let k = req["topk"].as_u64().unwrap() as usize;
                let scores = req["return_scores"].as_bool().unwrap_or(false);
                let result: Vec<Vec<serde_json::Value>> = req["queries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|q| {
                        mem.search(q.as_str().unwrap(), k)
                            .unwrap()
                            .into_iter()
                            .map(|h| {
                                let doc = serde_json::json!({"id": h.passage.id,
                                    "contents": h.passage.contents()});
                                if scores {
                                    serde_json::json!({"document": doc, "score": h.score})
                                } else {
                                    doc
                                }
                            })
                            .collect()
                    })
                    .collect();
                (
                    "200 OK",
                    serde_json::json!({ "result": result }).to_string(),
                )
            } else {
                ("500 Internal Server Error", "boom".to_string())
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    format!("http://{addr}")
}

#[test]
fn remote_retriever_round_trip() {
    let base = serve();
    let r = RemoteRetriever::new(&base).unwrap();
    assert_eq!(r.describe(), format!("remote({base}/retrieve)"));
    let res = r
        .search_batch(&["capital of germany", "river through paris"], 2)
        .unwrap();
    assert_eq!(res.len(), 2);
    assert_eq!(res[0][0].passage.id, "2");
    assert_eq!(res[0][0].passage.title, "\"Berlin\"");
    assert_eq!(res[0][0].passage.text, "Berlin is the capital of Germany.");
    // Scores are the server's own (BM25 here), best first.
    let local = MemoryRetriever::new(vec![
        Passage::from_contents("0", "\"Paris\"\nParis is the capital of France."),
        Passage::from_contents("1", "\"Seine\"\nThe Seine flows through Paris."),
        Passage::from_contents("2", "\"Berlin\"\nBerlin is the capital of Germany."),
    ]);
    assert_eq!(res[1], local.search("river through paris", 2).unwrap());
    // Through the factory the front ends use, with the full endpoint URL.
    let via = retrieve::open(&RetrieverSpec::Remote(format!("{base}/retrieve"))).unwrap();
    assert_eq!(
        via.search("capital of germany", 1).unwrap()[0].passage.id,
        "2"
    );
}

#[test]
fn remote_errors_name_the_url_and_status() {
    let base = serve();
    let r = RemoteRetriever::new(&format!("{base}/fail")).unwrap();
    let err = r.search("x", 1).unwrap_err().to_string();
    assert!(err.contains("/fail") && err.contains("500"), "{err}");
    // Nobody listening: a connection error, not a panic.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let err = RemoteRetriever::new(&url)
        .unwrap()
        .search("x", 1)
        .unwrap_err();
    assert!(err.to_string().contains(&url), "{err}");
    assert!(RemoteRetriever::new("ftp://x").is_err());
}
