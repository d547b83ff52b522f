//! The SSRF guard, proven at the resolver seam: names that resolve (through a test resolver, never
//! DNS) to any address the guard refuses are refused before any connection, and so are redirects
//! to such names. No traffic leaves loopback: the only server contacted is the test's own origin.

use crate::common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use common::{image, Origin, Reply, HOST};
use imgmirror::config::UpstreamConfig;
use imgmirror::upstream::{FetchError, Lookup, Upstream};

/// A resolver answering from a table, remembering what it was asked.
#[derive(Default)]
struct Table {
    answers: HashMap<String, Vec<IpAddr>>,
    asked: Mutex<Vec<String>>,
}

impl Lookup for Table {
    fn lookup(
        &self,
        host: &str,
    ) -> imgmirror::store::BoxFuture<'static, std::io::Result<Vec<IpAddr>>> {
        self.asked.lock().unwrap().push(host.to_string());
        let answer = self.answers.get(host).cloned().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host}: no such name"),
            )
        });
        Box::pin(async move { answer })
    }
}

/// Every class of address the guard refuses, v4 and v6.
const REFUSED: &[&str] = &[
    "127.0.0.1",
    "127.255.0.9",
    "10.1.2.3",
    "172.16.5.4",
    "192.168.0.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "224.0.0.251",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd00:ec2::254",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::127.0.0.1",
    "64:ff9b::a00:1",
    "2002:c0a8:1::",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "fe80::5efe:a00:1",
];

#[tokio::test]
async fn names_resolving_to_refused_addresses_are_refused_before_connecting() {
    let mut table = Table::default();
    for (i, a) in REFUSED.iter().enumerate() {
        table
            .answers
            .insert(format!("h{i}.test"), vec![a.parse().unwrap()]);
    }
    // A name with several answers is refused when any of them is refused.
    table.answers.insert(
        "many.test".into(),
        vec!["10.0.0.1".parse().unwrap(), "127.0.0.1".parse().unwrap()],
    );
    let table = Arc::new(table);
    let upstream = Upstream::with_lookup(&UpstreamConfig::default(), table.clone()).unwrap();
    for (i, a) in REFUSED.iter().enumerate() {
        let host = format!("h{i}.test");
        match upstream.fetch(&format!("http://{host}/x.jpg"), None).await {
            Err(FetchError::Refused(why)) => {
                let shown: IpAddr = a.parse().unwrap();
                assert!(why.contains(&shown.to_string()), "{a}: {why}");
            }
            other => panic!("{a}: {other:?}"),
        }
    }
    assert!(matches!(
        upstream.fetch("http://many.test/x.jpg", None).await,
        Err(FetchError::Refused(_))
    ));
    assert_eq!(table.asked.lock().unwrap().len(), REFUSED.len() + 1);
}

#[tokio::test]
async fn a_redirect_to_a_name_resolving_inside_is_refused() {
    let origin = Origin::start().await;
    let port = origin.addr.port();
    origin.set("*", Reply::jpeg(image("news-dogs.jpg")));
    origin.set(
        "/hop.jpg",
        Reply::Redirect(format!("http://inside.test:{port}/secret.jpg")),
    );
    let mut table = Table::default();
    // The origin's own address: reachable, but only through the operator's pin, never by name.
    table
        .answers
        .insert("inside.test".into(), vec!["127.0.0.1".parse().unwrap()]);
    let table = Arc::new(table);
    let mut config = UpstreamConfig::default();
    config
        .resolve
        .insert(HOST.to_string(), origin.addr.to_string());
    let upstream = Upstream::with_lookup(&config, table.clone()).unwrap();
    let r = upstream
        .fetch(&format!("http://{HOST}/hop.jpg"), None)
        .await;
    assert!(matches!(r, Err(FetchError::Refused(_))), "{r:?}");
    assert_eq!(origin.hits("/secret.jpg"), 0, "never contacted");
    assert_eq!(
        *table.asked.lock().unwrap(),
        vec!["inside.test".to_string()]
    );
    // The pinned origin itself is fetched (the pin is the operator's choice).
    assert!(upstream
        .fetch(&format!("http://{HOST}/ok.jpg"), None)
        .await
        .is_ok());
}
