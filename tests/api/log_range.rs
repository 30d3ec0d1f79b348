//! `GET /jobs/{id}/output?offset=&limit=`: byte ranges of a job's combined output, and the
//! stream's `?after=`.

use std::time::Duration;

use crate::db_test;
use crate::helpers::{TestApp, TestDb};
use crate::stream::{Sse, Target};

/// A range read: its records `(stream, bytes)` and its `X-Output-*` headers.
pub struct Range {
    pub records: Vec<(u8, Vec<u8>)>,
    pub offset: i64,
    pub total: i64,
    pub last_seq: i64,
}

impl Range {
    /// Every byte of the range, in order.
    pub fn bytes(&self) -> Vec<u8> {
        self.records.iter().flat_map(|(_, b)| b.clone()).collect()
    }
}

/// Parse `[stream u8][len u32 BE][bytes]` records; panic on a malformed body.
pub fn records(body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut p = 0;
    while p < body.len() {
        assert!(p + 5 <= body.len(), "a cut record header at {p}");
        let stream = body[p];
        assert!(stream <= 1, "stream code {stream} at {p}");
        let len = u32::from_be_bytes(body[p + 1..p + 5].try_into().unwrap()) as usize;
        assert!(len > 0, "an empty record at {p}");
        assert!(p + 5 + len <= body.len(), "a cut record at {p}");
        out.push((stream, body[p + 5..p + 5 + len].to_vec()));
        p += 5 + len;
    }
    out
}

pub async fn range(app: &TestApp, id: &str, query: &str) -> Range {
    let resp = app
        .client
        .get(app.url(&format!("/api/v1/jobs/{id}/output{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{query}");
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/octet-stream"
    );
    let header = |name: &str| -> i64 { resp.headers()[name].to_str().unwrap().parse().unwrap() };
    let (offset, total, last_seq) = (
        header("x-output-offset"),
        header("x-output-total"),
        header("x-output-last-seq"),
    );
    let body = resp.bytes().await.unwrap();
    Range {
        records: records(&body),
        offset,
        total,
        last_seq,
    }
}

async fn raw(app: &TestApp, path: &str) -> Vec<u8> {
    let resp = app.client.get(app.url(path)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    resp.bytes().await.unwrap().to_vec()
}

/// The bytes of one stream among `records`.
fn of_stream(records: &[(u8, Vec<u8>)], stream: u8) -> Vec<u8> {
    (records.iter().filter(|(s, _)| *s == stream))
        .flat_map(|(_, b)| b.clone())
        .collect()
}

db_test!(
    a_range_read_gives_the_combined_output_by_byte,
    |db: TestDb| async move {
        let (app, _host, server) = TestApp::with_host(&db, &[]).await;
        let t = Target::of(&app, &server);
        // Interleaved streams, a character of 3 bytes, and enough lines for many chunks.
        let id = t
            .submit(
                "printf 'caf\\342\\202\\254 first\\n'; echo to-stderr >&2; seq 1 60000; \
             echo again-stderr >&2; printf 'last \\342\\202\\254'",
            )
            .await;
        let job = t.wait_done(&id, Duration::from_secs(60)).await;
        assert_eq!(job["status"], "completed", "{job}");

        let stdout = raw(&app, &format!("/api/v1/jobs/{id}/stdout")).await;
        let stderr = raw(&app, &format!("/api/v1/jobs/{id}/stderr")).await;
        let whole = range(&app, &id, "?offset=0&limit=4194304").await;
        let len = (stdout.len() + stderr.len()) as i64;
        assert_eq!(whole.total, len);
        assert_eq!(whole.offset, 0);
        assert_eq!(job["output_bytes"], len, "{job}");
        assert_eq!(of_stream(&whole.records, 0), stdout);
        assert_eq!(of_stream(&whole.records, 1), stderr);
        assert!(whole.records.len() > 2, "one record per chunk");
        // The chunks in the order they came (stdout and stderr are two pipes: which of their
        // first lines came first is up to the host).
        let all = whole.bytes();
        let head = String::from_utf8_lossy(&all[..40.min(all.len())]).into_owned();
        assert!(
            head.starts_with("caf€ first\n") || head.starts_with("to-stderr\ncaf€ first\n"),
            "{head:?}"
        );
        assert!(stdout.ends_with("last €".as_bytes()));

        // The default is 1 MiB from 0, and the seq is the last chunk's.
        let default = range(&app, &id, "").await;
        assert_eq!(default.bytes(), all);
        let (_, chunks) = app
            .get(&format!("/api/v1/jobs/{id}/logs?format=chunks"))
            .await;
        let chunks = chunks.as_array().unwrap();
        assert_eq!(
            default.last_seq,
            chunks.last().unwrap()["seq"].as_i64().unwrap()
        );

        // Windows of any size and alignment add up to the whole, stream for stream; a window
        // may cut a character (the client carries it over).
        for limit in [1_i64, 7, 4096, 100_003] {
            let (mut got, mut streams) = (Vec::new(), Vec::new());
            let mut offset = 0;
            while offset < len {
                let r = range(&app, &id, &format!("?offset={offset}&limit={limit}")).await;
                let n = r.bytes().len() as i64;
                assert!(
                    n > 0 && n <= limit,
                    "offset {offset} limit {limit}: {n} bytes"
                );
                assert_eq!(r.total, len);
                for (s, b) in &r.records {
                    streams.extend(std::iter::repeat_n(*s, b.len()));
                    got.extend_from_slice(b);
                }
                offset += n;
                if limit < 100 && offset > 64 * limit {
                    break; // small windows through the first records only
                }
            }
            assert_eq!(got, all[..got.len()], "limit {limit}");
            let whole_streams: Vec<u8> = whole
                .records
                .iter()
                .flat_map(|(s, b)| std::iter::repeat_n(*s, b.len()))
                .collect();
            assert_eq!(streams, whole_streams[..streams.len()], "limit {limit}");
            if limit >= 100 {
                assert_eq!(got.len() as i64, len);
            }
        }

        // Past the end: empty, with the total.
        let past = range(&app, &id, &format!("?offset={len}")).await;
        assert!(past.records.is_empty());
        assert_eq!(past.total, len);
        let far = range(&app, &id, "?offset=9223372036854775807&limit=4194304").await;
        assert!(far.records.is_empty());

        // Bad input: a JSON error, nothing read.
        for (query, status) in [
            ("?limit=0", 422),
            ("?limit=4194305", 422),
            ("?offset=-1", 422),
            ("?offset=abc", 400),
            ("?limit=1.5", 400),
        ] {
            let (got, body) = app.get(&format!("/api/v1/jobs/{id}/output{query}")).await;
            assert_eq!(got, status, "{query}: {body}");
            assert!(body["error"].is_string(), "{body}");
        }
        let (status, _) = app
            .get("/api/v1/jobs/0195f2a4-3b7c-7d8e-9f00-112233445566/output")
            .await;
        assert_eq!(status, 404);
        let (status, _) = app.get("/api/v1/jobs/not-a-uuid/output").await;
        assert_eq!(status, 404);
    }
);

db_test!(a_job_with_no_output_reads_empty, |db: TestDb| async move {
    let (app, _host, server) = TestApp::with_host(&db, &[]).await;
    let t = Target::of(&app, &server);
    let id = t.submit("true").await;
    t.wait_done(&id, Duration::from_secs(30)).await;
    let r = range(&app, &id, "").await;
    assert!(r.records.is_empty());
    assert_eq!((r.total, r.last_seq), (0, -1));
});

db_test!(
    the_stream_starts_after_the_seq_it_is_given,
    |db: TestDb| async move {
        let (app, _host, server) = TestApp::with_host(&db, &[]).await;
        let t = Target::of(&app, &server);
        let id = t
            .submit("for i in 1 2 3 4; do echo line-$i; sleep 0.05; done")
            .await;
        t.wait_done(&id, Duration::from_secs(30)).await;
        let mut all = Sse::open(&app, &id, None).await;
        let events = all.collect().await;
        let outputs: Vec<_> = events.iter().filter(|e| e.kind == "output").collect();
        assert!(outputs.len() >= 2, "{events:?}");
        let after = outputs[0].id;

        let url = app.url(&format!("/api/v1/jobs/{id}/stream?after={after}"));
        let mut resumed = Sse::open_url(&app.client, &url, None).await;
        let rest = resumed.collect().await;
        let rest_out: Vec<_> = rest.iter().filter(|e| e.kind == "output").collect();
        assert_eq!(rest_out.len(), outputs.len() - 1);
        assert!(rest_out.iter().all(|e| e.id > after));
        assert_eq!(rest.last().unwrap().kind, "complete");
        // Last-Event-ID wins over ?after.
        let mut header = Sse::open_url(&app.client, &url, Some("-1".into())).await;
        let again = header.collect().await;
        assert_eq!(
            again.iter().filter(|e| e.kind == "output").count(),
            outputs.len()
        );
        let (status, body) = app.get(&format!("/api/v1/jobs/{id}/stream?after=-2")).await;
        assert_eq!(status, 422, "{body}");
    }
);
