//! The log viewer (`/assets/logview.js`) in a real headless Chromium, on jobs run over a real
//! sshd: ANSI colours, live lines, search over the whole log, the stream filters, and flat
//! memory on a 64 MiB log.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::browser::Browser;
use crate::helpers::{Db, TestApp, TestDb, TestHost};
use crate::stream::Target;

/// An app on SQLite with a test host, a browser, and the job target.
struct Setup {
    app: TestApp,
    _host: TestHost,
    _db: TestDb,
    target: Target,
    browser: Browser,
}

async fn setup(extra: &[(&str, &str)]) -> Option<Setup> {
    let browser = Browser::start().await?;
    let db = TestDb::create(Db::Sqlite).unwrap();
    let (app, host, server) = TestApp::with_host(&db, extra).await;
    let target = Target::of(&app, &server);
    Some(Setup {
        app,
        _host: host,
        _db: db,
        target,
        browser,
    })
}

impl Setup {
    /// Open the viewer's page on job `id`.
    async fn open(&self, id: &str) {
        let url = self.app.url(&format!("/assets/logview-dev.html?job={id}"));
        self.browser.goto(&url).await;
        self.browser
            .wait_until("window.viewer", Duration::from_secs(10))
            .await;
    }

    async fn wait_state(&self, state: &str, bound: Duration) {
        self.browser
            .wait_until(
                &format!("document.getElementById('log').dataset.state === '{state}'"),
                bound,
            )
            .await;
    }

    /// The texts of the lines in the DOM.
    async fn lines(&self) -> Vec<String> {
        let v = self
            .browser
            .eval("return [...document.querySelectorAll('#log .log-line')].map(e => e.textContent)")
            .await;
        serde_json::from_value(v).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ansi_red_renders_red_and_escapes_are_dropped() {
    let Some(s) = setup(&[]).await else { return };
    let id = s
        .target
        .submit(
            "printf '\\033[31mred text\\033[0m plain\\n'; \
             printf '\\033[1;32mbold green\\033[22m not bold\\033[39m\\n'; \
             printf '\\033]0;a title\\007\\033[2K\\033[Hcursor moved\\n'; \
             printf 'progress 10%%\\rprogress 100%%\\n'; \
             printf '\\033[38;5;208morange\\033[0m \\033[48;2;0;0;255mblue bg\\033[0m\\n'; \
             echo '<img src=x onerror=alert(1)><b>not bold</b>'; \
             echo 'to stderr' >&2",
        )
        .await;
    s.target.wait_done(&id, Duration::from_secs(30)).await;
    s.open(&id).await;
    s.wait_state("done", Duration::from_secs(10)).await;
    let b = &s.browser;
    // `done` says the job ended; its lines may still be on their way from the range read.
    b.wait_until(
        "[...document.querySelectorAll('#log .log-line span')].some(s => s.textContent === 'red text')",
        Duration::from_secs(10),
    )
    .await;

    let red = b
        .eval(
            "const e = [...document.querySelectorAll('#log .log-line span')]
                 .find(s => s.textContent === 'red text');
             return e ? getComputedStyle(e).color : null",
        )
        .await;
    let rgb: Vec<u32> = red
        .as_str()
        .unwrap_or_else(|| panic!("no span 'red text': {:?}", red))
        .trim_start_matches("rgb(")
        .trim_end_matches(')')
        .split(',')
        .map(|c| c.trim().parse().unwrap())
        .collect();
    assert!(
        rgb[0] > 150 && rgb[1] < 100 && rgb[2] < 100,
        "not red: {red}"
    );
    // stdout and stderr are two pipes: where the stderr line falls is up to the host.
    let mut lines = s.lines().await;
    let err = lines
        .iter()
        .position(|l| l == "to stderr")
        .expect("the stderr line");
    lines.remove(err);
    assert_eq!(
        lines,
        [
            "red text plain",
            "bold green not bold",
            "cursor moved",
            "progress 100%",
            "orange blue bg",
            "<img src=x onerror=alert(1)><b>not bold</b>",
        ],
        "{lines:?}"
    );
    let all = b
        .eval("return document.getElementById('log').textContent")
        .await;
    let all = all.as_str().unwrap();
    assert!(!all.contains('\u{1b}') && !all.contains("[31m") && !all.contains("a title"));
    // The untrusted text stays text.
    let tags = b
        .eval("return document.querySelectorAll('#log .log-line img, #log .log-line b').length")
        .await;
    assert_eq!(tags, 0);
    let styles = b
        .eval(
            "const find = t => [...document.querySelectorAll('#log .log-line span')]
                 .find(s => s.textContent === t);
             const g = find('bold green'), n = find(' not bold'), o = find('orange'),
                   bg = find('blue bg');
             return [getComputedStyle(g).fontWeight, getComputedStyle(g).color,
                     getComputedStyle(n).fontWeight, getComputedStyle(o).color,
                     getComputedStyle(bg).backgroundColor]",
        )
        .await;
    assert_eq!(styles[0], "700", "{styles}");
    assert_eq!(styles[2], "400", "{styles}");
    assert_eq!(styles[3], "rgb(255, 135, 0)", "{styles}");
    assert_eq!(styles[4], "rgb(0, 0, 255)", "{styles}");
    let stderr = b
        .eval("return [...document.querySelectorAll('#log .log-line.stderr')].map(e => e.textContent)")
        .await;
    assert_eq!(stderr, serde_json::json!(["to stderr"]));
    let path = b.screenshot("log-viewer").await;
    println!("screenshot: {}", path.display());
    s.browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_arrive_while_the_job_runs_and_a_dropped_stream_loses_none() {
    let Some(s) = setup(&[]).await else { return };
    let id = s
        .target
        .submit("for i in 1 2 3 4 5; do echo line-$i; sleep 1; done")
        .await;
    s.open(&id).await;
    let b = &s.browser;
    b.wait_until(
        "[...document.querySelectorAll('#log .log-line')].some(e => e.textContent === 'line-1')",
        Duration::from_secs(15),
    )
    .await;
    let (_, job) = s.target.job(&id).await;
    assert_eq!(
        job["status"], "running",
        "line-1 is shown while the job runs: {job}"
    );
    assert_eq!(
        b.eval("return document.getElementById('log').dataset.state")
            .await,
        "live"
    );
    // Drop the stream mid-job: the viewer resumes from the last id it saw.
    b.wait_until("window.viewer.lineCount >= 2", Duration::from_secs(10))
        .await;
    b.eval("window.viewer._dropStream(); return null").await;
    s.wait_state("done", Duration::from_secs(20)).await;
    assert_eq!(b.eval("return window.viewer.lineCount").await, 5);
    let lines = s.lines().await;
    assert_eq!(lines, ["line-1", "line-2", "line-3", "line-4", "line-5"]);
    s.browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_a_line_deep_in_the_log_and_steps_between_hits() {
    let Some(s) = setup(&[]).await else { return };
    // 200,000 lines (2.2 MB); the needles near the end, far from what is rendered at first.
    let id = s
        .target
        .submit(
            "awk 'BEGIN { for (i = 1; i <= 200000; i++) { \
               if (i == 150000) print \"the needle-line is here\"; \
               else if (i == 170000) print \"a second NEEDLE-line\"; \
               else print \"row \" i } }'",
        )
        .await;
    s.target.wait_done(&id, Duration::from_secs(60)).await;
    s.open(&id).await;
    s.wait_state("done", Duration::from_secs(30)).await;
    let b = &s.browser;
    assert_eq!(b.eval("return window.viewer.lineCount").await, 200000);
    // Start at the top, where no needle is rendered.
    b.eval("document.querySelector('#log .lv-viewport').dispatchEvent(new KeyboardEvent('keydown', {key: 'Home'})); return null")
        .await;
    b.wait_until(
        "document.querySelector('#log .log-line')?.textContent === 'row 1'",
        Duration::from_secs(10),
    )
    .await;
    let shown = s.lines().await;
    assert!(!shown.iter().any(|l| l.contains("needle")), "{shown:?}");

    let enter = |shift: bool| {
        format!(
            "const i = document.querySelector('#log .lv-search-input'); i.value = 'needle-line';
             i.dispatchEvent(new KeyboardEvent('keydown', {{key: 'Enter', shiftKey: {shift}, bubbles: true}}));
             return null"
        )
    };
    let current = "document.querySelector('#log .log-line mark.hit.current')?.closest('.log-line')?.textContent";
    b.eval(&enter(false)).await;
    b.wait_until(
        &format!("{current} === 'the needle-line is here'"),
        Duration::from_secs(20),
    )
    .await;
    // Both hits are found, the whole log searched.
    b.wait_until(
        "document.querySelector('#log .lv-hits').textContent === '1/2 lines'",
        Duration::from_secs(20),
    )
    .await;
    let mark = b
        .eval("return document.querySelector('#log mark.hit.current').textContent")
        .await;
    assert_eq!(mark, "needle-line");
    // Next (the button), then previous (Shift+Enter).
    b.eval("document.querySelector('#log .lv-next').click(); return null")
        .await;
    b.wait_until(
        &format!("{current} === 'a second NEEDLE-line'"),
        Duration::from_secs(10),
    )
    .await;
    b.eval(&enter(true)).await;
    b.wait_until(
        &format!("{current} === 'the needle-line is here'"),
        Duration::from_secs(10),
    )
    .await;
    // Enter wraps around from the last hit to the first.
    b.eval(&enter(false)).await;
    b.eval(&enter(false)).await;
    b.wait_until(
        &format!("{current} === 'the needle-line is here'"),
        Duration::from_secs(10),
    )
    .await;
    let rendered = b.eval("return window.viewer.renderedLineCount").await;
    assert!(rendered.as_u64().unwrap() < 500, "{rendered}");
    s.browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_filters_hide_stderr_or_stdout_lines() {
    let Some(s) = setup(&[]).await else { return };
    let id = s
        .target
        .submit("for i in 1 2 3; do echo out-$i; echo err-$i >&2; sleep 0.05; done")
        .await;
    s.target.wait_done(&id, Duration::from_secs(30)).await;
    s.open(&id).await;
    s.wait_state("done", Duration::from_secs(10)).await;
    let b = &s.browser;
    // `done` says the job ended; its lines may still be on their way from the range read.
    b.wait_until(
        "document.querySelectorAll('#log .log-line').length >= 6",
        Duration::from_secs(10),
    )
    .await;
    let mut all = s.lines().await;
    all.sort();
    assert_eq!(all, ["err-1", "err-2", "err-3", "out-1", "out-2", "out-3"]);
    let classes = b
        .eval("return [...document.querySelectorAll('#log .log-line')].map(e => [e.textContent, e.classList.contains('stderr'), e.classList.contains('stdout')])")
        .await;
    for line in classes.as_array().unwrap() {
        let err = line[0].as_str().unwrap().starts_with("err");
        assert_eq!(line[1], err, "{line}");
        assert_eq!(line[2], !err, "{line}");
    }
    // stderr visibly differs from stdout.
    let look = b
        .eval("const [o, e] = ['stdout', 'stderr'].map(c => getComputedStyle(document.querySelector('#log .log-line.' + c)));
               return [o.color === e.color && o.backgroundColor === e.backgroundColor]")
        .await;
    assert_eq!(look, serde_json::json!([false]));

    b.eval("document.querySelector('#log .lv-filter-stderr input').click(); return null")
        .await;
    b.wait_until(
        "document.querySelectorAll('#log .log-line.stderr').length === 0",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(s.lines().await, ["out-1", "out-2", "out-3"]);
    b.eval(
        "document.querySelector('#log .lv-filter-stderr input').click();
            document.querySelector('#log .lv-filter-stdout input').click(); return null",
    )
    .await;
    b.wait_until(
        "document.querySelectorAll('#log .log-line.stdout').length === 0",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(s.lines().await, ["err-1", "err-2", "err-3"]);
    // The raw download links point at the API.
    let links = b
        .eval("return [...document.querySelectorAll('#log a.lv-download')].map(a => a.getAttribute('href'))")
        .await;
    assert!(
        links
            .as_array()
            .unwrap()
            .contains(&Value::from(format!("/api/v1/jobs/{id}/stdout"))),
        "{links}"
    );
    s.browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_log_scrolls_top_to_bottom_in_flat_memory() {
    let Some(s) = setup(&[("JOBEXEC__JOBS__OUTPUT_CAP_BYTES", "134217728")]).await else {
        return;
    };
    let started = Instant::now();
    // 880,000 lines of 80 bytes (67.1 MB), each different.
    let lines = 880_000;
    let id = s
        .target
        .submit(&format!(
            "awk 'BEGIN {{ s = \"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\"; \
               for (i = 1; i <= {lines}; i++) printf \"line %08d %s\\n\", i, substr(s, 1 + i % 20, 66) }}'"
        ))
        .await;
    let job = s.target.wait_done(&id, Duration::from_secs(180)).await;
    assert_eq!(job["status"], "completed", "{job}");
    let bytes = job["output_bytes"].as_i64().unwrap();
    assert!(bytes >= 64 * 1024 * 1024, "{bytes} bytes");
    assert!(!job["output_truncated"].as_bool().unwrap(), "{job}");
    let produced = started.elapsed();

    s.open(&id).await;
    s.wait_state("done", Duration::from_secs(120)).await;
    let indexed = started.elapsed();
    let b = &s.browser;
    assert_eq!(b.eval("return window.viewer.lineCount").await, lines);

    let heap = "return performance.memory.usedJSHeapSize";
    let settled =
        "window.viewer.renderedLineCount > 0 && !document.querySelector('#log .log-line.pending')";
    let mut max_heap = 0u64;
    let mut max_rendered = 0u64;
    let steps = 40;
    for k in 0..=steps {
        b.eval(&format!(
            "const v = document.querySelector('#log .lv-viewport');
             v.scrollTop = (v.scrollHeight - v.clientHeight) * {k} / {steps};
             window.viewer._render(); return null"
        ))
        .await;
        b.wait_until(settled, Duration::from_secs(20)).await;
        max_heap = max_heap.max(b.eval(heap).await.as_u64().unwrap());
        max_rendered = max_rendered.max(
            b.eval("return window.viewer.renderedLineCount")
                .await
                .as_u64()
                .unwrap(),
        );
    }
    // Back to the top, then End (the key) to the last line.
    b.eval("const v = document.querySelector('#log .lv-viewport'); v.scrollTop = 0; return null")
        .await;
    b.wait_until(
        "document.querySelector('#log .log-line')?.textContent.startsWith('line 00000001 ')",
        Duration::from_secs(20),
    )
    .await;
    b.eval("document.querySelector('#log .lv-viewport').dispatchEvent(new KeyboardEvent('keydown', {key: 'End'})); return null")
        .await;
    let last = format!("line {lines:08} ");
    b.wait_until(
        &format!(
            "[...document.querySelectorAll('#log .log-line')].some(e => e.textContent.startsWith('{last}'))"
        ),
        Duration::from_secs(20),
    )
    .await;
    b.wait_until(settled, Duration::from_secs(20)).await;
    max_heap = max_heap.max(b.eval(heap).await.as_u64().unwrap());
    let mb = max_heap as f64 / (1024.0 * 1024.0);
    println!(
        "64 MiB log: {bytes} bytes, {lines} lines; heap max {mb:.1} MB; at most {max_rendered} lines in the DOM; \
         job done in {:.1} s, indexed at {:.1} s, scrolled at {:.1} s",
        produced.as_secs_f64(),
        indexed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let path = b.screenshot("log-viewer-64mib").await;
    println!("screenshot: {}", path.display());
    assert!(mb < 100.0, "the heap reached {mb:.1} MB");
    assert!(max_rendered < 500, "{max_rendered} lines in the DOM");
    s.browser.close().await;
}
