//! TLS and mutual TLS: only clients with the right certificates get through.

use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::common::*;
use syncline::config::TlsConfig;
use syncline::proto::PullRequest;
use syncline::proto::replication_service_client::ReplicationServiceClient;

struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    client: (String, String),
    stranger: (String, String),
}

/// A CA, a server certificate for "localhost", a client certificate from the CA and one from
/// another CA.
fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str, issuer: &Issuer<'_, KeyPair>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("localhost", &issuer);
    let client = leaf("client", &issuer);
    let other_key = KeyPair::generate().unwrap();
    let mut other_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other = Issuer::new(other_params, other_key);
    let stranger = leaf("client", &other);
    for (name, pem) in [
        ("ca.pem", ca_cert.pem()),
        ("server.pem", server_cert),
        ("server.key", server_key),
    ] {
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    Pki {
        dir,
        ca_pem: ca_cert.pem(),
        client,
        stranger,
    }
}

async fn tls_pull(
    server: &TestServer,
    ca: Option<&str>,
    identity: Option<&(String, String)>,
) -> Result<(), String> {
    syncline::crypto::install_provider();
    let mut tls = ClientTlsConfig::new().domain_name("localhost");
    if let Some(ca) = ca {
        tls = tls.ca_certificate(Certificate::from_pem(ca));
    }
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .tls_config(tls)
        .map_err(|e| e.to_string())?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    ReplicationServiceClient::new(channel)
        .pull(PullRequest {
            collection: "tasks".into(),
            checkpoint: None,
            limit: 1,
            selector: Vec::new(),
        })
        .await
        .map(|_| ())
        .map_err(|e| format!("pull: {e}"))
}

async fn plaintext_pull(server: &TestServer) -> Result<(), String> {
    let channel = Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    ReplicationServiceClient::new(channel)
        .pull(PullRequest {
            collection: "tasks".into(),
            checkpoint: None,
            limit: 1,
            selector: Vec::new(),
        })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn tls_server(pki: &Pki, mutual: bool) -> TestServer {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.tls = Some(TlsConfig {
        cert_file: pki.dir.path().join("server.pem"),
        key_file: pki.dir.path().join("server.key"),
        client_ca_file: mutual.then(|| pki.dir.path().join("ca.pem")),
    });
    // start_unready: the harness's readiness probe speaks plain text.
    let server = TestServer::start_unready(cfg).await;
    for _ in 0..200 {
        let identity = mutual.then_some(&pki.client);
        if tls_pull(&server, Some(&pki.ca_pem), identity).await.is_ok() {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("TLS server never became ready");
}

#[tokio::test]
async fn tls_serves_only_tls_clients_that_trust_the_server() {
    let pki = pki();
    let server = tls_server(&pki, false).await;
    assert!(tls_pull(&server, Some(&pki.ca_pem), None).await.is_ok());
    assert!(
        plaintext_pull(&server).await.is_err(),
        "plain text is refused"
    );
    let stranger_ca = pki.stranger.0.clone(); // a certificate that did not sign the server's
    assert!(
        tls_pull(&server, Some(&stranger_ca), None).await.is_err(),
        "an untrusted server certificate is refused"
    );
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_from_the_ca() {
    let pki = pki();
    let server = tls_server(&pki, true).await;
    assert!(
        tls_pull(&server, Some(&pki.ca_pem), Some(&pki.client))
            .await
            .is_ok()
    );
    assert!(
        tls_pull(&server, Some(&pki.ca_pem), None).await.is_err(),
        "no client certificate"
    );
    assert!(
        tls_pull(&server, Some(&pki.ca_pem), Some(&pki.stranger))
            .await
            .is_err(),
        "a certificate from another CA"
    );
    assert!(plaintext_pull(&server).await.is_err());
}
