//! The deployment kit under `deploy/` is checked by the real tools where Debian has them: every
//! nginx config by `nginx -t`, the systemd unit by `systemd-analyze verify`, the alert rules by
//! `promtool check rules` and their unit tests by `promtool test rules`; the compose file, the
//! Kubernetes example and the Grafana dashboard (Docker, a cluster and Grafana do not run here)
//! by parsers and by checks against what imgmirror really is: every metric the rules and the
//! dashboard query exists on a live `/metrics`, the probes and ports match the shipped config.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::web::{self, nginx_t, Nginx};
use common::{image, Origin, Reply};

fn deploy(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy")
            .join(name),
    )
    .unwrap()
}

#[test]
fn the_compose_file_runs_two_replicas_on_one_bucket_behind_nginx() {
    let mut doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&deploy("docker-compose.yml")).unwrap();
    // `<<: *imgmirror` merges, as Compose does.
    doc.apply_merge().unwrap();
    let services = doc["services"].as_mapping().unwrap();
    for name in ["minio", "bucket", "imgmirror-a", "imgmirror-b", "nginx"] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    // The replicas share one bucket through the `x-imgmirror` anchor, each with its own volume.
    let env = |name: &str, key: &str| {
        doc["services"][name]["environment"][key]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| panic!("{name}: {key} not set"))
    };
    for replica in ["imgmirror-a", "imgmirror-b"] {
        assert_eq!(env(replica, "IMGMIRROR_CACHE__STORE"), "s3");
        assert_eq!(env(replica, "IMGMIRROR_S3__BUCKET"), "imgmirror");
        assert_eq!(env(replica, "IMGMIRROR_S3__ENDPOINT"), "http://minio:9000");
        for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"] {
            env(replica, var);
        }
        // Exposed on 0.0.0.0 in a container: routes are signed, with a key the user must give.
        assert!(env(replica, "IMGMIRROR_SECURITY__SIGNING_KEY")
            .starts_with("${IMGMIRROR_SIGNING_KEY:?"));
        assert_eq!(
            doc["services"][replica]["depends_on"]["bucket"]["condition"],
            "service_completed_successfully"
        );
    }
    assert_ne!(
        doc["services"]["imgmirror-a"]["volumes"], doc["services"]["imgmirror-b"]["volumes"],
        "each replica has its own local disk tier"
    );
    // The bucket job creates the bucket the replicas use.
    let job = doc["services"]["bucket"]["command"][0].as_str().unwrap();
    assert!(
        job.contains("mc mb --ignore-existing local/imgmirror"),
        "{job}"
    );
    // nginx mounts the replica config, which names both replicas.
    let mount = doc["services"]["nginx"]["volumes"][0].as_str().unwrap();
    assert!(mount.starts_with("./nginx-replicas.conf:"), "{mount}");
    let nginx = deploy("nginx-replicas.conf");
    assert!(nginx.contains("server imgmirror-a:8080") && nginx.contains("server imgmirror-b:8080"));
}

/// Every config the kit ships for nginx passes `nginx -t`: the replicas' (service names mapped
/// to loopback, as they do not resolve here), the sidecar snippet inside a blog's `server { }`,
/// and the one in the Kubernetes example.
#[test]
fn every_nginx_config_passes_nginx_t() {
    let Some(nginx) = Nginx::binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let replicas = deploy("nginx-replicas.conf")
        .replace("imgmirror-a", "127.0.0.1")
        .replace("imgmirror-b", "127.0.0.2")
        .replace("listen 80;", "listen 127.0.0.1:8081;");
    let sidecar = format!(
        "server {{\nlisten 127.0.0.1:8082;\nroot /var/www/blog;\n{}\n}}",
        deploy("nginx/imgmirror-sidecar.conf")
    );
    // The per-client limit: its zone in `http { }`, the sidecar's `limit_req` line uncommented.
    let limited = format!(
        "{}\nserver {{\nlisten 127.0.0.1:8084;\nroot /var/www/blog;\n{}\n}}",
        deploy("nginx/imgmirror-limit-req.conf"),
        deploy("nginx/imgmirror-sidecar.conf")
            .replace("# limit_req zone=imgmirror", "limit_req zone=imgmirror")
    );
    assert!(limited.contains("\n    limit_req zone=imgmirror burst=100 nodelay;"));
    let k8s = configmap()["data"]["nginx.conf"]
        .as_str()
        .unwrap()
        .replace("listen 8000;", "listen 127.0.0.1:8083;");
    for (name, body) in [
        ("replicas", replicas),
        ("sidecar", sidecar),
        ("sidecar-limit-req", limited),
        ("kubernetes", k8s),
    ] {
        if let Err(e) = nginx_t(&nginx, &dir.path().join(name), &body) {
            panic!("{name}: nginx -t: {e}");
        }
    }
}

/// The systemd unit passes `systemd-analyze verify` with nothing to say (an unknown key is only
/// a warning there, so its output must be empty too), with its binary path pointed at the build.
#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Some(analyze) = web::tool(
        "systemd-analyze",
        &["/usr/bin/systemd-analyze", "/bin/systemd-analyze"],
        "apt-get install systemd",
    ) else {
        return;
    };
    let unit = deploy("systemd/imgmirror.service");
    assert!(unit.contains(
        "ExecStart=/usr/local/bin/imgmirror serve --config /etc/imgmirror/imgmirror.toml"
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("imgmirror.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/imgmirror", env!("CARGO_BIN_EXE_imgmirror")),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    assert!(said.trim().is_empty(), "systemd-analyze verify: {said}");
    // A config error (exit 2) is not retried; the mirror folder is the state directory.
    assert!(unit.contains("RestartPreventExitStatus=2"));
    assert!(unit.contains("StateDirectory=imgmirror"));
}

fn promtool() -> Option<PathBuf> {
    web::tool(
        "promtool",
        &["/usr/bin/promtool"],
        "apt-get install prometheus",
    )
}

/// The alert rules pass `promtool check rules`, and their unit tests (each alert fires on the
/// series it is meant for and not on the healthy one beside it) pass `promtool test rules`.
#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = promtool() else {
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    for args in [
        ["check", "rules", "imgmirror-alerts.yml"],
        ["test", "rules", "imgmirror-alerts.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&deploy("prometheus/imgmirror-alerts.yml")).unwrap();
    let names: BTreeSet<&str> = rules["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for wanted in [
        "ImgmirrorDown",
        "ImgmirrorNotReady",
        "ImgmirrorHitRatioCollapsed",
        "ImgmirrorUpstreamErrors",
        "ImgmirrorMirrorNearDiskBudget",
    ] {
        assert!(names.contains(wanted), "{wanted} missing: {names:?}");
    }
}

/// The `imgmirror_*` sample names a PromQL expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("imgmirror_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        out.insert(name);
    }
    out
}

/// The sample names on a live `/metrics` after a sequence that makes every family appear: a
/// mirror evicted at start (a budget of one byte), a miss, a memory hit, a resize, a failing
/// upstream.
async fn live_sample_names() -> BTreeSet<String> {
    let origin = Origin::start().await;
    origin.set("/a.jpg", Reply::jpeg(image("news-dogs.jpg")));
    origin.set("/c.jpg", Reply::Status(500));
    let dir = tempfile::tempdir().unwrap();
    let first = imgmirror::server::start(common::config(&origin, dir.path(), &[], |_| {}))
        .await
        .unwrap();
    let a = common::route_url(first.addr, &origin.url("/a.jpg"));
    assert_eq!(common::get(&a).await.status(), 200);
    first.shutdown().await;
    let svc = imgmirror::server::start(common::config(&origin, dir.path(), &[], |c| {
        c.cache.disk_bytes = 1
    }))
    .await
    .unwrap();
    let metrics = format!("http://{}/metrics", svc.addr);
    let evicted = common::eventually(|| async {
        common::get(&metrics)
            .await
            .text()
            .await
            .unwrap()
            .contains("imgmirror_mirror_evictions_total{kind=\"original\"} 1")
    })
    .await;
    assert!(evicted, "the budget pass did not evict the original");
    let a = common::route_url(svc.addr, &origin.url("/a.jpg"));
    let options = imgmirror::route::Options {
        width: Some(64),
        ..Default::default()
    };
    let variant = format!(
        "http://{}{}",
        svc.addr,
        imgmirror::route::encode(&origin.url("/a.jpg"), &options, None).unwrap()
    );
    let c = common::route_url(svc.addr, &origin.url("/c.jpg"));
    for (url, status) in [(&a, 200), (&a, 200), (&variant, 200), (&c, 502)] {
        assert_eq!(common::get(url).await.status(), status, "{url}");
    }
    let text = common::get(&metrics).await.text().await.unwrap();
    svc.shutdown().await;
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
        .collect()
}

/// Every metric the alert rules and the Grafana dashboard query exists on `/metrics`; the
/// dashboard is valid JSON with a Prometheus datasource input and a query in every panel.
#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_query_is_on_metrics() {
    let live = live_sample_names().await;
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&deploy("prometheus/imgmirror-alerts.yml")).unwrap();
    let mut queried: Vec<(String, String)> = Vec::new();
    for rule in rules["groups"][0]["rules"].as_sequence().unwrap() {
        let expr = rule["expr"].as_str().unwrap();
        let alert = rule["alert"].as_str().unwrap();
        queried.extend(
            metric_names(expr)
                .into_iter()
                .map(|m| (alert.to_string(), m)),
        );
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&deploy("grafana/imgmirror-dashboard.json")).unwrap();
    assert_eq!(dashboard["__inputs"][0]["pluginId"], "prometheus");
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let names = metric_names(t["expr"].as_str().unwrap());
            assert!(!names.is_empty(), "{title}: queries no imgmirror metric");
            queried.extend(names.into_iter().map(|m| (title.to_string(), m)));
        }
    }
    // `up` is Prometheus' own; everything else must be ours and exist.
    let missing: Vec<&(String, String)> =
        queried.iter().filter(|(_, m)| !live.contains(m)).collect();
    assert!(
        missing.is_empty(),
        "not on /metrics: {missing:?}\nlive: {live:?}"
    );
}

fn configmap() -> serde_yaml_ng::Value {
    kubernetes()
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a ConfigMap")
}

fn kubernetes() -> Vec<serde_yaml_ng::Value> {
    use serde::Deserialize;
    let text = deploy("kubernetes/blog-with-imgmirror.yaml");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde_yaml_ng::Value::deserialize(d).unwrap())
        .collect()
}

/// The Kubernetes example holds together: its imgmirror config parses and listens on the pod's
/// loopback (nginx in the same pod proxies to it), the probes hit `/healthz` and `/readyz` on the
/// admin port, the mirror folder is the persistent volume, and the Service exposes nginx only.
#[test]
fn the_kubernetes_example_wires_probes_volume_and_config() {
    let docs = kubernetes();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "PersistentVolumeClaim",
            "Deployment",
            "Service"
        ]
    );
    let cm = configmap();
    let config = imgmirror::config::Config::from_parts(
        "configmap",
        cm["data"]["imgmirror.toml"].as_str().unwrap(),
        &[],
    )
    .unwrap();
    assert_eq!(config.server.listen, "127.0.0.1:8080");
    assert!(config.open_proxy_risk().is_none());
    let admin_port: u64 = config
        .server
        .admin_listen
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let nginx_conf = cm["data"]["nginx.conf"].as_str().unwrap();
    assert!(nginx_conf.contains(&format!("proxy_pass http://{};", config.server.listen)));

    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().unwrap();
    let imgmirror = containers
        .iter()
        .find(|c| c["name"] == "imgmirror")
        .unwrap();
    let port = imgmirror["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "admin")
        .unwrap();
    assert_eq!(port["containerPort"].as_u64(), Some(admin_port));
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(imgmirror[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(imgmirror[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    // The env override keeps the loopback listen the Dockerfile would replace.
    let env = imgmirror["env"].as_sequence().unwrap();
    assert!(env
        .iter()
        .any(|e| e["name"] == "IMGMIRROR_SERVER__LISTEN"
            && e["value"] == config.server.listen.as_str()));
    let mount = imgmirror["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "mirror")
        .unwrap();
    assert_eq!(mount["mountPath"].as_str(), config.cache.dir.to_str());
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "mirror")
        .unwrap();
    let pvc = docs
        .iter()
        .find(|d| d["kind"] == "PersistentVolumeClaim")
        .unwrap();
    assert_eq!(
        volume["persistentVolumeClaim"]["claimName"],
        pvc["metadata"]["name"]
    );
    let service = docs.iter().find(|d| d["kind"] == "Service").unwrap();
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    let nginx = containers.iter().find(|c| c["name"] == "nginx").unwrap();
    assert_eq!(nginx["ports"][0]["name"], "http");
}

/// The sidecar journey of SPEC §5 "Safe by default", with the shipped config and the shipped
/// nginx snippet: posts rewritten without `--warm` (the links go on record, nothing is fetched),
/// then every rewritten route loads through nginx, and routes to a path or a host no post links
/// to are refused with 403 while the origin sees no request for them. Before `upstream.fetch`,
/// the shipped sidecar fetched every route for anyone.
#[tokio::test]
async fn the_shipped_sidecar_fetches_only_the_posts_links() {
    let Some(nginx_bin) = Nginx::binary() else {
        return;
    };
    let origin = Origin::start().await;
    origin.set("/202106/a_1024.jpg", Reply::jpeg(image("news-dogs.jpg")));
    origin.set(
        "/202106/b_1024.jpg",
        Reply::jpeg(image("news-mountain.jpg")),
    );
    origin.set("/202106/secret.jpg", Reply::jpeg(image("news-dogs.jpg")));
    origin.set("/anything.jpg", Reply::jpeg(image("news-dogs.jpg")));
    let dir = tempfile::tempdir().unwrap();
    let blog = dir.path();
    std::fs::create_dir_all(blog.join("source/_posts")).unwrap();
    std::fs::write(
        blog.join("source/_posts/post.md"),
        "---\nheadimg: https://cors.zfour.workers.dev/?http://zkres2.myzaker.com/202106/a_1024.jpg\n---\n\
         <img src=\"https://cors.zfour.workers.dev/?http://zkres2.myzaker.com/202106/b_1024.jpg\">\n",
    )
    .unwrap();
    let mut config = common::shipped_config();
    assert_eq!(config.upstream.fetch, imgmirror::config::FetchPolicy::Known);
    config.cache.dir = blog.join("mirror");
    for h in ["zkres2.myzaker.com", "elsewhere.test"] {
        config
            .upstream
            .resolve
            .insert(h.into(), origin.addr.to_string());
    }
    std::fs::write(
        blog.join("imgmirror.toml"),
        toml::to_string(&config).unwrap(),
    )
    .unwrap();
    let out = common::bin::run(
        blog,
        &["rewrite", "--config", "imgmirror.toml", "source/_posts"],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("2 links on record"), "{}", out.stderr);
    assert_eq!(
        origin.total_hits(),
        0,
        "rewrite without --warm fetches nothing"
    );
    let post = std::fs::read_to_string(blog.join("source/_posts/post.md")).unwrap();
    let routes: Vec<&str> = post
        .split(['\'', '"', ' ', '\n'])
        .filter(|s| s.starts_with("/i/"))
        .collect();
    assert_eq!(routes.len(), 2, "{post}");

    let mut cmd = common::bin::imgmirror(blog);
    cmd.args(["serve", "--config", "imgmirror.toml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let service = common::bin::Service::spawn(cmd).await;
    let snippet =
        deploy("nginx/imgmirror-sidecar.conf").replace("127.0.0.1:8080", &service.addr.to_string());
    let site = blog.join("public");
    std::fs::create_dir_all(&site).unwrap();
    let server = format!("root {};\n{snippet}", site.display());
    let nginx = Nginx::start(&nginx_bin, &blog.join("nginx"), &server).await;

    for route in &routes {
        let r = common::get(&format!("{}{route}", nginx.origin())).await;
        assert_eq!(r.status(), 200, "{route}");
        assert!(
            r.bytes().await.unwrap().starts_with(&[0xFF, 0xD8]),
            "{route}"
        );
    }
    assert_eq!(origin.total_hits(), 2);
    for unlinked in [
        "http://zkres2.myzaker.com/202106/secret.jpg",
        "http://elsewhere.test/anything.jpg",
    ] {
        let route = imgmirror::route::encode(unlinked, &Default::default(), None).unwrap();
        let r = common::get(&format!("{}{route}", nginx.origin())).await;
        assert_eq!(r.status(), 403, "{unlinked}");
        let body = r.text().await.unwrap();
        assert!(body.contains("upstream.fetch"), "{body}");
    }
    assert_eq!(origin.hits("/202106/secret.jpg"), 0);
    assert_eq!(origin.hits("/anything.jpg"), 0);
    assert_eq!(
        origin.total_hits(),
        2,
        "the origin saw nothing of the refused routes"
    );
}

/// The memory limits the kit ships agree with the budgets of the config they run
/// (`Config::memory_ceiling`: the memory cache, as much in unfinished responses, running
/// transforms' `image.memory_bytes`, remembered 404s, the base): the systemd unit's `MemoryMax`
/// with the shipped config, the Kubernetes container's limit with its ConfigMap. A limit below
/// the budgets would let the kernel kill what the budgets admit.
#[test]
fn memory_limits_cover_the_budgets() {
    let unit = deploy("systemd/imgmirror.service");
    let max = unit
        .lines()
        .find_map(|l| l.strip_prefix("MemoryMax="))
        .expect("MemoryMax in the unit");
    let size = |text: &str, suffixes: &[(&str, u64)]| {
        suffixes
            .iter()
            .find_map(|(s, m)| text.strip_suffix(s).map(|n| n.parse::<u64>().unwrap() * m))
            .unwrap_or_else(|| panic!("a size: {text}"))
    };
    // systemd: K, M, G are powers of 1024.
    let unit_max = size(max, &[("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)]);
    let shipped = common::shipped_config();
    assert!(
        unit_max >= shipped.memory_ceiling(),
        "MemoryMax={max} is below the shipped budgets ({} MiB)",
        shipped.memory_ceiling() >> 20
    );
    // Not far above them either: the comment in the unit adds them up.
    assert!(
        unit_max - shipped.memory_ceiling() < 64 << 20,
        "MemoryMax={max}"
    );

    let config_text = configmap()["data"]["imgmirror.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let k8s_config = imgmirror::config::Config::from_parts("configmap", &config_text, &[]).unwrap();
    let limit = kubernetes()
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .and_then(|d| {
            d["spec"]["template"]["spec"]["containers"]
                .as_sequence()?
                .iter()
                .find(|c| c["name"] == "imgmirror")
                .map(|c| {
                    c["resources"]["limits"]["memory"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
        })
        .expect("the imgmirror container's memory limit");
    let k8s_max = size(&limit, &[("Gi", 1 << 30), ("Mi", 1 << 20)]);
    assert!(
        k8s_max >= k8s_config.memory_ceiling(),
        "limit {limit} is below the ConfigMap's budgets ({} MiB)",
        k8s_config.memory_ceiling() >> 20
    );
}
