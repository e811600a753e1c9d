//! The process's TLS crypto provider. Two rustls providers are compiled in (ring for tonic's
//! TLS, aws-lc-rs for the S3 client of `object_store`), and with two rustls cannot choose by
//! itself: every TLS handshake would panic. The process installs ring once, before any TLS
//! configuration is built.

/// Installs ring as the process-wide rustls provider (idempotent; a provider installed
/// earlier by the embedding program stays).
pub fn install_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only when a provider is installed already: that one is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
