//! How `imgmirror serve` spreads connections over its event loops (`server.threads`), seen from
//! real clients on loopback pinned to each CPU. A test binary of its own: it reads every thread
//! of the process, so no other test's service may run beside it.

#[path = "it/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{client, config, image, Origin, Reply};
use imgmirror::route::{self, Options};
use imgmirror::server;

const DOGS: &str = "/202106/dogs_1024.jpg";

/// With one event loop per CPU (the default on a machine that gives the process whole CPUs),
/// connections are steered: a client on CPU k is served by the loop pinned to CPU k, each loop
/// on its own `SO_REUSEPORT` socket. The loops' helper threads (the transform that a resize
/// runs) are not pinned, a second service on the same address fails to start, and shutdown
/// closes every socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_go_to_the_loop_on_the_clients_cpu() {
    use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
    let all = sched_getaffinity(None).unwrap();
    let cpus: Vec<usize> = (0..CpuSet::MAX_CPU).filter(|&c| all.is_set(c)).collect();
    let origin = Origin::start().await;
    origin.set(DOGS, Reply::jpeg(image("news-dogs.jpg")));
    let dir = tempfile::tempdir().unwrap();
    let svc = server::start(config(&origin, dir.path(), &[], |c| {
        c.server.threads = cpus.len();
    }))
    .await
    .unwrap();
    let addr = svc.addr;
    let resized = Options {
        width: Some(97),
        ..Options::default()
    };
    let path = route::encode(&origin.url(DOGS), &resized, None).unwrap();
    // Each client thread, pinned to its CPU, makes connections of one request each, a different
    // number per CPU (5, 20, 35, ...), so that no spread but steering gives each loop its own.
    let made = |i: usize| 5 + 15 * i as u64;
    let per_cpu = tokio::task::spawn_blocking({
        let cpus = cpus.clone();
        move || {
            std::thread::scope(|s| {
                for (i, &cpu) in cpus.iter().enumerate() {
                    let path = path.clone();
                    s.spawn(move || {
                        let mut one = CpuSet::new();
                        one.set(cpu);
                        sched_setaffinity(None, &one).unwrap();
                        for _ in 0..made(i) {
                            let head = raw_get(addr, &path);
                            assert!(head.starts_with("HTTP/1.1 200"), "cpu {cpu}: {head}");
                        }
                    });
                }
            })
        }
    });
    per_cpu.await.unwrap();
    let metrics = common::text(&client(), addr, "/metrics").await;
    let accepted = |n: usize| {
        let line = format!("imgmirror_connections_accepted_total{{event_loop=\"{n}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap())
    };
    if cpus.len() > 1 {
        for n in 0..cpus.len() {
            // The /metrics request above came from an unpinned thread: at most one more.
            let got = accepted(n);
            assert!(
                (made(n)..=made(n) + 1).contains(&got),
                "loop {n} accepted {got}, not {}:\n{metrics}",
                made(n)
            );
        }
    } else {
        // One CPU: one loop, nothing to steer.
        assert_eq!(accepted(0), made(0) + 1, "{metrics}");
    }
    // Only the loops are pinned: every other thread (the loops' transform threads among them)
    // may run on every CPU.
    let mut loops = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let (Ok(name), Ok(status)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("status")),
        ) else {
            continue; // a thread that ended meanwhile
        };
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_string();
        let everywhere = status_list(&cpus);
        if name.starts_with("imgmirror-loop") {
            loops += 1;
            if cpus.len() > 1 {
                assert_ne!(allowed, everywhere, "{name} is not pinned");
            }
        } else {
            assert_eq!(allowed, everywhere, "{} is pinned", name.trim());
        }
    }
    let expected = if cpus.len() > 1 { cpus.len() } else { 0 };
    assert_eq!(loops, expected, "threads named imgmirror-loop");
    let second = server::start(config(&origin, dir.path(), &[], |c| {
        c.server.listen = addr.to_string();
        c.server.threads = cpus.len();
    }))
    .await;
    let Err(why) = second else {
        panic!("a second service started on {addr}");
    };
    // The address held by another instance is temporary (exit 75): it may be the old one stopping.
    assert!(
        matches!(&why, imgmirror::start::StartError::Temporary(m) if m.contains("cannot listen")),
        "{why:?}"
    );
    tokio::time::timeout(Duration::from_secs(15), svc.shutdown())
        .await
        .expect("every event loop stops");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// A GET of `path` on its own connection, blocking; returns the response head.
fn raw_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response);
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `cpus` as `/proc/*/status` lists them (`0-1`, `0,2-3`).
fn status_list(cpus: &[usize]) -> String {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for &c in cpus {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == c => *end = c,
            _ => ranges.push((c, c)),
        }
    }
    ranges
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}
