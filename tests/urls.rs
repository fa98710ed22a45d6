//! End-to-end tests of the `urls` input: a real HTTP server on 127.0.0.1 (a small one written here, on plain
//! threads, so that it can also be slow, answer 404 or 503, redirect, use chunked encoding, or drop the
//! connection mid-body), the real `supervisor` binary, and expected values from `sha256sum` and `wc` run on the
//! same bytes written to disk. Nothing outside loopback is contacted.

#[path = "common/mod.rs"]
#[expect(
    dead_code,
    reason = "the helpers are shared with e2e.rs; this suite uses only some of them"
)]
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Job, Prng, run, tool, wc, write_file};

/// What the test server can be asked for (by path).
#[derive(Default)]
struct Routes {
    /// `/f/NAME`: these bytes, with a Content-Length.
    files: HashMap<String, Arc<Vec<u8>>>,
}

/// A test HTTP/1.1 server on 127.0.0.1, one thread per connection, one request per connection.
///
/// Paths: `/f/NAME` a file; `/slow/NAME` the same after 300 ms, its body in two halves 100 ms apart;
/// `/chunked/NAME` the same with chunked encoding (no length); `/redirect/NAME` a 302 to `/f/NAME`;
/// `/drop/NAME` announces the whole length, sends half and closes; `/flaky/NAME` answers 503 the first time and
/// the file after; `/gate/NAME` answers 503 until `open` is set; anything else 404. The server stops when dropped.
struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<HashMap<String, u64>>>,
    open: Arc<AtomicBool>,
    accepter: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(routes: Routes) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(HashMap::new()));
        let open = Arc::new(AtomicBool::new(false));
        let routes = Arc::new(routes);
        let accepter = {
            let (stop, requests, open) = (Arc::clone(&stop), Arc::clone(&requests), Arc::clone(&open));
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (routes, requests, open) = (Arc::clone(&routes), Arc::clone(&requests), Arc::clone(&open));
                    std::thread::spawn(move || {
                        let _ = serve(stream, &routes, &requests, &open);
                    });
                }
            })
        };
        Server {
            port,
            stop,
            requests,
            open,
            accepter: Some(accepter),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self, path: &str) -> u64 {
        self.requests.lock().expect("lock").get(path).copied().unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accepter) = self.accepter.take() {
            let _ = accepter.join();
        }
    }
}

fn serve(
    stream: TcpStream,
    routes: &Routes,
    requests: &Mutex<HashMap<String, u64>>,
    open: &AtomicBool,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
    }
    let seen = {
        let mut requests = requests.lock().expect("lock");
        let count = requests.entry(path.clone()).or_insert(0);
        *count += 1;
        *count
    };
    let mut out = stream;
    let route = path.split('?').next().unwrap_or("");
    let (kind, name) = route.trim_start_matches('/').split_once('/').unwrap_or(("", ""));
    let Some(body) = routes.files.get(name).cloned() else {
        return respond(&mut out, "404 Not Found", b"no such file\n");
    };
    match kind {
        "f" => respond(&mut out, "200 OK", &body),
        "slow" => {
            std::thread::sleep(Duration::from_millis(300));
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            let half = body.len() / 2;
            out.write_all(&body[..half])?;
            out.flush()?;
            std::thread::sleep(Duration::from_millis(100));
            out.write_all(&body[half..])
        }
        "chunked" => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            )?;
            for piece in body.chunks(7000) {
                write!(out, "{:x}\r\n", piece.len())?;
                out.write_all(piece)?;
                out.write_all(b"\r\n")?;
            }
            out.write_all(b"0\r\n\r\n")
        }
        "redirect" => write!(
            out,
            "HTTP/1.1 302 Found\r\nLocation: /f/{name}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        "drop" => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            out.write_all(&body[..body.len() / 2])
            // The connection closes here, half-way through the announced body.
        }
        "flaky" if seen == 1 => respond(&mut out, "503 Service Unavailable", b"try again\n"),
        "flaky" => respond(&mut out, "200 OK", &body),
        "gate" if !open.load(Ordering::SeqCst) => respond(&mut out, "503 Service Unavailable", b"closed\n"),
        "gate" => respond(&mut out, "200 OK", &body),
        _ => respond(&mut out, "404 Not Found", b"no such route\n"),
    }
}

fn respond(out: &mut TcpStream, status: &str, body: &[u8]) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    out.write_all(body)?;
    out.flush()
}

/// Every line of a results file as JSON, by item number.
fn records(path: &Path) -> HashMap<u64, serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).expect("a JSON record");
            (record["item"].as_u64().expect("item number"), record)
        })
        .collect()
}

/// `sha256sum` of a file, as 64 hex digits.
fn sha256sum(path: &Path) -> String {
    let out = tool("sha256sum", &[path.as_os_str()], None, &[0]);
    out.split_whitespace().next().expect("a digest").to_string()
}

/// Generated files of varied sizes (0 bytes to a few hundred KiB), written to `dir` and served by name.
fn generated_files(dir: &Path, count: usize) -> (Routes, Vec<String>) {
    let mut prng = Prng::new(0x00c0_ffee);
    let mut routes = Routes::default();
    let mut names = Vec::new();
    for i in 0..count {
        let size = match i {
            0 => 0,
            1 => 1,
            _ => prng.below(300_000) as usize,
        };
        let mut bytes = prng.bytes(size);
        // Some newlines, so that line counts are not all zero.
        for b in bytes.iter_mut().step_by(61) {
            *b = b'\n';
        }
        let name = format!("file-{i}.bin");
        write_file(dir, &name, &bytes);
        routes.files.insert(name.clone(), Arc::new(bytes));
        names.push(name);
    }
    (routes, names)
}

/// What a URL must give: the bytes of this generated file, or a failure whose message says this (and its code).
type Expected<'a> = Result<&'a str, (&'a str, Option<i64>)>;

#[test]
fn fetched_bodies_give_the_same_digests_as_sha256sum_and_failed_fetches_name_their_cause() {
    let dir = common::temp_dir("urls");
    let (routes, names) = generated_files(dir.path(), 24);
    let server = Server::start(routes);
    // (url, the file whose bytes it must give, or the failure expected)
    let mut cases: Vec<(String, Expected)> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let route = match i % 6 {
            1 => "slow",
            2 => "chunked",
            3 => "redirect",
            4 => "flaky",
            _ => "f",
        };
        cases.push((server.url(&format!("/{route}/{name}")), Ok(name)));
    }
    cases.insert(5, (server.url("/f/no-such-file.bin"), Err(("404", Some(404)))));
    cases.insert(
        9,
        (
            server.url(&format!("/drop/{}", names[7])),
            Err(("reading the body", None)),
        ),
    );
    // A port nothing listens on (bound and closed at once).
    let closed = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port();
    cases.push((format!("http://127.0.0.1:{closed}/x"), Err(("onnect", None))));
    let mut list = String::from("# generated by the test\n\n");
    for (url, _) in &cases {
        list.push_str(url);
        list.push('\n');
    }
    write_file(dir.path(), "urls.txt", list);
    Job::urls("urls.txt")
        .fetch("concurrency", 4)
        .fetch("retries", 1)
        .fetch("retry_backoff", "10ms")
        .input("max_in_flight_bytes", "1MiB")
        .builtin("sha256")
        .workers(2)
        .results("out.jsonl")
        .write(dir.path());
    let ran = run(dir.path(), ["run", "--json", "job.toml"], 1);
    let summary = ran.summary();
    let records = records(&dir.path().join("out.jsonl"));
    assert_eq!(records.len(), cases.len(), "one record per URL");
    let mut body_bytes = 0;
    for (item, (url, expected)) in cases.iter().enumerate() {
        let record = &records[&(item as u64)];
        assert_eq!(record["input"]["url"], url.as_str(), "item {item}");
        match expected {
            Ok(name) => {
                let path = dir.path().join(name);
                body_bytes += std::fs::metadata(&path).expect("file").len();
                assert_eq!(record["status"], "ok", "item {item}: {record}");
                assert_eq!(record["value"], sha256sum(&path).as_str(), "item {item} ({url})");
            }
            Err((says, code)) => {
                assert_eq!(record["status"], "failed", "item {item}: {record}");
                assert_eq!(record["error"]["kind"], "fetch", "item {item}: {record}");
                let message = record["error"]["message"].as_str().expect("message");
                assert!(
                    message.contains(says) && message.contains(url.as_str()),
                    "item {item}: {message}"
                );
                assert_eq!(record["error"]["code"].as_i64(), *code, "item {item}: {record}");
            }
        }
    }
    // Retries: a flaky URL was asked twice (503, then the body); a 404 once; a dropped body twice (fetch_retries).
    assert_eq!(server.requests(&format!("/flaky/{}", names[4])), 2);
    assert_eq!(server.requests("/f/no-such-file.bin"), 1);
    assert_eq!(server.requests(&format!("/drop/{}", names[7])), 2);
    assert_eq!(summary["failed"], 3);
    assert_eq!(summary["fetch"]["failed"], 3);
    assert_eq!(summary["fetch"]["bytes"].as_u64(), Some(body_bytes));
    // Bodies do not cross the channel: the messages are a small fraction of the bytes processed.
    let ipc = summary["ipc_bytes"].as_u64().expect("ipc_bytes");
    assert!(body_bytes > 2_000_000, "the test should move megabytes ({body_bytes})");
    assert!(ipc < 32 << 10, "ipc_bytes {ipc} for {body_bytes} body bytes");
}

#[test]
fn every_byte_task_accepts_url_items() {
    let dir = common::temp_dir("urls");
    let (routes, names) = generated_files(dir.path(), 6);
    let server = Server::start(routes);
    let list: String = names.iter().map(|n| server.url(&format!("/f/{n}")) + "\n").collect();
    write_file(dir.path(), "urls.txt", list);
    for (task, args, flag) in [
        ("line-count", None, "-l"),
        ("word-count", None, "-w"),
        ("grep", Some("{ pattern = \"[a-f]\" }"), ""),
    ] {
        let mut job = Job::urls("urls.txt").builtin(task);
        if let Some(args) = args {
            job = job.args(args);
        }
        job.results("out.jsonl").write(dir.path());
        run(dir.path(), ["run", "--force", "job.toml"], 0);
        let records = records(&dir.path().join("out.jsonl"));
        for (item, name) in names.iter().enumerate() {
            let path = dir.path().join(name);
            let expected: u128 = if flag.is_empty() {
                let out = tool(
                    "grep",
                    &["-ca".as_ref(), "-E".as_ref(), "[a-f]".as_ref(), path.as_os_str()],
                    None,
                    &[0, 1],
                );
                out.trim().parse().expect("a count")
            } else {
                wc(flag, &path)
            };
            let got = records[&(item as u64)]["value"].as_u64().expect("a count");
            assert_eq!(u128::from(got), expected, "{task} of {name}");
        }
    }
}

/// The user's own code on URL items: a command per item reads the body through `{path}` (a memfd) and on stdin,
/// and gets the URL as `{url}`; a persistent Python worker reads it through `input["path"]`. Digests and sizes
/// against `sha256sum` and the file's length.
#[test]
fn commands_and_persistent_workers_read_fetched_bodies() {
    let dir = common::temp_dir("urls");
    let (routes, names) = generated_files(dir.path(), 5);
    let server = Server::start(routes);
    let urls: Vec<String> = names.iter().map(|n| server.url(&format!("/f/{n}"))).collect();
    write_file(
        dir.path(),
        "urls.txt",
        urls.iter().map(|u| format!("{u}\n")).collect::<String>(),
    );
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("../python");
    write_file(
        dir.path(),
        "size.py",
        format!(
            "import sys\nsys.path.insert(0, {:?})\nfrom supervisor_worker import serve, read_bytes\n\
             serve(lambda input: {{'len': len(read_bytes(input)), 'url': input['url']}})\n",
            helper.to_string_lossy()
        ),
    );
    let jobs = [
        (
            "command",
            Job::urls("urls.txt").command(&[
                "sh",
                "-c",
                "sha256sum < $1 | cut -c1-64; echo $2",
                "sh",
                "{path}",
                "{url}",
            ]),
        ),
        ("stdin", Job::urls("urls.txt").command(&["sha256sum"])),
        ("worker", Job::urls("urls.txt").worker(&["python3", "size.py"])),
    ];
    for (kind, task) in jobs {
        if kind == "worker"
            && std::process::Command::new("python3")
                .arg("-c")
                .arg("pass")
                .status()
                .is_err()
        {
            eprintln!("skipped the persistent worker: python3 is not installed");
            continue;
        }
        task.results("out.jsonl").write(dir.path());
        run(dir.path(), ["run", "--force", "job.toml"], 0);
        let records = records(&dir.path().join("out.jsonl"));
        for (item, name) in names.iter().enumerate() {
            let path = dir.path().join(name);
            let value = &records[&(item as u64)]["value"];
            let text = value.as_str().unwrap_or_default();
            match kind {
                "command" => assert_eq!(text, format!("{}\n{}", sha256sum(&path), urls[item]), "{kind} {name}"),
                "stdin" => assert!(text.starts_with(&sha256sum(&path)), "{kind} {name}: {value}"),
                _ => {
                    let len = std::fs::metadata(&path).expect("stat").len();
                    assert_eq!(value["len"].as_u64(), Some(len), "{kind} {name}: {value}");
                    assert_eq!(value["url"].as_str(), Some(urls[item].as_str()), "{kind} {name}");
                }
            }
        }
    }
}

#[test]
fn a_crash_on_a_url_item_costs_that_item_only() {
    let dir = common::temp_dir("urls");
    let (routes, names) = generated_files(dir.path(), 12);
    let server = Server::start(routes);
    let list: String = names.iter().map(|n| server.url(&format!("/f/{n}")) + "\n").collect();
    write_file(dir.path(), "urls.txt", list);
    Job::urls("urls.txt")
        .builtin("fault")
        .args("{ segfault = [5] }")
        .workers(2)
        .results("out.jsonl")
        .write(dir.path());
    run(dir.path(), ["run", "job.toml"], 1);
    let records = records(&dir.path().join("out.jsonl"));
    assert_eq!(records.len(), 12);
    for (item, record) in &records {
        if *item == 5 {
            assert_eq!(record["error"]["kind"], "signal", "{record}");
            assert_eq!(record["error"]["signal"], "SIGSEGV", "{record}");
        } else {
            assert_eq!(record["status"], "ok", "{record}");
            assert_eq!(record["value"].as_u64(), Some(*item), "{record}");
        }
    }
}

#[test]
fn failed_fetches_are_retried_from_the_journal_with_retry_failed() {
    let dir = common::temp_dir("urls");
    let (routes, names) = generated_files(dir.path(), 5);
    let server = Server::start(routes);
    let list: String = names
        .iter()
        .enumerate()
        .map(|(i, n)| server.url(&format!("/{}/{n}", if i == 2 { "gate" } else { "f" })) + "\n")
        .collect();
    write_file(dir.path(), "urls.txt", list);
    Job::urls("urls.txt")
        .fetch("retries", 0)
        .builtin("sha256")
        .results("out.jsonl")
        .write(dir.path());
    run(dir.path(), ["run", "job.toml"], 1);
    let first = records(&dir.path().join("out.jsonl"));
    assert_eq!(first[&2]["error"]["code"], 503);
    server.open.store(true, Ordering::SeqCst);
    let ran = run(dir.path(), ["run", "--retry-failed", "--json", "job.toml"], 0);
    assert_eq!(ran.summary()["resumed"], 4, "only the failed item runs again");
    let second = records(&dir.path().join("out.jsonl"));
    for (item, name) in names.iter().enumerate() {
        assert_eq!(
            second[&(item as u64)]["value"],
            sha256sum(&dir.path().join(name)).as_str(),
            "item {item}"
        );
    }
    // Only the gated URL was fetched again.
    assert_eq!(server.requests(&format!("/f/{}", names[0])), 1);
    assert_eq!(server.requests(&format!("/gate/{}", names[2])), 2);
}

/// Fetch far more than `max_in_flight_bytes` with a deliberately slow task: the supervisor's peak RSS (from
/// `wait4`'s rusage, measured by this test) stays far below what holding the bodies would take.
#[test]
fn backpressure_bounds_the_supervisors_memory() {
    const BODY: usize = 1 << 20;
    const COUNT: usize = 200;
    let dir = common::temp_dir("urls");
    let mut routes = Routes::default();
    let body = Arc::new(Prng::new(7).bytes(BODY));
    routes.files.insert("big.bin".into(), Arc::clone(&body));
    let server = Server::start(routes);
    // The same body under many URLs (a query string makes each distinct; the server ignores it).
    let list: String = (0..COUNT)
        .map(|i| server.url(&format!("/f/big.bin?{i}")) + "\n")
        .collect();
    write_file(dir.path(), "urls.txt", list);
    Job::urls("urls.txt")
        .input("max_in_flight_bytes", "4MiB")
        .builtin("fault")
        .args("{ delay_ms = 20 }")
        .workers(2)
        .results("out.jsonl")
        .write(dir.path());
    let mut child = std::process::Command::new(common::SUPERVISOR)
        .args(["run", "--json", "job.toml"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("stdout")).expect("stdout file"))
        .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr file"))
        .spawn()
        .expect("start supervisor");
    // wait4 on our own child's pid, for its peak RSS.
    let info = sys::process::wait4(sys::process::Pid::from_raw(child.id() as i32)).expect("wait4");
    // The child is reaped; `Child` must not wait for it again (its drop does not).
    let _ = child.try_wait();
    let stdout = std::fs::read_to_string(dir.path().join("stdout")).expect("stdout");
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).expect("stderr");
    assert_eq!(info.status, sys::process::ExitStatus::Code(0), "{stdout}\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect("summary");
    assert_eq!(summary["ok"], COUNT as u64);
    assert_eq!(summary["fetch"]["bytes"], (COUNT * BODY) as u64);
    let peak_rss = info.max_rss;
    let fetched = (COUNT * BODY) as u64;
    // 200 MiB fetched through a 4 MiB budget. The bound leaves room for the binary, the runtime and the
    // client's buffers (a debug build), but not for the bodies: measured 26 MiB here, and 173 MiB with a budget
    // of 1 GiB (the check fails then).
    assert!(
        peak_rss < 64 << 20,
        "supervisor peak RSS {} MiB after fetching {} MiB",
        peak_rss >> 20,
        fetched >> 20
    );
    assert!(
        summary["fetch"]["peak_in_flight_bytes"].as_u64() <= Some(4 << 20),
        "{summary}"
    );
}

#[test]
fn a_body_larger_than_the_budget_fails_its_item_instead_of_waiting_forever() {
    let dir = common::temp_dir("urls");
    let mut routes = Routes::default();
    routes.files.insert("big.bin".into(), Arc::new(vec![b'x'; 64 << 10]));
    routes.files.insert("small.bin".into(), Arc::new(b"small\n".to_vec()));
    let server = Server::start(routes);
    let list = format!(
        "{}\n{}\n{}\n",
        server.url("/f/big.bin"),
        server.url("/chunked/big.bin"),
        server.url("/f/small.bin")
    );
    write_file(dir.path(), "urls.txt", list);
    Job::urls("urls.txt")
        .input("max_in_flight_bytes", "16KiB")
        .builtin("line-count")
        .results("out.jsonl")
        .write(dir.path());
    run(dir.path(), ["run", "job.toml"], 1);
    let records = records(&dir.path().join("out.jsonl"));
    for item in [0, 1] {
        let message = records[&item]["error"]["message"].as_str().expect("message");
        assert!(message.contains("larger than max_in_flight_bytes"), "{message}");
    }
    assert_eq!(records[&2]["value"], 1);
}

#[test]
fn a_bad_urls_file_is_an_error_naming_its_line() {
    let dir = common::temp_dir("urls");
    write_file(
        dir.path(),
        "urls.txt",
        "# fine\nhttp://127.0.0.1:9/a\n\nftp://127.0.0.1/b\n",
    );
    Job::urls("urls.txt").builtin("sha256").write(dir.path());
    let ran = run(dir.path(), ["run", "job.toml"], 2);
    assert!(ran.stderr().contains("urls.txt:4:"), "{}", ran.stderr());
    assert!(ran.stderr().contains("ftp://127.0.0.1/b"), "{}", ran.stderr());
    write_file(dir.path(), "urls.txt", "# nothing\n\n");
    let ran = run(dir.path(), ["run", "job.toml"], 2);
    assert!(ran.stderr().contains("lists no URLs"), "{}", ran.stderr());
    // Fetch keys belong to a urls input.
    Job::range(0, 3)
        .fetch("timeout", "1s")
        .builtin("noop")
        .write(dir.path());
    let ran = run(dir.path(), ["run", "job.toml"], 2);
    assert!(
        ran.stderr().contains("job.toml:3:") && ran.stderr().contains("`fetch_timeout` applies only to a `urls` input"),
        "{}",
        ran.stderr()
    );
}

/// Width and height from a PNG's IHDR chunk, read by hand (signature, then length, `IHDR`, width, height).
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.len() > 24 && bytes[..8] == *b"\x89PNG\r\n\x1a\n" && bytes[12..16] == *b"IHDR");
    let word = |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    (word(16), word(20))
}

/// The thumbnail builtin takes URL items like files: the example images, served over HTTP, each give a
/// thumbnail whose size (from its PNG header) is the closed form of the documented rule.
#[test]
fn thumbnails_of_fetched_images_have_the_right_size() {
    let dir = common::temp_dir("urls");
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/images");
    let mut routes = Routes::default();
    let mut sizes = HashMap::new();
    for entry in std::fs::read_dir(&images).expect("example images") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name").to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).expect("read image");
        sizes.insert(name.clone(), png_size(&bytes));
        routes.files.insert(name, Arc::new(bytes));
    }
    assert!(sizes.len() >= 3, "too few example images in {}", images.display());
    let server = Server::start(routes);
    let names: Vec<&String> = sizes.keys().collect();
    let list: String = names.iter().map(|n| server.url(&format!("/f/{n}")) + "\n").collect();
    write_file(dir.path(), "urls.txt", list);
    Job::urls("urls.txt")
        .builtin("thumbnail")
        .args("{ out_dir = \"thumbs\", size = 50 }")
        .results("out.jsonl")
        .write(dir.path());
    run(dir.path(), ["run", "job.toml"], 0);
    let records = records(&dir.path().join("out.jsonl"));
    for (item, name) in names.iter().enumerate() {
        let (width, height) = sizes[*name];
        let (long, short) = (width.max(height), width.min(height));
        let scaled = ((2 * u64::from(short) * 50 + u64::from(long)) / (2 * u64::from(long))).max(1) as u32;
        let expected = match (width.max(height) <= 50, width >= height) {
            (true, _) => (width, height),
            (false, true) => (50, scaled),
            (false, false) => (scaled, 50),
        };
        let record = &records[&(item as u64)];
        let thumb = Path::new(record["value"]["path"].as_str().expect("thumbnail path"));
        assert!(thumb.starts_with(dir.path().join("thumbs")), "{record}");
        let stem = name.trim_end_matches(".png");
        assert!(
            thumb
                .file_name()
                .expect("name")
                .to_string_lossy()
                .starts_with(&format!("{stem}-")),
            "{record}"
        );
        assert_eq!(png_size(&std::fs::read(thumb).expect("thumbnail")), expected, "{name}");
    }
}

/// Ctrl-C while bodies are still being fetched: the run stops (exit 130) with what it recorded in the journal,
/// and `--resume` fetches and runs only the rest; every digest then matches `sha256sum`.
#[test]
fn a_stopped_url_job_resumes_where_it_stopped() {
    let dir = common::temp_dir("urls");
    let (routes, names) = generated_files(dir.path(), 30);
    let server = Server::start(routes);
    // Every body takes at least 300 ms to arrive, two at a time: the job lasts seconds.
    let list: String = names.iter().map(|n| server.url(&format!("/slow/{n}")) + "\n").collect();
    write_file(dir.path(), "urls.txt", list);
    Job::urls("urls.txt")
        .fetch("concurrency", 2)
        .builtin("sha256")
        .results("out.jsonl")
        .write(dir.path());
    let journal = dir.path().join("out.jsonl.journal");
    let mut job = common::Background::start(dir.path(), &["run", "--json", "job.toml"]);
    assert!(
        common::wait_until(Duration::from_secs(60), || common::complete_lines(&journal) >= 3),
        "no records appeared\n{}",
        job.context()
    );
    job.signal(libc::SIGINT);
    let status = job.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(130), "{}", job.context());
    let stopped: serde_json::Value = serde_json::from_str(job.stdout().trim()).expect("summary");
    let done = stopped["ok"].as_u64().expect("ok");
    assert!(
        stopped["not_run"].as_u64() > Some(0),
        "the job finished before the signal: {stopped}"
    );
    let ran = run(dir.path(), ["run", "--resume", "--json", "job.toml"], 0);
    assert_eq!(ran.summary()["resumed"].as_u64(), Some(done));
    // The fetch count covers the whole job after a resume: what this run fetched and what the earlier run
    // recorded (it ended short by the latter).
    let fetch = &ran.summary()["fetch"];
    let count = |key: &str| fetch[key].as_u64().unwrap_or_else(|| panic!("fetch.{key} in {fetch}"));
    assert_eq!(count("earlier"), done, "{fetch}");
    assert_eq!(
        count("fetched") + count("failed") + count("earlier"),
        names.len() as u64,
        "{fetch}"
    );
    let records = records(&dir.path().join("out.jsonl"));
    assert_eq!(records.len(), names.len());
    for (item, name) in names.iter().enumerate() {
        assert_eq!(
            records[&(item as u64)]["value"],
            sha256sum(&dir.path().join(name)).as_str(),
            "item {item}"
        );
    }
    // Items recorded before the stop were not fetched again.
    let fetched_twice = names
        .iter()
        .filter(|n| server.requests(&format!("/slow/{n}")) > 1)
        .count() as u64;
    assert!(
        fetched_twice <= names.len() as u64 - done,
        "{fetched_twice} fetched twice, {done} were done"
    );
}

/// A `urls` input split into N shards (N in 1, 2, 3, 7): each shard fetches only its own block of URLs, and
/// `merge` gives every item exactly once, each digest equal to `sha256sum` of the file served.
#[test]
fn shards_of_a_urls_input_cover_every_url_once() {
    let dir = common::temp_dir("urls");
    let (routes, names) = generated_files(dir.path(), 11);
    let server = Server::start(routes);
    let list: String = names.iter().map(|n| server.url(&format!("/f/{n}")) + "\n").collect();
    write_file(dir.path(), "urls.txt", list);
    Job::urls("urls.txt")
        .builtin("sha256")
        .results("out.jsonl")
        .write(dir.path());
    for shards in [1u64, 2, 3, 7] {
        for shard in 0..shards {
            run(
                dir.path(),
                ["run", "--quiet", "--shard", &format!("{shard}/{shards}"), "job.toml"],
                0,
            );
            // Each shard's own file holds its contiguous block of items, ⌊I·M/N⌋ .. ⌊(I+1)·M/N⌋.
            let own = records(&dir.path().join(format!("out.shard-{shard:04}-of-{shards:04}.jsonl")));
            let m = names.len() as u64;
            let mut items: Vec<u64> = own.keys().copied().collect();
            items.sort_unstable();
            assert_eq!(
                items,
                (shard * m / shards..(shard + 1) * m / shards).collect::<Vec<_>>(),
                "shard {shard}/{shards}"
            );
        }
        run(dir.path(), ["merge", "job.toml"], 0);
        let merged = records(&dir.path().join("out.jsonl"));
        assert_eq!(merged.len(), names.len(), "{shards} shards");
        for (item, name) in names.iter().enumerate() {
            assert_eq!(
                merged[&(item as u64)]["value"].as_str(),
                Some(sha256sum(&dir.path().join(name)).as_str()),
                "{name} with {shards} shards"
            );
        }
        for shard in 0..shards {
            std::fs::remove_file(dir.path().join(format!("out.shard-{shard:04}-of-{shards:04}.jsonl"))).expect("rm");
        }
    }
    // Every URL was fetched once per shard count: a shard fetches nothing outside its block.
    for name in &names {
        assert_eq!(server.requests(&format!("/f/{name}")), 4, "{name}");
    }
}
