//! How connections are made: plain, or TLS verified against the web PKI
//! roots and `tls_ca_file` when the URL says `sslmode=require`.

use tokio_postgres::config::SslMode;

/// How connections are made: plain, or TLS when the URL says `sslmode=require`.
#[derive(Clone)]
pub(super) enum Tls {
    None,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

/// TLS when the URL says `sslmode=require`, verifying the server against the
/// web PKI roots and `tls_ca_file`. Unlike libpq's `require`, the certificate
/// is always verified: an unverified connection would hand the password to
/// anyone in the middle.
pub(super) fn tls_for(
    config: &tokio_postgres::Config,
    ca_file: Option<&str>,
) -> Result<Tls, String> {
    if config.get_ssl_mode() != SslMode::Require {
        return Ok(Tls::None);
    }
    crate::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let certs =
            CertificateDer::pem_file_iter(path).map_err(|e| format!("tls_ca_file {path}: {e}"))?;
        let mut added = 0;
        for cert in certs {
            let cert = cert.map_err(|e| format!("tls_ca_file {path}: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("tls_ca_file {path}: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("tls_ca_file {path}: no PEM certificate in it"));
        }
    }
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Tls::Rustls(tokio_postgres_rustls::MakeRustlsConnect::new(
        client,
    )))
}
