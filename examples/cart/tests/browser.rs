//! The cart survives instances, seen from a real browser: headless Chromium
//! (driven over WebDriver by fantoccini through a chromedriver this test
//! starts) talks to a real nginx load balancer doing round robin over three
//! instances of the cart example, which share one real Redis.
//!
//! One scenario, in order: the serving instance changes between requests;
//! an instance is killed mid-session and the cart keeps every item; login
//! rotates the session cookie and keeps the cart; two browser contexts on
//! the same session add concurrently and nothing is lost; "log out
//! everywhere" in one context logs out another context of the same user.
//! Screenshots go to `target/browser-artifacts/` (and, with
//! `OFFSTATE_UPDATE_SCREENSHOT=1`, to `docs/screenshot*.png`).
//!
//! Missing chromium, chromedriver, nginx or redis-server fail the test with
//! a message naming the package; nothing is skipped. Every wait has a
//! deadline, and every process started here is stopped by PID (chromedriver
//! and its browsers by their own process group), also when the test fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::cookies::Cookie;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use offstate_testing::{ServerProcess, Source, find_program, free_port, workspace_root};
use serde::Deserialize;
use serde_json::json;

/// How long one page may take to come back after a click.
const PAGE: Duration = Duration::from_secs(20);
/// How long the whole scenario may take.
const SCENARIO: Duration = Duration::from_secs(300);
/// The session cookie's name (offstate-tower's default).
const COOKIE: &str = "offstate";
/// What to install when something is missing.
const INSTALL: &str = "install it with `apt-get install -y chromium chromium-driver nginx redis-server` \
                       (scripts/setup.sh does)";

/// A program the test needs, or a failure that says how to get it.
fn program(name: &str, env: &'static str, fallback: &str) -> PathBuf {
    find_program(name, env, &[PathBuf::from(fallback)])
        .unwrap_or_else(|e| panic!("the browser test needs `{name}`: {e}; {INSTALL}"))
}

fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    let dir = target.join("browser-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fresh_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "offstate-browser-{tag}-{}-{}",
        std::process::id(),
        free_port().unwrap()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn wait_for_port(process: &mut ServerProcess, port: u16, what: &str) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    process
        .wait_for_port(addr, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{what} did not start: {e}"));
}

/// One cart instance.
struct Instance {
    name: String,
    port: u16,
    process: ServerProcess,
}

fn start_instance(name: &str, store: &str) -> Instance {
    let port = free_port().unwrap();
    let args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--instance",
        name,
        "--store",
        store,
    ]
    .map(String::from)
    .to_vec();
    let bin = Path::new(env!("CARGO_BIN_EXE_offstate-example-cart"));
    let mut process = ServerProcess::spawn(name, bin, &args).unwrap();
    wait_for_port(&mut process, port, name);
    Instance {
        name: name.to_owned(),
        port,
        process,
    }
}

/// nginx in the foreground, one process (`master_process off`), with its
/// config, pid, logs and temp files in a private folder.
struct Nginx {
    process: ServerProcess,
    port: u16,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_nginx(upstreams: &[u16]) -> Nginx {
    let nginx = program("nginx", "OFFSTATE_NGINX", "/usr/sbin/nginx");
    let dir = fresh_dir("nginx");
    let port = free_port().unwrap();
    let d = dir.display();
    let servers: String = upstreams
        .iter()
        .map(|p| format!("        server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;\n"))
        .collect();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 128; }}\n\
         http {{\n    access_log {d}/access.log;\n\
         client_body_temp_path {d}/client_body;\n    proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n\
         upstream cart {{\n{servers}    }}\n\
         server {{\n        listen 127.0.0.1:{port};\n        location / {{\n\
         proxy_pass http://cart;\n\
         proxy_next_upstream error timeout http_502 http_503;\n\
         proxy_connect_timeout 1s;\n            proxy_read_timeout 15s;\n\
         proxy_set_header Host $http_host;\n        }}\n    }}\n}}\n"
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let args: Vec<String> = vec![
        "-p".into(),
        format!("{d}/"),
        "-c".into(),
        conf_path.display().to_string(),
        "-e".into(),
        format!("{d}/error.log"),
    ];
    let mut process = ServerProcess::spawn("nginx", &nginx, &args).unwrap();
    wait_for_port(&mut process, port, "nginx");
    Nginx { process, port, dir }
}

/// chromedriver in its own process group, so that it and every browser
/// process it starts are stopped together: on drop, and by a watchdog if
/// this test process dies first.
struct Driver {
    child: Child,
    watchdog: Option<Child>,
    port: u16,
    dirs: Vec<PathBuf>,
}

impl Driver {
    fn start() -> Self {
        use std::os::unix::process::CommandExt as _;
        let chromedriver = program(
            "chromedriver",
            "OFFSTATE_CHROMEDRIVER",
            "/usr/bin/chromedriver",
        );
        // Checked here so that a missing browser fails before anything else.
        program("chromium", "OFFSTATE_CHROMIUM", "/usr/bin/chromium");
        let port = free_port().unwrap();
        let log = artifacts_dir().join("chromedriver.log");
        let child = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let group = child.id();
        let me = std::process::id();
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -9 -- -{group} 2>/dev/null"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        let mut driver = Self {
            child,
            watchdog,
            port,
            dirs: Vec::new(),
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!("chromedriver exited with {status}; see {}", log.display());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "chromedriver did not listen on port {port} within 30 s; see {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    /// A new browser: its own Chromium with a fresh profile folder.
    async fn browser(&mut self) -> Client {
        let chromium = program("chromium", "OFFSTATE_CHROMIUM", "/usr/bin/chromium");
        let profile = fresh_dir("profile");
        self.dirs.push(profile.clone());
        let capabilities = json!({
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "timeouts": { "pageLoad": 20_000, "script": 10_000, "implicit": 0 },
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let url = format!("http://127.0.0.1:{}", self.port);
        tokio::time::timeout(
            Duration::from_secs(60),
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&url),
        )
        .await
        .expect("chromedriver did not open a browser within 60 s")
        .unwrap_or_else(|e| panic!("chromedriver could not start chromium: {e}"))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let signal = |sig: &str| {
            Command::new("kill")
                .args([sig, "--", &group])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        signal("-TERM");
        let start = Instant::now();
        // `kill -0` on the group succeeds while any member is alive.
        while signal("-0") && start.elapsed() < Duration::from_secs(3) {
            let _ = self.child.try_wait();
            std::thread::sleep(Duration::from_millis(50));
        }
        signal("-KILL");
        let _ = self.child.wait();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// What the page shows, read through its stable ids.
#[derive(Debug, Clone, Deserialize)]
struct PageState {
    instance: String,
    count: u32,
    user: Option<String>,
    login: String,
    lines: Vec<(String, u32)>,
}

impl PageState {
    fn quantity(&self, item: &str) -> u32 {
        self.lines
            .iter()
            .find(|(id, _)| id == item)
            .map_or(0, |(_, n)| *n)
    }
}

const READ_PAGE: &str = "
const q = s => document.querySelector(s);
if (document.readyState !== 'complete' || document.documentElement.dataset.old) { return null; }
if (!q('#count')) { return { error: document.body ? document.body.innerText.slice(0, 300) : '' }; }
return {
  instance: q('#instance').textContent,
  count: Number(q('#count').textContent),
  user: q('#user') ? q('#user').textContent : null,
  login: q('#login-state').dataset.state,
  lines: [...document.querySelectorAll('#cart li')].map(li => [li.dataset.item, Number(li.dataset.quantity)]),
};";

/// Waits for the current page to be a fresh, complete cart page and reads
/// it. A page that is not the cart (an error from the app or nginx) fails.
async fn read_page(client: &Client) -> PageState {
    let deadline = Instant::now() + PAGE;
    loop {
        // Errors while the browser is between pages are retried.
        if let Ok(value) = client.execute(READ_PAGE, vec![]).await {
            if let Some(error) = value.get("error") {
                panic!("expected the cart page, got: {error}");
            }
            if !value.is_null() {
                return serde_json::from_value(value).unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the page did not load within {PAGE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clicks `css` (a form button) and waits for the page the redirect leads
/// to. The current document is marked first, so the old page is never
/// mistaken for the new one.
async fn click(client: &Client, css: &str) -> PageState {
    client
        .execute("document.documentElement.dataset.old = '1';", vec![])
        .await
        .unwrap();
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
        .click()
        .await
        .unwrap();
    read_page(client).await
}

async fn open(client: &Client, url: &str) -> PageState {
    client.goto(url).await.unwrap();
    read_page(client).await
}

async fn cookie(client: &Client) -> String {
    client
        .get_named_cookie(COOKIE)
        .await
        .unwrap_or_else(|e| panic!("no {COOKIE} cookie: {e}"))
        .value()
        .to_owned()
}

async fn login(client: &Client, user: &str) -> PageState {
    client
        .find(Locator::Id("login-name"))
        .await
        .unwrap()
        .send_keys(user)
        .await
        .unwrap();
    let page = click(client, "#login").await;
    assert_eq!(page.user.as_deref(), Some(user), "{page:?}");
    page
}

/// `n` adds of `item`, each a real form post; returns the last page.
async fn add_many(client: &Client, item: &str, n: u32) -> PageState {
    let mut last = None;
    for _ in 0..n {
        last = Some(click(client, &format!("#add-{item}")).await);
    }
    last.unwrap()
}

async fn screenshot(client: &Client, name: &str, width: u32, height: u32) -> PathBuf {
    client.set_window_size(width, height).await.unwrap();
    client.refresh().await.unwrap();
    read_page(client).await;
    let png = client.screenshot().await.unwrap();
    let path = artifacts_dir().join(name);
    std::fs::write(&path, &png).unwrap();
    path
}

/// The scenario. `a` and `b` are two separate browsers (two chromedriver
/// sessions, two Chromium profiles).
async fn scenario(a: Client, b: Client, url: String, instances: Vec<String>, kill: KillSwitch) {
    // 1. The serving instance changes between requests; the cart follows.
    let first = open(&a, &url).await;
    assert_eq!(first.count, 0);
    assert_eq!(first.login, "anonymous");
    let mut served = vec![first.instance.clone()];
    let items = ["apple", "pear", "bread", "apple", "cheese", "pear"];
    for (n, item) in items.iter().enumerate() {
        let page = click(&a, &format!("#add-{item}")).await;
        assert_eq!(page.count as usize, n + 1, "{page:?}");
        served.push(page.instance);
    }
    let distinct: BTreeSet<&String> = served.iter().collect();
    assert!(
        distinct.len() >= 2 && served.windows(2).any(|w| w[0] != w[1]),
        "the load balancer should spread pages over instances: {served:?}"
    );
    assert!(served.iter().all(|s| instances.contains(s)), "{served:?}");

    // 2. Kill one instance mid-session; every add still lands.
    let killed = kill.kill();
    let mut after = BTreeSet::new();
    for n in 0..6 {
        let page = click(&a, "#add-coffee").await;
        assert_eq!(page.count, 7 + n, "{page:?}");
        after.insert(page.instance);
    }
    assert!(!after.contains(&killed), "{killed} is dead: {after:?}");
    let page = open(&a, &url).await;
    assert_eq!(page.count, 12);
    assert_eq!(page.lines.iter().map(|(_, n)| n).sum::<u32>(), 12);
    assert_eq!(
        (
            page.quantity("apple"),
            page.quantity("pear"),
            page.quantity("coffee")
        ),
        (2, 2, 6)
    );

    // 3. Login rotates the session ID and keeps the cart.
    let before = cookie(&a).await;
    let page = login(&a, "alice").await;
    let rotated = cookie(&a).await;
    assert_ne!(before, rotated, "login must give the session a new ID");
    assert_eq!(page.count, 12, "login keeps the cart: {page:?}");

    // 4. Two browsers on the same session (the cookie copied) add at the
    //    same time: nothing is lost.
    open(&b, &url).await;
    b.delete_all_cookies().await.unwrap();
    let mut shared = Cookie::new(COOKIE, rotated.clone());
    shared.set_path("/");
    shared.set_domain("127.0.0.1");
    shared.set_http_only(true);
    // fantoccini sends SameSite=None when unset, which Chromium refuses on
    // a cookie that is not Secure; the app's own cookie is Lax.
    shared.set_same_site(cookie::SameSite::Lax);
    b.add_cookie(shared).await.unwrap();
    let page = open(&b, &url).await;
    assert_eq!((page.count, page.user.as_deref()), (12, Some("alice")));
    let adds = 8;
    let (pa, pb) = tokio::join!(add_many(&a, "tea", adds), add_many(&b, "bread", adds));
    assert!(pa.count <= 12 + 2 * adds && pb.count <= 12 + 2 * adds);
    let page = open(&a, &url).await;
    assert_eq!(
        page.count,
        12 + 2 * adds,
        "concurrent adds were lost: {page:?}"
    );
    assert_eq!(
        (page.quantity("tea"), page.quantity("bread")),
        (adds, adds + 1)
    );

    // The README's screenshots: logged in, a full cart, desktop and phone.
    let desktop = screenshot(&a, "desktop.png", 1280, 1000).await;
    let phone = screenshot(&a, "phone.png", 390, 844).await;
    a.set_window_size(1280, 900).await.unwrap();
    if std::env::var_os("OFFSTATE_UPDATE_SCREENSHOT").is_some() {
        let docs = workspace_root().join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::copy(&desktop, docs.join("screenshot.png")).unwrap();
        std::fs::copy(&phone, docs.join("screenshot-phone.png")).unwrap();
    }

    // 5. Log out everywhere in one browser: another browser logged in as the
    //    same user (its own session) is logged out too.
    b.delete_all_cookies().await.unwrap();
    let page = open(&b, &url).await;
    assert_eq!((page.login.as_str(), page.count), ("anonymous", 0));
    login(&b, "alice").await;
    let page = add_many(&b, "apple", 1).await;
    assert_eq!(page.count, 1);
    assert_ne!(cookie(&b).await, cookie(&a).await, "two separate sessions");
    let page = click(&a, "#logout-everywhere").await;
    assert_eq!((page.login.as_str(), page.count), ("anonymous", 0));
    let page = open(&b, &url).await;
    assert_eq!(page.login, "anonymous", "the other browser is logged out");
    assert_eq!(page.count, 0, "{page:?}");

    // The final page, as a test artifact.
    let png = a.screenshot().await.unwrap();
    std::fs::write(artifacts_dir().join("final.png"), png).unwrap();
}

/// Kills one instance (the second) when the scenario says so.
#[derive(Clone)]
struct KillSwitch(std::sync::Arc<std::sync::Mutex<Option<Instance>>>);

impl KillSwitch {
    fn kill(&self) -> String {
        let mut slot = self.0.lock().unwrap();
        let instance = slot.as_mut().expect("one instance to kill");
        instance.process.kill();
        // Nothing listens on its port any more: nginx gets "connection
        // refused" and passes the request to the next instance.
        assert!(std::net::TcpStream::connect(("127.0.0.1", instance.port)).is_err());
        instance.name.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cart_survives_instances_in_a_real_browser() {
    // Fail early and clearly if a tool is missing.
    program("nginx", "OFFSTATE_NGINX", "/usr/sbin/nginx");
    program("chromium", "OFFSTATE_CHROMIUM", "/usr/bin/chromium");
    program(
        "chromedriver",
        "OFFSTATE_CHROMEDRIVER",
        "/usr/bin/chromedriver",
    );
    let redis = offstate_testing::redis()
        .via(Source::Process)
        .await
        .unwrap_or_else(|e| panic!("the browser test needs redis-server: {e}; {INSTALL}"));
    let store = redis.url().to_owned();
    let mut instances: Vec<Instance> = (1..=3)
        .map(|i| start_instance(&format!("app-{i}"), &store))
        .collect();
    let names: Vec<String> = instances.iter().map(|i| i.name.clone()).collect();
    let nginx = start_nginx(&instances.iter().map(|i| i.port).collect::<Vec<_>>());
    let url = format!("http://127.0.0.1:{}/", nginx.port);
    let kill = KillSwitch(std::sync::Arc::new(std::sync::Mutex::new(Some(
        instances.remove(1),
    ))));

    let mut driver = Driver::start();
    let a = driver.browser().await;
    let b = driver.browser().await;

    let task = tokio::spawn(scenario(a.clone(), b.clone(), url, names, kill.clone()));
    let abort = task.abort_handle();
    let outcome = tokio::time::timeout(SCENARIO, task).await;
    abort.abort();

    // Close the browsers (bounded), then stop every process, whatever the
    // outcome: the drops below kill by PID and process group.
    for client in [a, b] {
        let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
    }
    drop(driver);
    drop(nginx);
    drop(kill);
    drop(instances);
    drop(redis);

    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(error)) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Ok(Err(error)) => panic!("the scenario did not finish: {error}"),
        Err(_) => panic!("the scenario took longer than {SCENARIO:?}"),
    }
}
