//! Client authentication (SCRAM-SHA-256, md5, trust) and TLS, through real clients.

use crate::support;
use crate::support::command::{OutputWithin, SHORT_RUN};

use std::process::Command;
use std::sync::Arc;

use pgwarden::config::{AuthMethod, UserConfig};
use support::proxy::{self, DATABASE, PASSWORD, USER};

fn psql(port: u16, conninfo_extra: &str, password: &str, sql: &str) -> std::process::Output {
    Command::new(support::psql_path())
        .arg("-X")
        .arg("-A")
        .arg("-t")
        .arg("-c")
        .arg(sql)
        .arg(format!(
            "host=127.0.0.1 port={port} user={USER} dbname={DATABASE} {conninfo_extra}"
        ))
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output_within(SHORT_RUN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_accepts_the_right_password_and_rejects_a_wrong_one() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| {
        assert_eq!(c.auth.method, AuthMethod::ScramSha256)
    })
    .await;
    let client = proxy::connect(&proxy).await;
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    let wrong = format!(
        "postgres://{USER}:nope@127.0.0.1:{}/{DATABASE}",
        proxy.port()
    );
    let err = proxy::connect_err(&wrong).await;
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");

    let unknown = format!("postgres://mallory:x@127.0.0.1:{}/{DATABASE}", proxy.port());
    let err = proxy::connect_err(&unknown).await;
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");

    // libpq's SCRAM too.
    let out = psql(proxy.port(), "", PASSWORD, "select 40 + 2");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    let out = psql(proxy.port(), "", "wrong", "select 1");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_and_unknown_database() {
    let cluster = support::cluster(0);
    let proxy = proxy::start(&cluster, |c| c.auth.method = AuthMethod::Md5).await;
    let out = psql(proxy.port(), "", PASSWORD, "select 'md5 ok'");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "md5 ok",
        "{out:?}"
    );
    let out = psql(proxy.port(), "", "bad", "select 1");
    assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed"));

    let url = format!(
        "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/nosuchdb",
        proxy.port()
    );
    let err = proxy::connect_err(&url).await;
    assert_eq!(err.code().map(|c| c.code()), Some("3D000"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_verifier_in_config_and_separate_server_password() {
    let cluster = support::cluster(0);
    // The SCRAM verifier PostgreSQL itself stores for the user.
    let verifier = cluster
        .primary()
        .psql(
            USER,
            "postgres",
            &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{USER}'"),
        )
        .unwrap();
    assert!(verifier.starts_with("SCRAM-SHA-256$"));
    let proxy = proxy::start(&cluster, |c| {
        c.auth.users = vec![UserConfig {
            name: USER.into(),
            password: Some(verifier.clone()),
            server_password: Some(PASSWORD.into()),
        }];
    })
    .await;
    let client = proxy::connect(&proxy).await;
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_sslmode_require() {
    let cluster = support::cluster(0);
    let tls_files = support::tls_files();
    let proxy = proxy::start(&cluster, |c| {
        c.proxy.tls_cert = Some(tls_files.cert.clone());
        c.proxy.tls_key = Some(tls_files.key.clone());
    })
    .await;

    // tokio-postgres over rustls, verifying the proxy's certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            tls_files.cert_der.clone(),
        ))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config);
    let url = format!("{}?sslmode=require", proxy::url(&proxy));
    let (client, connection) = tokio_postgres::connect(&url, tls).await.unwrap();
    tokio::spawn(connection);
    let value: String = client
        .query_one("SELECT 'over tls'::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(value, "over tls");

    // libpq: sslmode=require must negotiate TLS.
    let out = psql(proxy.port(), "sslmode=require", PASSWORD, "select 7");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7", "{out:?}");
    let out = Command::new(support::psql_path())
        .args(["-X", "-c", "\\conninfo"])
        .arg(format!(
            "host=127.0.0.1 port={} user={USER} dbname={DATABASE} sslmode=require",
            proxy.port()
        ))
        .env("PGPASSWORD", PASSWORD)
        .output_within(SHORT_RUN);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("SSL connection"),
        "{out:?}"
    );

    // Without a certificate configured, sslmode=require fails cleanly.
    let plain = proxy::start(&cluster, |_| {}).await;
    let out = psql(plain.port(), "sslmode=require", PASSWORD, "select 1");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SSL"),
        "{out:?}"
    );
}
