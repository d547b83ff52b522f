//! The deployment kit under `deploy/` is checked by the real tools where this machine has them:
//! the compose file by a YAML parser (Docker cannot run here), the nginx config by `nginx -t`.

use std::path::Path;
use std::process::Command;

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

#[test]
fn the_replica_nginx_config_passes_nginx_t() {
    let nginx = Path::new("/usr/sbin/nginx");
    assert!(
        nginx.exists(),
        "nginx is not installed: scripts/install-deps --test installs it"
    );
    let dir = tempfile::tempdir().unwrap();
    // The compose service names do not resolve here: check the same file with loopback replicas.
    let site = deploy("nginx-replicas.conf")
        .replace("imgmirror-a", "127.0.0.1")
        .replace("imgmirror-b", "127.0.0.2");
    std::fs::write(dir.path().join("site.conf"), site).unwrap();
    let main = format!(
        "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n  include {d}/site.conf;\n}}\n",
        d = dir.path().display()
    );
    std::fs::write(dir.path().join("nginx.conf"), main).unwrap();
    let out = Command::new(nginx)
        .arg("-t")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
