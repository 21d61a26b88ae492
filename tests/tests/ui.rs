//! End to end: the status page `/ui` in a real headless Chromium (driven through
//! chromedriver with fantoccini), and `/internal/events/stream` read by the real `curl -N`.
//!
//! Three mockllm backends behind a real `hale serve`: the page loads with no console error and
//! requests nothing outside 127.0.0.1, lists the three endpoints with their states, shows a
//! mock switched to failing as `unhealthy` with its reason within 1 s of the transition
//! without a reload, marks the failed checks on its sparkline and lists the transition in the
//! timeline. With `admin_token` set the page shows only the token prompt until given the
//! token (a wrong one is refused), then the data, and drains an endpoint from the page after
//! a confirmation. The event stream delivers a transition to curl within 100 ms of the event
//! and resumes from `Last-Event-ID`, and an open stream does not hold a SIGTERM shutdown.
//!
//! `HALE_UPDATE_SCREENSHOT=1` writes the page (three endpoints, one unhealthy) to
//! `docs/ui.png`; without it the screenshot is taken and checked but not written, so a test
//! run leaves the tree clean.

#![expect(clippy::unwrap_used, reason = "tests fail loudly on setup errors")]

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use hale_testkit::{Gateway, eventually, free_port};
use hale_tests::{Backends, rfc3339_secs};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

const POLL: Duration = Duration::from_millis(50);
const TOKEN: &str = "ui-t0ken-s3cret";

trait UiConfig {
    fn config(&self, admin_token: Option<&str>) -> String;
}

impl UiConfig for Backends {
    fn config(&self, admin_token: Option<&str>) -> String {
        let token = admin_token
            .map(|t| format!("  admin_token: {t}\n"))
            .unwrap_or_default();
        format!(
            "server:\n  listen: 127.0.0.1:0\n{token}health:\n  unhealthy_threshold: 2\n  healthy_threshold: 2\n  max_backoff: 1s\n  jitter: 0\nendpoints:\n{}",
            self.endpoints("500ms", "400ms"),
        )
    }
}

/// Three mocks and a gateway (with `admin_token` if given) whose endpoints are all healthy.
async fn healthy_fleet(admin_token: Option<&str>) -> anyhow::Result<(Backends, Gateway)> {
    let b = Backends::start().await?;
    let mut gw = Gateway::start(&b.config(admin_token)).await?;
    if let Some(token) = admin_token {
        gw = gw.with_admin_token(token);
    }
    all_healthy(&gw).await?;
    Ok((b, gw))
}

/// Waits until every endpoint is healthy.
async fn all_healthy(gw: &Gateway) -> anyhow::Result<()> {
    eventually(Duration::from_secs(15), POLL, || async {
        let eps = gw.endpoints().await?;
        anyhow::ensure!(
            eps.len() == 3 && eps.iter().all(|e| e["status"] == "healthy"),
            "states: {:?}",
            eps.iter().map(|e| &e["status"]).collect::<Vec<_>>()
        );
        Ok(())
    })
    .await
}

/// Where a program is on `PATH`.
fn on_path(program: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!("{program} is not on PATH: run `cargo xtask setup` to install it")
        })
}

/// chromedriver and one headless Chromium session.
struct Browser {
    client: Client,
    _driver: Child,
}

/// chromedriver's log endpoint (Chromium's console, with `goog:loggingPrefs`).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

impl Browser {
    async fn start() -> anyhow::Result<Self> {
        let driver_bin = on_path("chromedriver")?;
        let chromium = on_path("chromium")?;
        let port = free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        eventually(Duration::from_secs(20), POLL, || async {
            anyhow::Ok(tokio::net::TcpStream::connect(("127.0.0.1", port)).await?)
        })
        .await?;
        let mut caps = Capabilities::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1440,1300",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-extensions", "--hide-scrollbars",
                ],
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await?;
        Ok(Self {
            client,
            _driver: driver,
        })
    }

    /// A browser showing `gw`'s status page.
    async fn open(gw: &Gateway) -> anyhow::Result<Self> {
        let browser = Self::start().await?;
        browser.client.goto(&format!("{}/ui", gw.url())).await?;
        Ok(browser)
    }

    /// Clicks the element `at` (a real click, through WebDriver).
    async fn click(&self, at: Locator<'_>) -> anyhow::Result<()> {
        self.client.find(at).await?.click().await?;
        Ok(())
    }

    /// Types `token` into the page's prompt and submits it.
    async fn enter_token(&self, token: &str) -> anyhow::Result<()> {
        let input = self.client.find(Locator::Id("token")).await?;
        input.send_keys(token).await?;
        self.click(Locator::Id("login-submit")).await
    }

    /// Chooses `endpoint` in the timeline's filter ("" for all).
    async fn filter_timeline(&self, endpoint: &str) -> anyhow::Result<()> {
        self.js(
            "const s = document.getElementById('filter'); s.value = arguments[0];
             s.dispatchEvent(new Event('change'));",
            vec![json!(endpoint)],
        )
        .await?;
        Ok(())
    }

    /// Runs `script` (a function body; `arguments` as usual) in the page.
    async fn js(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        Ok(self.client.execute(script, args).await?)
    }

    /// Waits until `script` returns something truthy; returns it.
    async fn until(&self, within: Duration, what: &str, script: &str) -> anyhow::Result<Value> {
        eventually(within, POLL, || async {
            let v = self.js(script, vec![]).await?;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            anyhow::ensure!(truthy, "{what}: {v}");
            Ok(v)
        })
        .await
    }

    /// The console entries so far (each read once).
    async fn console(&self) -> anyhow::Result<Vec<Value>> {
        let log = self.client.issue_cmd(BrowserLog).await?;
        log.as_array()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("chromedriver's log is not a list: {log}"))
    }

    /// Console errors, minus those `ignore` accepts.
    async fn console_errors(&self, ignore: impl Fn(&str) -> bool) -> anyhow::Result<Vec<String>> {
        Ok(self
            .console()
            .await?
            .into_iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .filter(|m| !ignore(m))
            .collect())
    }

    /// Every URL the page loaded (the document and its resources, fetches included).
    async fn loaded_urls(&self) -> anyhow::Result<Vec<String>> {
        let v = self
            .js(
                "return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name));",
                vec![],
            )
            .await?;
        Ok(v.as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap_or_default().to_owned())
            .collect())
    }

    async fn close(self) -> anyhow::Result<()> {
        self.client.close().await?;
        Ok(())
    }
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

/// The state shown in each endpoint row, by name.
const ROWS: &str = "return Object.fromEntries([...document.querySelectorAll('#endpoints tbody tr')]
    .map(tr => [tr.dataset.endpoint, tr.dataset.state]));";

#[tokio::test]
async fn the_page_shows_the_fleet_and_follows_a_failure_live() -> anyhow::Result<()> {
    let (b, gw) = healthy_fleet(None).await?;
    let browser = Browser::open(&gw).await?;

    // Three endpoints with their states, and the fleet panel.
    let rows = browser
        .until(
            Duration::from_secs(10),
            "three healthy rows",
            "const r = [...document.querySelectorAll('#endpoints tbody tr')];
             return r.length === 3 && r.every(tr => tr.dataset.state === 'healthy')
                 && r.map(tr => tr.dataset.endpoint);",
        )
        .await?;
    assert_eq!(rows, json!(["vllm", "ollama", "llamacpp"]));
    let badges = browser
        .js(
            "return [...document.querySelectorAll('#endpoints .badge')].map(b => b.textContent);",
            vec![],
        )
        .await?;
    assert_eq!(badges, json!(["healthy", "healthy", "healthy"]));
    let fleet = browser
        .js(
            "return document.getElementById('fleet').textContent;",
            vec![],
        )
        .await?;
    assert!(
        fleet.as_str().unwrap().contains("Checks performed"),
        "{fleet}"
    );
    browser
        .until(
            Duration::from_secs(5),
            "the live stream",
            "return document.getElementById('live').textContent === 'live';",
        )
        .await?;

    // For the README's screenshot, let the sparklines fill a little first.
    let screenshot = std::env::var("HALE_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1");
    if screenshot {
        browser
            .until(
                Duration::from_secs(30),
                "20 checks per row",
                "return [...document.querySelectorAll('svg.spark')]
                     .every(s => Number(s.dataset.checks) >= 20);",
            )
            .await?;
    }

    // Watch the vllm row from inside the page: when it first shows unhealthy with its
    // reason, note the time. A marker on window proves the page was not reloaded.
    browser
        .js(
            "window.__halePage = 'same';
             window.__unhealthyAt = null;
             const check = () => {
               const tr = document.querySelector('#endpoints tr[data-endpoint=vllm]');
               if (!window.__unhealthyAt && tr && tr.dataset.state === 'unhealthy'
                   && tr.querySelector('.reason') && tr.querySelector('.reason').textContent === 'http_503') {
                 window.__unhealthyAt = Date.now();
               }
             };
             new MutationObserver(check).observe(document.body,
               {subtree: true, childList: true, attributes: true, characterData: true});",
            vec![],
        )
        .await?;
    b.vllm.set_mode(json!({"status": 503})).await?;
    let seen_at = browser
        .until(
            Duration::from_secs(10),
            "vllm shown unhealthy (http_503)",
            "return window.__unhealthyAt;",
        )
        .await?
        .as_f64()
        .unwrap();
    let event = gw
        .events()
        .await?
        .into_iter()
        .find(|e| e["endpoint"] == "vllm" && e["to"] == "unhealthy")
        .ok_or_else(|| anyhow::anyhow!("no unhealthy event for vllm"))?;
    let event_at = rfc3339_secs(&event["at"])? * 1000.0;
    let lag_ms = seen_at - event_at;
    println!("page showed the transition {lag_ms:.0} ms after the event");
    assert!(lag_ms < 1000.0, "shown {lag_ms:.0} ms after the event");
    assert_eq!(
        browser.js("return window.__halePage;", vec![]).await?,
        "same",
        "the page was reloaded"
    );

    // The row shows the error too; its sparkline marks the failed checks; the timeline
    // lists the transition; the model with no endpoint left says so.
    let row = browser
        .js(
            "const tr = document.querySelector('#endpoints tr[data-endpoint=vllm]');
             const svg = tr.querySelector('svg.spark');
             return {
               text: tr.textContent,
               failures: Number(svg.dataset.failures),
               failed_bars: svg.querySelectorAll('rect.fail').length,
               ok_bars: svg.querySelectorAll('rect.ok').length,
             };",
            vec![],
        )
        .await?;
    assert!(row["text"].as_str().unwrap().contains("HTTP 503"), "{row}");
    assert!(row["failed_bars"].as_u64().unwrap() >= 2, "{row}");
    assert_eq!(row["failures"], row["failed_bars"], "{row}");
    assert!(row["ok_bars"].as_u64().unwrap() >= 1, "{row}");
    let timeline = browser
        .js(
            "const li = document.querySelector('#timeline li[data-endpoint=vllm][data-to=unhealthy]');
             return li && li.textContent;",
            vec![],
        )
        .await?;
    assert!(
        timeline.as_str().is_some_and(|t| t.contains("http_503")),
        "timeline: {timeline}"
    );
    // The newest transition comes first.
    let first = browser
        .js(
            "return document.querySelector('#timeline li').dataset.endpoint;",
            vec![],
        )
        .await?;
    assert_eq!(first, "vllm");
    let model = browser
        .until(
            Duration::from_secs(5),
            "m-vllm with no endpoint",
            "const tr = document.querySelector('#models tr[data-model=\"m-vllm\"]');
             return tr && tr.textContent.includes('no endpoint') && tr.textContent;",
        )
        .await?;
    assert!(model.as_str().unwrap().contains("m-vllm"));
    // The timeline filter keeps one endpoint's transitions.
    browser.filter_timeline("ollama").await?;
    let filtered = browser
        .js(
            "return [...document.querySelectorAll('#timeline li')].map(li => li.dataset.endpoint);",
            vec![],
        )
        .await?;
    let filtered = filtered.as_array().unwrap();
    assert!(!filtered.is_empty() && filtered.iter().all(|e| e == "ollama"));
    browser.filter_timeline("").await?;

    // Nothing left 127.0.0.1, and the console stayed clean.
    let urls = browser.loaded_urls().await?;
    assert!(urls.len() >= 4, "{urls:?}");
    for u in &urls {
        assert!(u.starts_with(&gw.url()), "a request left Hale: {u}");
    }
    let errors = browser.console_errors(|_| false).await?;
    assert!(errors.is_empty(), "console errors: {errors:?}");

    // The screenshot for the README (three endpoints, one unhealthy).
    if screenshot {
        browser
            .until(
                Duration::from_secs(30),
                "a few failed checks of vllm",
                "return Number(document.querySelector('tr[data-endpoint=vllm] svg.spark')
                     .dataset.failures) >= 6;",
            )
            .await?;
    }
    let png = browser.client.screenshot().await?;
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    if screenshot {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/ui.png");
        std::fs::write(&path, &png)?;
        println!("wrote {}", path.display());
    }
    browser.close().await?;
    Ok(())
}

#[tokio::test]
async fn with_a_token_the_page_asks_for_it_then_drains_from_the_page() -> anyhow::Result<()> {
    let (_b, gw) = healthy_fleet(Some(TOKEN)).await?;
    let browser = Browser::open(&gw).await?;

    // Without the token: the prompt, and no data anywhere on the page.
    browser
        .until(
            Duration::from_secs(10),
            "the token prompt",
            "return !document.getElementById('login').hidden;",
        )
        .await?;
    let locked = browser
        .js(
            "return {content_hidden: document.getElementById('content').hidden,
                     rows: document.querySelectorAll('#endpoints tbody tr').length,
                     text: document.body.innerText};",
            vec![],
        )
        .await?;
    assert_eq!(locked["content_hidden"], true, "{locked}");
    assert_eq!(locked["rows"], 0, "{locked}");
    let text = locked["text"].as_str().unwrap();
    for name in ["vllm", "ollama", "llamacpp", "m-vllm"] {
        assert!(
            !text.contains(name),
            "{name} shown without the token: {text}"
        );
    }

    // A wrong token is refused and nothing shows.
    browser.enter_token("not-the-token").await?;
    browser
        .until(
            Duration::from_secs(10),
            "the refusal",
            "return document.getElementById('login-error').textContent.includes('refused')
                 && !document.getElementById('login').hidden;",
        )
        .await?;

    // The right one: the data.
    browser.enter_token(TOKEN).await?;
    browser
        .until(
            Duration::from_secs(10),
            "three rows",
            "return document.querySelectorAll('#endpoints tbody tr').length === 3;",
        )
        .await?;
    let states = browser.js(ROWS, vec![]).await?;
    assert_eq!(
        states,
        json!({"vllm": "healthy", "ollama": "healthy", "llamacpp": "healthy"})
    );
    let stored = browser
        .js("return sessionStorage.getItem('hale.adminToken');", vec![])
        .await?;
    assert_eq!(stored, TOKEN, "kept for the tab's session");

    // Drain ollama from the page: the confirmation first, then the action.
    browser
        .click(Locator::Css("tr[data-endpoint=ollama] button.drain"))
        .await?;
    let prompt = browser
        .until(
            Duration::from_secs(5),
            "the confirmation",
            "const d = document.getElementById('confirm');
             return d.open && document.getElementById('confirm-text').textContent;",
        )
        .await?;
    assert!(
        prompt.as_str().unwrap().contains("Drain ollama"),
        "{prompt}"
    );
    // Nothing happened yet.
    assert_eq!(gw.endpoint("ollama").await?["drained"], false);
    browser.click(Locator::Id("confirm-ok")).await?;
    eventually(Duration::from_secs(10), POLL, || async {
        let e = gw.endpoint("ollama").await?;
        anyhow::ensure!(e["drained"] == true, "ollama: drained {}", e["drained"]);
        Ok(())
    })
    .await?;
    browser
        .until(
            Duration::from_secs(5),
            "ollama shown drained",
            "const tr = document.querySelector('tr[data-endpoint=ollama]');
             return tr.querySelector('.drained') && tr.querySelector('button.enable');",
        )
        .await?;
    assert_eq!(gw.endpoint("vllm").await?["drained"], false);

    // Cancel leaves it alone; enable (confirmed) puts it back; check now reports its check.
    browser
        .click(Locator::Css("tr[data-endpoint=ollama] button.enable"))
        .await?;
    browser.click(Locator::Id("confirm-cancel")).await?;
    assert_eq!(
        browser
            .js("return document.getElementById('confirm').open;", vec![])
            .await?,
        false
    );
    assert_eq!(gw.endpoint("ollama").await?["drained"], true);
    browser
        .click(Locator::Css("tr[data-endpoint=ollama] button.enable"))
        .await?;
    browser.click(Locator::Id("confirm-ok")).await?;
    eventually(Duration::from_secs(10), POLL, || async {
        let e = gw.endpoint("ollama").await?;
        anyhow::ensure!(e["drained"] == false, "ollama: drained {}", e["drained"]);
        Ok(())
    })
    .await?;
    let checks_before = gw.endpoint("llamacpp").await?["checks_total"]
        .as_u64()
        .unwrap();
    browser
        .click(Locator::Css("tr[data-endpoint=llamacpp] button.check"))
        .await?;
    browser.click(Locator::Id("confirm-ok")).await?;
    let notice = browser
        .until(
            Duration::from_secs(10),
            "the check's outcome",
            "const n = document.getElementById('notice');
             return !n.hidden && n.textContent.startsWith('check llamacpp: done') && n.textContent;",
        )
        .await?;
    assert!(notice.as_str().unwrap().contains(": ok in "), "{notice}");
    assert!(
        gw.endpoint("llamacpp").await?["checks_total"]
            .as_u64()
            .unwrap()
            > checks_before
    );

    // The token never went into a URL, and nothing left 127.0.0.1.
    for u in browser.loaded_urls().await? {
        assert!(!u.contains(TOKEN), "token in a URL: {u}");
        assert!(u.starts_with(&gw.url()), "a request left Hale: {u}");
    }
    // The only console errors are the 401s of the locked page and the wrong token (which
    // also shows that the console is really read).
    let errors = browser.console_errors(|_| false).await?;
    let (refusals, others): (Vec<_>, Vec<_>) = errors
        .iter()
        .partition(|m| m.contains("401 (Unauthorized)"));
    assert!(!refusals.is_empty(), "the 401s were not seen: {errors:?}");
    assert!(others.is_empty(), "console errors: {others:?}");
    browser.close().await?;
    Ok(())
}

/// A running `curl -sN` on the event stream, its lines with when they arrived.
struct Curl {
    child: Child,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Curl {
    fn start(gw: &Gateway, extra: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(on_path("curl")?)
            .args(["-sN", "--max-time", "60"])
            .args(extra)
            .arg(format!("{}/internal/events/stream", gw.url()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        Ok(Self {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// The next line and the wall time (ms) it arrived.
    async fn line(&mut self) -> anyhow::Result<(String, f64)> {
        let line = tokio::time::timeout(Duration::from_secs(20), self.lines.next_line())
            .await
            .map_err(|_| anyhow::anyhow!("no line from curl within 20 s"))??
            .ok_or_else(|| anyhow::anyhow!("curl's output ended"))?;
        Ok((line, now_ms()))
    }

    /// Reads until a `data:` line whose event satisfies `want`; returns its id, event and
    /// arrival time.
    async fn event(&mut self, want: impl Fn(&Value) -> bool) -> anyhow::Result<(u64, Value, f64)> {
        let mut id = None;
        loop {
            let (line, at) = self.line().await?;
            if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.parse::<u64>()?);
            } else if let Some(data) = line.strip_prefix("data: ") {
                let event: Value = serde_json::from_str(data)?;
                if want(&event) {
                    let id = id.ok_or_else(|| anyhow::anyhow!("no id before {data}"))?;
                    return Ok((id, event, at));
                }
            } else if line.is_empty() {
                id = None;
            }
        }
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

#[tokio::test]
async fn the_event_stream_reaches_curl_within_100_ms_and_resumes() -> anyhow::Result<()> {
    let (b, gw) = healthy_fleet(Some(TOKEN)).await?;
    let auth = format!("Authorization: Bearer {TOKEN}");

    // The stream follows the /internal/* rules.
    let refused = Command::new(on_path("curl")?)
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{}/internal/events/stream", gw.url()))
        .output()
        .await?;
    assert_eq!(String::from_utf8_lossy(&refused.stdout), "401");

    let mut curl = Curl::start(&gw, &["-H", &auth])?;
    let (opening, _) = curl.line().await?;
    assert!(opening.starts_with(": newest "), "{opening}");

    b.llamacpp.set_mode(json!({"status": 503})).await?;
    let (id, event, arrived) = curl
        .event(|e| e["endpoint"] == "llamacpp" && e["to"] == "unhealthy")
        .await?;
    assert_eq!(event["seq"], id);
    assert_eq!(event["reason"], "http_503");
    let event_at = rfc3339_secs(&event["at"])? * 1000.0;
    // `at` is cut to the millisecond: up to 1 ms of the lag is rounding.
    let lag = arrived - event_at;
    println!("curl got the transition {lag:.1} ms after the event");
    assert!(lag < 100.0, "delivered {lag:.1} ms after the event");
    curl.stop().await?;

    // Resume: from the id before it, the stream replays it first, then goes on live.
    let before = (id - 1).to_string();
    let mut resumed = Curl::start(
        &gw,
        &["-H", &auth, "-H", &format!("Last-Event-ID: {before}")],
    )?;
    let (again, replayed, _) = resumed.event(|_| true).await?;
    assert_eq!(again, id);
    assert_eq!(replayed, event);
    b.llamacpp.set_mode(json!({"mode": "healthy"})).await?;
    let (next, recovering, _) = resumed
        .event(|e| e["endpoint"] == "llamacpp" && e["from"] == "unhealthy")
        .await?;
    assert!(next > id, "{next} after {id}");
    assert_eq!(recovering["to"], "recovering");
    resumed.stop().await?;

    // An id this process never issued: a gap marker, then the whole log.
    let mut unknown = Curl::start(&gw, &["-H", &auth, "-H", "Last-Event-ID: 999999999"])?;
    let mut lines = Vec::new();
    while lines.len() < 4 {
        lines.push(unknown.line().await?.0);
    }
    assert!(lines[0].starts_with(": newest "), "{lines:?}");
    assert_eq!(lines[1], "", "{lines:?}");
    assert_eq!(lines[2], "event: gap", "{lines:?}");
    assert_eq!(lines[3], "data: {\"missed\":null}", "{lines:?}");
    let (first, _, _) = unknown.event(|_| true).await?;
    assert_eq!(first, 1, "the whole log follows");

    // An open stream does not hold a shutdown for `shutdown_grace` (30 s): it ends when the
    // drain starts, and the process exits 0.
    let mut gw = gw;
    let stopping = tokio::time::Instant::now();
    gw.terminate().await?;
    let status = gw.wait_exit(Duration::from_secs(15)).await?;
    assert!(status.success(), "{status}");
    println!(
        "exited {:?} after SIGTERM with a stream open",
        stopping.elapsed()
    );
    // curl saw its stream end.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match unknown.lines.next_line().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "curl's stream did not end");
    Ok(())
}
