//! The web a blog owner runs, for end-to-end tests: real nginx (Debian's package) serving a folder
//! and proxying image routes to imgmirror, and headless Chromium (Debian's package) opening pages
//! and reporting what each `<img>` became. Both are found through [`tool`], which skips a test with
//! its reason on a developer's machine without them but fails in CI (`CI` set), where `.ci/run`
//! installs them: a browser test never passes by silently not running.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The first of `paths` that exists; `None` (after saying why) when none does outside CI. Panics
/// in CI, where a missing tool is an installation bug.
pub fn tool(name: &str, paths: &[&str], install: &str) -> Option<PathBuf> {
    if let Some(p) = paths.iter().map(PathBuf::from).find(|p| p.exists()) {
        return Some(p);
    }
    let why = format!("{name} is not installed ({install}; .ci/run installs it)");
    if std::env::var_os("CI").is_some() {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// Debian's Chromium, or a skip (see [`tool`]).
pub fn chromium() -> Option<PathBuf> {
    tool(
        "Chromium",
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
        "apt-get install chromium",
    )
}

/// A running nginx with its own prefix folder (config, logs, temp files); stopped when dropped.
pub struct Nginx {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    prefix: PathBuf,
}

/// The main config every test nginx uses around `http_body`, everything written under the
/// prefix. With no `user`, no master process (no user switching, so it runs unprivileged); with
/// one, a master (run as root) whose workers run as that user, as a distribution's nginx does.
fn main_conf(prefix: &Path, http_body: &str, user: Option<&str>) -> String {
    let p = prefix.display();
    let process = match user {
        None => "master_process off;".to_string(),
        Some(u) => format!("master_process on;\nworker_processes 1;\nuser {u};"),
    };
    format!(
        "daemon off;\n{process}\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\n\
         events {{ worker_connections 512; }}\n\
         http {{\n\
         include /etc/nginx/mime.types;\n\
         default_type application/octet-stream;\n\
         access_log {p}/access.log;\n\
         client_body_temp_path {p}/tmp/body;\nproxy_temp_path {p}/tmp/proxy;\n\
         fastcgi_temp_path {p}/tmp/fastcgi;\nuwsgi_temp_path {p}/tmp/uwsgi;\nscgi_temp_path {p}/tmp/scgi;\n\
         {http_body}\n}}\n"
    )
}

/// `nginx -t` of `http_body` (what goes inside `http { }`: server blocks, upstreams) in a config
/// written under `prefix`, which is created. `Err` carries what nginx said.
pub fn nginx_t(binary: &Path, prefix: &Path, http_body: &str) -> Result<PathBuf, String> {
    nginx_t_as(binary, prefix, http_body, None)
}

/// [`nginx_t`] with workers running as `user` (see [`main_conf`]).
fn nginx_t_as(
    binary: &Path,
    prefix: &Path,
    http_body: &str,
    user: Option<&str>,
) -> Result<PathBuf, String> {
    std::fs::create_dir_all(prefix.join("tmp")).map_err(|e| e.to_string())?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, main_conf(prefix, http_body, user)).map_err(|e| e.to_string())?;
    let out = nginx_command(binary, prefix, &conf)
        .arg("-t")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(conf)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn nginx_command(binary: &Path, prefix: &Path, conf: &Path) -> Command {
    let mut cmd = Command::new(binary);
    cmd.arg("-p")
        .arg(prefix)
        .arg("-e")
        .arg(prefix.join("error.log"))
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null());
    cmd
}

impl Nginx {
    /// `/usr/sbin/nginx`, or a skip (see [`tool`]).
    pub fn binary() -> Option<PathBuf> {
        tool("nginx", &["/usr/sbin/nginx"], "apt-get install nginx")
    }

    /// Starts nginx on a free loopback port with `server_body` (directives inside `server { }`,
    /// `listen` excluded), checked with `nginx -t` first; returns once it accepts connections.
    pub async fn start(binary: &Path, prefix: &Path, server_body: &str) -> Nginx {
        Nginx::start_as(binary, prefix, server_body, None).await
    }

    /// [`Nginx::start`] with its workers running as `user` (the caller must be root), as the
    /// web server of a real host does: files it serves must be readable by that user.
    pub async fn start_as(
        binary: &Path,
        prefix: &Path,
        server_body: &str,
        user: Option<&str>,
    ) -> Nginx {
        let addr: SocketAddr = format!("127.0.0.1:{}", super::free_port())
            .parse()
            .expect("a loopback address");
        let server = format!("server {{\nlisten {addr};\n{server_body}\n}}");
        let conf =
            nginx_t_as(binary, prefix, &server, user).unwrap_or_else(|e| panic!("nginx -t: {e}"));
        let child = nginx_command(binary, prefix, &conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let nginx = Nginx {
            child: Some(child),
            addr,
            prefix: prefix.to_path_buf(),
        };
        let up = super::eventually_within(Duration::from_secs(30), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        assert!(up, "nginx did not start: {}", nginx.error_log());
        nginx
    }

    /// `http://{addr}`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What nginx logged as errors so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A master (workers as another user) stops its workers on SIGTERM; SIGKILL would
            // leave them running, orphaned, on the test's port.
            let pid = i32::try_from(child.id())
                .ok()
                .and_then(rustix::process::Pid::from_raw);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                for _ in 0..100 {
                    if matches!(child.try_wait(), Ok(Some(_))) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The flags of every headless run: no sandbox (CI runs as root), nothing of Chromium's own
/// reaching the network, and a resolver that answers "not found" for every name but 127.0.0.1, so
/// no page can load anything from outside this machine and nothing goes through real DNS.
fn headless(chromium: &Path, profile: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .stdin(Stdio::null())
    .kill_on_drop(true);
    cmd
}

/// What Chromium made of a page: its DOM after load, and what it logged (console messages appear
/// as `:CONSOLE` lines, uncaught errors as `Uncaught`).
pub struct Rendered {
    pub dom: String,
    pub log: String,
}

impl Rendered {
    /// Log lines that are console messages or script errors.
    pub fn console(&self) -> Vec<&str> {
        self.log
            .lines()
            .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught"))
            .collect()
    }
}

/// Opens `url` in headless Chromium, lets it load (with up to 5 s of virtual time for timers),
/// and returns its DOM and log.
pub async fn render(chromium: &Path, url: &str) -> Rendered {
    render_in(chromium, url, None).await
}

/// A browser window: its size in CSS pixels and its device pixel ratio, which decide what a
/// `srcset` gives (headless Chromium makes no window narrower than 500 px: a smaller ratio
/// stands for a phone's narrower screen).
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub width: u32,
    pub height: u32,
    pub scale: f32,
}

/// [`render`] in `window` (Chromium's default window when `None`).
pub async fn render_in(chromium: &Path, url: &str, window: Option<Window>) -> Rendered {
    let profile = tempfile::tempdir().expect("a profile folder");
    let mut cmd = headless(chromium, profile.path());
    if let Some(w) = window {
        cmd.arg(format!("--window-size={},{}", w.width, w.height))
            .arg(format!("--force-device-scale-factor={}", w.scale));
    }
    cmd.args(["--virtual-time-budget=5000", "--dump-dom", url]);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("Chromium did not finish {url}"))
        .expect("run chromium");
    Rendered {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        log: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Saves a screenshot of `url` (1280 px wide) to `path`.
pub async fn screenshot(chromium: &Path, url: &str, path: &Path) {
    let profile = tempfile::tempdir().expect("a profile folder");
    let mut cmd = headless(chromium, profile.path());
    cmd.args([
        "--virtual-time-budget=5000",
        "--hide-scrollbars",
        "--window-size=1280,2400",
    ])
    .arg(format!("--screenshot={}", path.display()))
    .arg(url);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("Chromium did not finish the screenshot of {url}"))
        .expect("run chromium");
    assert!(
        path.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
