//! The one way tests run the `imgmirror` binary: [`imgmirror`] builds the command with one
//! environment hygiene (nothing from the developer's shell — no `IMGMIRROR_*`, no `AWS_*` — leaks
//! in), [`run`] runs a one-off command to completion, and [`Service`] is a `serve` process on a
//! free loopback port, waited for until it answers and killed when dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

/// `imgmirror` in `dir`, with a clean environment: `IMGMIRROR_*` and `AWS_*` removed, `RUST_LOG`
/// at `warn` unless the test sets another.
pub fn imgmirror(dir: &Path) -> Command {
    command(Command::new(env!("CARGO_BIN_EXE_imgmirror")), dir)
}

/// `program` run in `dir` with the same hygiene as [`imgmirror`] (for wrappers such as `sh -c`
/// that end by exec'ing the binary).
pub fn command(mut cmd: Command, dir: &Path) -> Command {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("IMGMIRROR_") || k.starts_with("AWS_") {
            cmd.env_remove(&*k);
        }
    }
    cmd.current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

/// What a finished command said: its exit code (-1 when killed by a signal) and its output.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// `imgmirror <args>` in `dir` with extra environment `env`.
fn with_args(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = imgmirror(dir);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `imgmirror <args>` in `dir` with extra environment `env`, to completion.
pub fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    finish(with_args(dir, args, env))
}

/// [`run`] for async tests, whose runtime must keep serving (a loopback origin) meanwhile.
pub async fn run_async(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = tokio::process::Command::from(with_args(dir, args, env))
        .output()
        .await
        .expect("run imgmirror");
    output(out)
}

fn output(out: std::process::Output) -> Output {
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs a prepared command to completion (see [`imgmirror`]).
pub fn finish(mut cmd: Command) -> Output {
    output(cmd.output().expect("run imgmirror"))
}

/// A running `imgmirror serve`, killed (SIGKILL) when dropped.
pub struct Service {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Service {
    /// `imgmirror serve --config <config>` in `dir`, on a free loopback port; returns once it
    /// answers `/healthz`.
    pub async fn start(dir: &Path, config: &Path) -> Service {
        let mut cmd = imgmirror(dir);
        cmd.arg("serve").arg("--config").arg(config);
        Service::spawn(cmd).await
    }

    /// Runs `cmd` (a `serve` command line, without `--listen`) listening on a free loopback port
    /// (`IMGMIRROR_SERVER__LISTEN`); returns once it answers `/healthz`. A port is only known to
    /// be free until it is released, so a start that exits 75 (address in use, SPEC's temporary
    /// start failure) is retried on another port, up to five times. Output is discarded unless
    /// the test has already chosen where it goes.
    pub async fn spawn(mut cmd: Command) -> Service {
        for _ in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", super::free_port())
                .parse()
                .expect("a loopback address");
            cmd.env("IMGMIRROR_SERVER__LISTEN", addr.to_string());
            let child = cmd.spawn().expect("start imgmirror serve");
            let mut service = Service {
                child: Some(child),
                addr,
            };
            match service.answers().await {
                Ok(()) => return service,
                Err(Some(75)) => continue,
                Err(code) => {
                    let status = service.kill();
                    panic!(
                        "imgmirror serve did not answer /healthz on {addr} \
                         (exit code {code:?}, {status:?})"
                    );
                }
            }
        }
        panic!("imgmirror serve found no free port in five tries");
    }

    /// Waits until the service answers `/healthz` (Ok), or it has ended (its exit code).
    async fn answers(&mut self) -> Result<(), Option<i32>> {
        let healthz = format!("http://{}/healthz", self.addr);
        // Up to 30 s: a loaded machine, an S3 replica checking its bucket first.
        for _ in 0..600 {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(status.code());
            }
            let up = super::client()
                .get(&healthz)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if up {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Err(None)
    }

    /// `http://{addr}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The status of a GET of `path`.
    pub async fn status(&self, path: &str) -> u16 {
        super::get(&self.url(path)).await.status().as_u16()
    }

    /// SIGKILL, as a crash would; returns how it ended.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// SIGTERM, the graceful stop; waits for the exit and returns its status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the service is running");
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("send SIGTERM");
        child.wait().expect("wait for imgmirror serve")
    }

    /// The process id (for /proc inspection).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}
