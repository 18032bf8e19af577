//! TLS set-up shared by the engines and the alert channels.

/// Installs rustls's `ring` crypto provider as the process default, once.
/// rustls needs one process-wide provider before any TLS client is built;
/// a provider the application installed first is kept, which is fine.
pub(crate) fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
