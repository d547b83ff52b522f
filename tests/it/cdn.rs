//! The CDN in front, for real: Debian's Varnish with varnish-modules' `xkey`, started by the test
//! on loopback in front of `imgmirror serve` (the binary). Every image answer names its purge key
//! (`cdn.surrogate_key = "xkey"`); a second request is a Varnish hit that imgmirror never sees;
//! `imgmirror purge` (the binary, beside the running service) ends with one `PURGE` per key to
//! `cdn.purge_url`, and the next request is a Varnish miss that reaches imgmirror again. And a
//! purge through a CDN's API (Cloudflare's shape: a token header and the key in the body), against
//! a loopback stand-in for that API.

use crate::common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::bin::{self, Service};
use common::{image, Origin, Reply};

/// A running `varnishd` with its own work folder; stopped when dropped.
struct Varnish {
    child: Child,
    port: u16,
}

impl Drop for Varnish {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Varnish {
    /// Starts Varnish on loopback `port` in front of `backend`, with `vcl` (whose
    /// `{backend_host}`/`{backend_port}` are filled in), and waits until it answers.
    async fn start(
        binary: &Path,
        dir: &Path,
        port: u16,
        backend: std::net::SocketAddr,
        vcl: &str,
    ) -> Varnish {
        let vcl_file = dir.join("test.vcl");
        let vcl = vcl
            .replace("{backend_host}", &backend.ip().to_string())
            .replace("{backend_port}", &backend.port().to_string());
        std::fs::write(&vcl_file, vcl).unwrap();
        let child = Command::new(binary)
            .args(["-F", "-j", "none", "-s", "malloc,32m"])
            .arg("-a")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-n")
            .arg(dir.join("work"))
            .arg("-f")
            .arg(&vcl_file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start varnishd");
        let varnish = Varnish { child, port };
        // Up to 30 s: varnishd compiles the VCL with cc first.
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return varnish;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("varnishd did not listen on {port}");
    }
}

/// Caches everything cacheable, files each object under its `xkey` response header (the vmod's
/// default), purges by key on `PURGE /xkey/<key>`, and says on each answer whether it was a hit.
const VCL: &str = r#"vcl 4.1;
import xkey;

backend imgmirror {
    .host = "{backend_host}";
    .port = "{backend_port}";
}

sub vcl_recv {
    if (req.method == "PURGE") {
        if (req.url ~ "^/xkey/[0-9a-f]+$") {
            set req.http.n-gone = xkey.purge(regsub(req.url, "^/xkey/", ""));
            return (synth(200, "purged " + req.http.n-gone));
        }
        return (synth(400, "bad purge"));
    }
}

sub vcl_deliver {
    if (obj.hits > 0) {
        set resp.http.x-varnish-cache = "HIT";
    } else {
        set resp.http.x-varnish-cache = "MISS";
    }
}
"#;

#[tokio::test]
async fn a_purge_reaches_varnish_by_surrogate_key() {
    let Some(varnishd) = common::web::tool(
        "Varnish",
        &["/usr/sbin/varnishd"],
        "apt-get install varnish varnish-modules",
    ) else {
        return;
    };
    let origin = Origin::start().await;
    origin.set("/a.jpg", Reply::jpeg(image("news-dogs.jpg")));
    let url = "http://images.example.org/a.jpg".to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The service (the binary, on loopback): any link fetched, the image host mapped onto the
    // test's origin, purge keys in `xkey`, purges to Varnish.
    let varnish_port = common::free_port();
    let config = format!(
        "[upstream]\nfetch = \"any\"\nresolve = {{ \"images.example.org\" = \"{}\" }}\n\
         [cache]\ndir = \"mirror\"\n[security]\npurge_token = \"a-purge-token-for-the-cdn-test\"\n\
         [cdn]\nsurrogate_key = \"xkey\"\npurge_url = \"http://127.0.0.1:{varnish_port}/xkey/{{key}}\"\n",
        origin.addr
    );
    std::fs::write(d.join("imgmirror.toml"), &config).unwrap();
    let mut cmd = bin::imgmirror(d);
    cmd.args(["serve", "--config", "imgmirror.toml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let service = Service::spawn(cmd).await;
    let varnish = Varnish::start(&varnishd, d, varnish_port, service.addr, VCL).await;
    // The purge command reads the same config, with the service's address.
    std::fs::write(
        d.join("imgmirror.toml"),
        format!("[server]\nlisten = \"{}\"\n{config}", service.addr),
    )
    .unwrap();

    let route = imgmirror::route::encode(&url, &Default::default(), None).unwrap();
    let through = format!("http://127.0.0.1:{}{route}", varnish.port);
    let key = imgmirror::cdn::purge_key(&url);
    let get = || async {
        let r = common::get(&through).await;
        assert_eq!(r.status(), 200);
        let h = r.headers().clone();
        assert_eq!(r.bytes().await.unwrap(), image("news-dogs.jpg"));
        h
    };
    let first = get().await;
    assert_eq!(first["x-varnish-cache"], "MISS");
    assert_eq!(
        first["xkey"],
        key.as_str(),
        "the answer names its purge key"
    );
    let second = get().await;
    assert_eq!(second["x-varnish-cache"], "HIT");
    assert_eq!(origin.hits("/a.jpg"), 1);

    let out = bin::run(d, &["purge", "--config", "imgmirror.toml", &url], &[]);
    assert_eq!(out.code, 0, "purge: {}", out.stderr);
    assert!(out.stderr.contains("memory purged"), "{}", out.stderr);
    let third = get().await;
    assert_eq!(
        third["x-varnish-cache"], "MISS",
        "Varnish still held the purged image"
    );
    // The purge reached imgmirror too: the image was fetched again from the origin.
    assert_eq!(origin.hits("/a.jpg"), 2);
    drop(varnish);
    drop(service);
}

/// A CDN purged through its API, with no relay: `cdn.purge_headers` carry the token and
/// `cdn.purge_body` the key (Cloudflare's purge by tag is a `POST` of `{"tags":["<key>"]}` with
/// `Authorization: Bearer`). `imgmirror purge` with no service running sends it itself; a loopback
/// stand-in for the API records the request and refuses the second one, whose reason is printed.
#[tokio::test]
async fn a_purge_reaches_a_cdn_api_with_its_token_and_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = api.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let recorder = tokio::spawn(async move {
        for answer in [
            "200 OK\r\ncontent-length: 16\r\n\r\n{\"success\":true}",
            "403 Forbidden\r\ncontent-length: 31\r\n\r\n{\"errors\":[\"bad token, 10000\"]}",
        ] {
            let (mut stream, _) = api.accept().await.unwrap();
            let head = common::read_head(&mut stream).await.unwrap().unwrap();
            let (head, start) = head.split_once("\r\n\r\n").unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            let mut body = start.as_bytes().to_vec();
            while body.len() < length {
                let mut more = [0u8; 1024];
                let n = stream.read(&mut more).await.unwrap();
                body.extend_from_slice(&more[..n]);
            }
            let reply = format!("HTTP/1.1 {answer}");
            stream.write_all(reply.as_bytes()).await.unwrap();
            tx.send((head.to_string(), String::from_utf8(body).unwrap()))
                .unwrap();
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\n[cache]\ndir = \"mirror\"\n[cdn]\n\
         purge_url = \"http://{api_addr}/client/v4/zones/z1/purge_cache\"\npurge_method = \"POST\"\n\
         purge_body = '{{\"tags\":[\"{{key}}\"]}}'\n",
        common::free_port()
    );
    std::fs::write(d.join("imgmirror.toml"), config).unwrap();
    let url = "http://images.example.org/a.jpg";
    let purge = ["purge", "--config", "imgmirror.toml", url];
    // The token from the environment, as README advises (out of the config file).
    let headers = [(
        "IMGMIRROR_CDN__PURGE_HEADERS",
        "{ Authorization = \"Bearer cf-token\", Content-Type = \"application/json\" }",
    )];
    let out = bin::run_async(d, &purge, &headers).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("cdn: 1 purge key(s) purged"),
        "{}",
        out.stderr
    );
    let (head, body) = rx.recv().await.unwrap();
    assert!(
        head.starts_with("POST /client/v4/zones/z1/purge_cache HTTP/1.1\r\n"),
        "{head}"
    );
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("\r\nauthorization: bearer cf-token"),
        "{head}"
    );
    assert!(
        head.contains("\r\ncontent-type: application/json"),
        "{head}"
    );
    let key = imgmirror::cdn::purge_key(url);
    assert_eq!(body, format!("{{\"tags\":[\"{key}\"]}}"));
    // A refusal is a problem (exit 1) that says what the API said.
    let out = bin::run_async(d, &purge, &headers).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("answered 403 Forbidden {\"errors\":[\"bad token, 10000\"]}"),
        "{}",
        out.stderr
    );
    recorder.await.unwrap();
}

/// An original the origin replaced (new bytes under a new validator), found by `imgmirror warm`
/// when it revalidates: the CDN in front, which holds the old bytes as `immutable`, is asked to
/// drop them before the command ends (its purge is not lost with the command's runtime).
#[tokio::test]
async fn a_replaced_original_found_by_warm_is_purged_from_the_cdn() {
    let origin = Origin::start().await;
    let cdn = Origin::start().await;
    cdn.set("*", Reply::Status(200));
    let photo = |name, etag| Reply::Ok {
        body: image(name),
        content_type: "image/jpeg",
        etag: Some(etag),
    };
    origin.set("/a.jpg", photo("news-dogs.jpg", "\"v1\""));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("posts")).unwrap();
    let url = "http://images.example.org/a.jpg";
    std::fs::write(d.join("posts/a.md"), format!("<img src=\"{url}\">\n")).unwrap();
    let config = format!(
        "[upstream]\nresolve = {{ \"images.example.org\" = \"{}\" }}\n\
         [rewrite]\nmirror_hosts = [\"images.example.org\"]\n\
         [cache]\ndir = \"mirror\"\nttl_secs = 1\n[cdn]\npurge_url = \"http://{}/purge/{{key}}\"\n",
        origin.addr, cdn.addr
    );
    std::fs::write(d.join("imgmirror.toml"), config).unwrap();
    let warm = ["warm", "--config", "imgmirror.toml", "posts"];
    let out = bin::run_async(d, &warm, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(cdn.total_hits(), 0, "a first copy replaces nothing");
    origin.set("/a.jpg", photo("news-mountain.jpg", "\"v2\""));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = bin::run_async(d, &warm, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("1 fetched"), "{}", out.stderr);
    let key = imgmirror::cdn::purge_key(url);
    assert_eq!(
        cdn.hits(&format!("/purge/{key}")),
        1,
        "{:?}",
        cdn.requests()
    );
}

/// A purge of many images sends one request per key, a few at a time, and counts them; one
/// refused is reported (exit 1) while the others are still sent.
#[tokio::test]
async fn a_purge_of_many_images_sends_every_key() {
    let cdn = Origin::start().await;
    cdn.set("*", Reply::Status(200));
    let urls: Vec<String> = (0..9)
        .map(|i| format!("http://images.example.org/{i}.jpg"))
        .collect();
    let refused = format!("/purge/{}", imgmirror::cdn::purge_key(&urls[4]));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\n[cache]\ndir = \"mirror\"\n[cdn]\n\
         purge_url = \"http://{}/purge/{{key}}\"\n",
        common::free_port(),
        cdn.addr
    );
    std::fs::write(d.join("imgmirror.toml"), config).unwrap();
    let mut args = vec!["purge", "--config", "imgmirror.toml"];
    args.extend(urls.iter().map(String::as_str));
    let out = bin::run_async(d, &args, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("cdn: 9 purge key(s) purged"),
        "{}",
        out.stderr
    );
    for u in &urls {
        let path = format!("/purge/{}", imgmirror::cdn::purge_key(u));
        assert_eq!(cdn.hits(&path), 1, "{u}");
    }
    cdn.set(&refused, Reply::Status(500));
    let out = bin::run_async(d, &args, &[]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("answered 500"), "{}", out.stderr);
    assert_eq!(cdn.total_hits(), 18, "every key was sent again");
}
