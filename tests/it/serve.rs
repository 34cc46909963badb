//! `ember serve` under load and abuse: limits (body size, read time, connections),
//! validated sampling parameters, concurrent requests (a short one is not queued behind a
//! long generation), generation in linear time with the KV cache, and an https:// engine.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::record::{start_server, teacher_dir};
use crate::{ember_ok, python, root, small_dataset, spawn_server};

fn post(url: &str, path: &str, body: &str) -> (u16, String) {
    match ureq::post(&format!("{url}{path}"))
        .set("Content-Type", "application/json")
        .send_string(body)
    {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("{path}: {e}"),
    }
}

fn host(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

#[test]
fn the_server_enforces_body_size_read_time_and_sampling_limits() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = teacher_dir(dir.path());
    let (_server, url) = start_server(
        &teacher,
        &[
            "--max-body-bytes",
            "100000",
            "--read-timeout",
            "1",
            "--max-connections",
            "2",
        ],
    );
    // a body over the limit: 413 from the headers alone, before any of the body is read
    let t0 = Instant::now();
    let mut conn = TcpStream::connect(host(&url)).unwrap();
    conn.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n")
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = conn.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    let big_secs = t0.elapsed().as_secs_f64();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("too large"), "{answer}");
    drop(conn);
    // a body that is over the limit without announcing it (chunked) is cut off with 413 too
    let chunk = "1, ".repeat(40_000);
    let mut conn = TcpStream::connect(host(&url)).unwrap();
    conn.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let mut sent = 0;
    while sent < 300_000 {
        let frame = format!("{:x}\r\n{chunk}\r\n", chunk.len());
        if conn.write_all(frame.as_bytes()).is_err() {
            break; // the server has answered and closed
        }
        sent += chunk.len();
    }
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    drop(conn);

    // sampling parameters outside their domain are 400s naming them
    for (path, body, needle) in [
        (
            "/v1/completions",
            r#"{"prompt": [1, 2], "temperature": -0.5}"#,
            "temperature must be non-negative",
        ),
        (
            "/v1/completions",
            r#"{"prompt": [1, 2], "top_p": 0}"#,
            "top_p must be in (0, 1]",
        ),
        (
            "/v1/completions",
            r#"{"prompt": [1, 2], "top_p": 1.5}"#,
            "top_p must be in (0, 1]",
        ),
        (
            "/v1/completions",
            r#"{"prompt": [1, 2], "n": 2}"#,
            "n = 2 is not supported",
        ),
        (
            "/v1/completions",
            r#"{"prompt": [1, 2], "top_k": -3}"#,
            "top_k must be",
        ),
        (
            "/v1/completions",
            r#"{"prompt": [1, 2], "temperature": "hot"}"#,
            "`temperature`",
        ),
        (
            "/generate",
            r#"{"input_ids": [1, 2], "sampling_params": {"n": 3}}"#,
            "n = 3 is not supported",
        ),
        (
            "/generate",
            r#"{"input_ids": [1, 2], "sampling_params": {"temperature": -1}}"#,
            "temperature must be non-negative",
        ),
        (
            "/generate",
            r#"{"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 0}}"#,
            "max_new_tokens must be at least 1",
        ),
        (
            "/generate",
            r#"{"input_ids": [1, 2], "logprob_start_len": 9}"#,
            "logprob_start_len 9",
        ),
        // settings engines honour and this server does not: refused, not ignored
        (
            "/v1/completions",
            r#"{"prompt": [1, 2], "echo": true}"#,
            "echo = true is not supported",
        ),
        (
            "/v1/completions",
            r#"{"prompt": [1, 2], "stream": true}"#,
            "stream = true is not supported",
        ),
        (
            "/v1/completions",
            r#"{"prompt": [1, 2], "stop": ["the"]}"#,
            "stop = ",
        ),
        (
            "/v1/completions",
            r#"{"prompt": [1, 2], "presence_penalty": 0.5}"#,
            "presence_penalty = Some(0.5)",
        ),
        (
            "/generate",
            r#"{"input_ids": [1, 2], "sampling_params": {"repetition_penalty": 1.2}}"#,
            "repetition_penalty = Some(1.2)",
        ),
        (
            "/generate",
            r#"{"input_ids": [1, 2], "stream": true}"#,
            "stream = true is not supported",
        ),
    ] {
        let (status, text) = post(&url, path, body);
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(needle), "{body}: {text}");
    }

    // their defaults, as OpenAI clients send them, are accepted
    let (status, text) = post(
        &url,
        "/v1/completions",
        r#"{"prompt": [1, 2], "max_tokens": 1, "stream": false, "stop": null, "presence_penalty": 0, "frequency_penalty": 0, "echo": false}"#,
    );
    assert_eq!(status, 200, "{text}");
    // SGLang's sampling_seed is honoured: the same seed samples the same tokens
    let sample = |seed: u64| {
        let body = format!(
            r#"{{"input_ids": [1, 2], "sampling_params": {{"max_new_tokens": 20, "temperature": 1.0, "sampling_seed": {seed}}}}}"#
        );
        let (status, text) = post(&url, "/generate", &body);
        assert_eq!(status, 200, "{text}");
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["output_ids"].clone()
    };
    assert_eq!(sample(7), sample(7));
    assert_ne!(sample(7), sample(8));

    // an idle connection and one that stops mid-body are both closed after the read timeout
    let idle = TcpStream::connect(host(&url)).unwrap();
    let mut slow = TcpStream::connect(host(&url)).unwrap();
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\"")
        .unwrap();
    let t0 = Instant::now();
    // both connection slots are taken: a third client waits until the server frees them
    let (status, text) = post(
        &url,
        "/v1/completions",
        r#"{"prompt": [1, 2], "max_tokens": 1}"#,
    );
    let waited = t0.elapsed().as_secs_f64();
    assert_eq!(status, 200, "{text}");
    assert!(
        waited > 0.5 && waited < 10.0,
        "third client waited {waited:.2}s"
    );
    let answer = |mut conn: TcpStream| {
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = Vec::new();
        let _ = conn.read_to_end(&mut buf); // ends when the server hangs up
        assert!(t0.elapsed() < Duration::from_secs(10));
        String::from_utf8_lossy(&buf).into_owned()
    };
    // the idle one is closed without a word; the stalled body gets 408 naming the timeout
    assert_eq!(answer(idle), "");
    let stalled = answer(slow);
    assert!(
        stalled.starts_with("HTTP/1.1 408") && stalled.contains("timed out"),
        "{stalled}"
    );
    eprintln!(
        "413 for an announced 50 MB body in {big_secs:.3}s; a third client behind 2 stalled connections was served after {waited:.2}s"
    );
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn short_requests_are_not_queued_behind_long_generations() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = teacher_dir(dir.path());
    let (_server, url) = start_server(&teacher, &["--workers", "3"]);
    let generate = |n: usize| {
        let body = format!(r#"{{"prompt": [1, 17, 42, 99], "max_tokens": {n}, "temperature": 0}}"#);
        let t0 = Instant::now();
        let (status, text) = post(&url, "/v1/completions", &body);
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["choices"][0]["token_ids"].as_array().unwrap().len(), n);
        t0.elapsed().as_secs_f64()
    };
    // generation is linear in its length with the KV cache
    let times: Vec<(usize, f64)> = [50usize, 100, 200]
        .iter()
        .map(|&n| (n, generate(n)))
        .collect();
    eprintln!("generation time by max_tokens: {times:?}");
    let (t50, t200) = (times[0].1, times[2].1);
    assert!(
        t200 < 8.0 * t50 + 0.5,
        "200 tokens {t200:.2}s vs 50 tokens {t50:.2}s: not linear"
    );

    // load: 2 clients generating 240 tokens, 4 clients asking prompt log-probabilities
    let start = Instant::now();
    let long: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                (0..2)
                    .map(|_| {
                        let t0 = Instant::now();
                        let (status, text) = post(&url, "/v1/completions", r#"{"prompt": [1, 5, 9], "max_tokens": 240, "temperature": 0.8, "seed": 3}"#);
                        assert_eq!(status, 200, "{text}");
                        t0.elapsed().as_secs_f64()
                    })
                    .collect::<Vec<f64>>()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let short: Vec<_> = (0..4i64)
        .map(|c| {
            let url = url.clone();
            std::thread::spawn(move || {
                (0..10i64)
                    .map(|i| {
                        let prompt: Vec<i64> = (0..32).map(|j| (j * 7 + i * 13 + c * 31) % 512).collect();
                        let body = serde_json::json!({"prompt": prompt, "max_tokens": 1, "prompt_logprobs": 5}).to_string();
                        let t0 = Instant::now();
                        let (status, text) = post(&url, "/v1/completions", &body);
                        assert_eq!(status, 200, "{text}");
                        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                        assert_eq!(v["choices"][0]["prompt_logprobs"].as_array().unwrap().len(), 32);
                        t0.elapsed().as_secs_f64()
                    })
                    .collect::<Vec<f64>>()
            })
        })
        .collect();
    let mut small: Vec<f64> = short.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let small_done = start.elapsed().as_secs_f64();
    let long: Vec<f64> = long.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let total = start.elapsed().as_secs_f64();
    small.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&small, 0.5), percentile(&small, 0.99));
    eprintln!(
        "load: {} short requests (32-token prompt_logprobs) p50 {:.3}s p99 {:.3}s, all done after {small_done:.2}s; {} long generations (240 tokens) {:?}s; {:.1} requests/s overall",
        small.len(),
        p50,
        p99,
        long.len(),
        long.iter()
            .map(|t| (t * 100.0).round() / 100.0)
            .collect::<Vec<_>>(),
        (small.len() + long.len()) as f64 / total
    );
    assert_eq!(small.len(), 40);
    assert_eq!(long.len(), 4);
    let longest = long.iter().cloned().fold(0.0, f64::max);
    // served while the generations ran, not after them
    assert!(
        p50 < longest / 2.0,
        "short p50 {p50:.3}s vs a long generation {longest:.2}s"
    );
}

#[test]
fn a_remote_teacher_over_https_records_like_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // a CA, and a certificate for 127.0.0.1 signed by it
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=ember test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);

    let teacher = teacher_dir(d);
    let (_server, url) = start_server(&teacher, &[]);
    let (proxy, https) = spawn_server(
        Command::new(python())
            .arg(root().join("tests/python/https_proxy.py"))
            .args(["srv.pem", "srv.key", &url])
            .current_dir(d),
    );
    assert!(https.starts_with("https://"), "{https}");
    let ds = small_dataset().to_str().unwrap().to_string();
    let record = |url: &str, out: &str, ca: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ember"));
        cmd.args([
            "record",
            "--remote",
            "vllm",
            "--url",
            url,
            "--model",
            "teacher",
            "--data",
            &ds,
            "--top-k",
            "4",
            "--out",
            out,
            "--max-rows",
            "4",
            "--remote-vocab-size",
            "512",
        ])
        .current_dir(d);
        if let Some(ca) = ca {
            cmd.env("SSL_CERT_FILE", d.join(ca));
        }
        cmd.output().unwrap()
    };
    // without the CA the certificate is refused, naming the TLS failure
    let out = record(&https, "untrusted", None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unknown CA must be refused");
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    let out = record(&https, "tls", Some("ca.pem"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ember_ok(
        d,
        &[
            "record",
            "--remote",
            "vllm",
            "--url",
            &url,
            "--model",
            "teacher",
            "--data",
            &ds,
            "--top-k",
            "4",
            "--out",
            "plain",
            "--max-rows",
            "4",
            "--remote-vocab-size",
            "512",
        ],
    );
    drop(proxy);
    let (_, a) = ember_data::read_logits_shard(&d.join("tls/train-00000.arrow")).unwrap();
    let (_, b) = ember_data::read_logits_shard(&d.join("plain/train-00000.arrow")).unwrap();
    assert_eq!(a, b, "the same rows over https and http");
}
