//! TLS with rustls: the server's certificate, a tenant's own certificate
//! picked by SNI from its `hosts`, client certificates (mTLS), and ALPN
//! offering h2 and http/1.1. Everything is read and checked before the
//! port is bound, and again on SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::read_small_file;
use crate::error::UserError;
use crate::http::router::host_rank;

/// The oldest TLS version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    /// TLS 1.2 and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// Parse `1.2` or `1.3`.
pub fn parse_min_version(value: &str) -> Result<MinVersion, UserError> {
    match value.trim() {
        "1.2" => Ok(MinVersion::Tls12),
        "1.3" => Ok(MinVersion::Tls13),
        _ => Err(UserError(format!(
            "--tls-min-version {value:?}: expected 1.2 or 1.3"
        ))),
    }
}

/// Where the server's TLS material is, as given on the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first (`--certfile`).
    pub cert: PathBuf,
    /// PEM private key (`--keyfile`).
    pub key: PathBuf,
    /// PEM CA certificates client certificates must chain to (`--ca-certs`).
    pub client_ca: Option<PathBuf>,
    /// `--tls-min-version`.
    pub min_version: MinVersion,
}

/// A tenant's own certificate, served to clients asking for its hosts.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantCert {
    /// The tenant's `hosts` patterns (`example.com`, `*.example.com`).
    pub hosts: Vec<String>,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Where `certfile` is set in the tenants file, for errors.
    pub cert_at: crate::config::Origin,
    /// Where `keyfile` is set.
    pub key_at: crate::config::Origin,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read a certificate chain and its key, and check they belong together;
/// errors name them as `cert_what` and `key_what` (the flags, or where a
/// tenant set them).
fn certified_key(
    cert: &Path,
    key: &Path,
    (what, key_what): (&str, &str),
) -> Result<Arc<CertifiedKey>> {
    let read = |path: &Path, what: &str| {
        read_small_file(path).map_err(|e| UserError(format!("{what} {}: {e}", path.display())))
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert, what)?)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            UserError(format!(
                "{what} {}: not a PEM certificate file ({e})",
                cert.display()
            ))
        })?;
    if chain.is_empty() {
        let why = pem_hint(&read(cert, what)?, "certificate", "x509");
        return Err(UserError(format!(
            "{what} {}: no certificate in it{why}",
            cert.display()
        ))
        .into());
    }
    let text = read(key, key_what)?;
    let private = PrivateKeyDer::from_pem_slice(&text).map_err(|e| {
        let encrypted = [&b"ENCRYPTED PRIVATE KEY"[..], b"Proc-Type: 4,ENCRYPTED"]
            .iter()
            .any(|marker| pem_has(&text, marker));
        let why = if encrypted {
            "the key is encrypted; give it without a passphrase \
             (`openssl pkey -in KEY -out plain.pem`), readable only by the server"
                .to_owned()
        } else if pem_has(&text, b"-----BEGIN CERTIFICATE") {
            "it holds a certificate, not a private key (swapped with the certificate file?)"
                .to_owned()
        } else {
            format!(
                "not a PEM private key ({e}){}",
                pem_hint(&text, "key", "pkey")
            )
        };
        UserError(format!("{key_what} {}: {why}", key.display()))
    })?;
    let ck = CertifiedKey::from_der(chain, private, &provider()).map_err(|e| {
        // The certificate itself, or the key itself, before whether they
        // go together.
        if let rustls::Error::InvalidCertificate(_) = e {
            let why = client_cert_refusal(&e);
            return UserError(format!("{what} {}: {why}", cert.display()));
        }
        if let rustls::Error::General(_) = e {
            return UserError(format!(
                "{key_what} {}: a key of a kind or size TLS here cannot use (RSA under 2048 \
                 or over 8192 bits, or another curve); use RSA of 2048 to 8192 bits, \
                 ECDSA P-256 or P-384, or Ed25519",
                key.display()
            ));
        }
        let why = match e {
            rustls::Error::InconsistentKeys(_) => {
                "the private key is not the certificate's".to_owned()
            }
            other => other.to_string(),
        };
        UserError(format!(
            "{what} {} and {key_what} {} do not go together ({why}): the key must \
             belong to the file's first certificate, the leaf, followed by its intermediates",
            cert.display(),
            key.display()
        ))
    })?;
    Ok(Arc::new(ck))
}

/// Picks the certificate for the name a client asks for (SNI): a
/// tenant's, by its hosts (exact before `*.` wildcard), else the server's.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    tenants: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name().map(str::to_ascii_lowercase) else {
            return Some(self.default.clone());
        };
        self.tenants
            .iter()
            .filter_map(|(hosts, key)| {
                let rank = hosts.iter().filter_map(|p| host_rank(p, &name)).max()?;
                Some((rank, key))
            })
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, key)| key.clone())
            .or_else(|| Some(self.default.clone()))
    }
}

/// Build the acceptor: every file read and checked now.
pub fn acceptor(files: &TlsFiles, tenants: &[TenantCert]) -> Result<TlsAcceptor> {
    let now = std::time::SystemTime::now();
    let default = certified_key(&files.cert, &files.key, ("--certfile", "--keyfile"))?;
    if let Some(why) = validity_warning(&default, now) {
        tracing::warn!("--certfile {}: {why}", files.cert.display());
    }
    let mut by_host = Vec::new();
    for t in tenants {
        let (what, key_what) = (t.cert_at.to_string(), t.key_at.to_string());
        let key = certified_key(&t.cert, &t.key, (&what, &key_what))?;
        if let Some(why) = validity_warning(&key, now) {
            tracing::warn!("{what} {}: {why}", t.cert.display());
        }
        for host in uncovered_hosts(&key, &t.hosts) {
            // A client checking names would refuse it: the operator should
            // know at start, not from a user's browser.
            tracing::warn!(
                "{what} {}: the certificate does not cover host {host:?} of its tenant; \
                 clients asking for that name will refuse the connection",
                t.cert.display()
            );
        }
        by_host.push((t.hosts.clone(), key));
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match files.min_version {
        MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .context("choosing the TLS versions")?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let pem = read_small_file(ca)
                .map_err(|e| UserError(format!("--ca-certs {}: {e}", ca.display())))?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    UserError(format!("--ca-certs {}: not a PEM file ({e})", ca.display()))
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                anyhow::bail!(UserError(format!(
                    "--ca-certs {}: no usable CA certificate in it",
                    ca.display()
                )));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| UserError(format!("--ca-certs {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver {
        default,
        tenants: by_host,
    }));
    // `http/1.0` too: a client offering only it (`curl --http1.0`) is
    // otherwise refused the handshake, where gunicorn (no ALPN) serves it.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The host patterns of `hosts` that `key`'s certificate is not valid for
/// (a `*.example.com` pattern is checked with one name under it).
fn uncovered_hosts<'a>(key: &CertifiedKey, hosts: &'a [String]) -> Vec<&'a str> {
    let Some(leaf) = key.cert.first() else {
        return Vec::new();
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
        return Vec::new();
    };
    hosts
        .iter()
        .map(String::as_str)
        .filter(|host| {
            let name = match host.strip_prefix("*.") {
                Some(parent) => format!("any-name.{parent}"),
                None => (*host).to_owned(),
            };
            rustls::pki_types::ServerName::try_from(name)
                .is_ok_and(|n| cert.verify_is_valid_for_subject_name(&n).is_err())
        })
        .collect()
}

/// How soon before its end a certificate is named at start.
const EXPIRY_NOTICE: std::time::Duration = std::time::Duration::from_secs(14 * 24 * 3600);

/// A warning when the leaf of `key` has expired, is not valid yet, or
/// expires within [`EXPIRY_NOTICE`] of `now`: serving it starts, since the
/// operator may be replacing it, but browsers refuse it.
fn validity_warning(key: &CertifiedKey, now: std::time::SystemTime) -> Option<String> {
    let leaf = key.cert.first()?;
    let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
    let at = |when: std::time::SystemTime| {
        let since = when
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        rustls::pki_types::UnixTime::since_unix_epoch(since)
    };
    let date = |t: rustls::pki_types::UnixTime| {
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.as_secs());
        httpdate::fmt_http_date(when)
    };
    // webpki checks the leaf's own validity before it looks for an issuer,
    // so with no trust anchors a valid leaf fails as `UnknownIssuer` and a
    // leaf out of its dates fails saying which date, at the time given.
    let check = |when| {
        cert.verify_for_usage(
            &[],
            &[],
            &[],
            at(when),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .err()
    };
    match check(now) {
        Some(webpki::Error::CertExpired { not_after, .. }) => Some(format!(
            "the certificate expired on {}; clients will refuse the connection",
            date(not_after)
        )),
        // `openssl x509 -days -1` makes one: its end before its start.
        Some(webpki::Error::InvalidCertValidity) => Some(
            "the certificate ends before it starts (notAfter earlier than notBefore); \
             clients will refuse the connection"
                .to_owned(),
        ),
        Some(webpki::Error::CertNotValidYet { not_before, .. }) => Some(format!(
            "the certificate is not valid before {}; clients will refuse the connection \
             until then (is this machine's clock right?)",
            date(not_before)
        )),
        _ => match check(now + EXPIRY_NOTICE) {
            Some(webpki::Error::CertExpired { not_after, .. }) => Some(format!(
                "the certificate expires on {}; renew it",
                date(not_after)
            )),
            _ => None,
        },
    }
}

/// Why a client certificate was refused, in words: rustls spells the
/// verifier's reasons as Rust debug text (`Other(OtherError(
/// UnsupportedCertVersion))`).
pub fn client_cert_refusal(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    let rustls::Error::InvalidCertificate(cert) = e else {
        return match e {
            rustls::Error::NoCertificatesPresented => "the client presented none".to_owned(),
            other => other.to_string(),
        };
    };
    match cert {
        C::Expired | C::ExpiredContext { .. } => "it has expired".to_owned(),
        C::NotValidYet | C::NotValidYetContext { .. } => "it is not valid yet".to_owned(),
        C::UnknownIssuer => "it is not signed by a CA of --ca-certs".to_owned(),
        C::BadSignature => "its signature does not verify".to_owned(),
        C::Revoked => "it has been revoked".to_owned(),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
            "it is not for client authentication (extended key usage)".to_owned()
        }
        C::Other(other) => {
            let name = format!("{other:?}");
            if name.contains("UnsupportedCertVersion") {
                "it is an X.509 v1 or v2 certificate; v3 is required".to_owned()
            } else if name.contains("CaUsedAsEndEntity") {
                "it is a CA certificate, not the client's own".to_owned()
            } else {
                format!("{other}")
            }
        }
        other => format!("{other:?}"),
    }
}

/// Whether `text` holds `marker`.
fn pem_has(text: &[u8], marker: &[u8]) -> bool {
    text.windows(marker.len()).any(|w| w == marker)
}

/// What a file that held no PEM `what` (certificate or key) seems to hold
/// instead, as the end of the error; `tool` is the openssl command that
/// converts one from DER.
fn pem_hint(text: &[u8], what: &str, tool: &str) -> String {
    if text.iter().all(u8::is_ascii_whitespace) {
        ": the file is empty".to_owned()
    } else if what == "certificate" && pem_has(text, b"PRIVATE KEY-----") {
        "; it holds a private key (swapped with the key file?)".to_owned()
    } else if !pem_has(text, b"-----BEGIN") {
        format!(
            "; no `-----BEGIN` line (DER? convert it: `openssl {tool} -inform DER -in FILE -out {what}.pem`)"
        )
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_a_tenant_certificate_does_not_cover_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let made =
            rcgen::generate_simple_self_signed(vec!["a.test".to_owned(), "*.shop.test".to_owned()])
                .unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("c.key"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
        let ck = certified_key(&cert, &key, ("certfile", "keyfile")).unwrap();
        let hosts: Vec<String> = [
            "a.test",
            "b.test",
            "x.shop.test",
            "*.shop.test",
            "*.other.test",
        ]
        .map(str::to_owned)
        .into();
        assert_eq!(uncovered_hosts(&ck, &hosts), ["b.test", "*.other.test"]);
    }

    #[test]
    fn a_certificate_out_of_its_dates_or_about_to_be_is_named() {
        let key = |not_before: (i32, u8, u8), not_after: (i32, u8, u8)| {
            let mut params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
            params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
            params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
            let pair = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&pair).unwrap();
            let private = PrivateKeyDer::try_from(pair.serialize_der()).unwrap();
            CertifiedKey::from_der(vec![cert.der().clone()], private, &provider()).unwrap()
        };
        // 2030-06-15, a fixed "now" so the test does not age.
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_907_712_000);
        let told = |k| validity_warning(&k, now);
        assert_eq!(told(key((2029, 1, 1), (2031, 1, 1))), None);
        let expired = told(key((2029, 1, 1), (2030, 6, 1))).unwrap();
        assert!(
            expired.starts_with("the certificate expired on Sat, 01 Jun 2030"),
            "{expired}"
        );
        let early = told(key((2030, 7, 1), (2031, 1, 1))).unwrap();
        assert!(
            early.contains("not valid before Mon, 01 Jul 2030"),
            "{early}"
        );
        let backwards = told(key((2030, 6, 14), (2030, 6, 13))).unwrap();
        assert!(backwards.contains("ends before it starts"), "{backwards}");
        let soon = told(key((2029, 1, 1), (2030, 6, 20))).unwrap();
        assert!(
            soon.starts_with("the certificate expires on Thu, 20 Jun 2030"),
            "{soon}"
        );
    }

    #[test]
    fn client_certificate_refusals_are_told_in_words() {
        use rustls::{CertificateError, Error, OtherError};
        let told = |e: Error| client_cert_refusal(&e);
        assert_eq!(
            told(Error::InvalidCertificate(CertificateError::Expired)),
            "it has expired"
        );
        assert_eq!(
            told(Error::NoCertificatesPresented),
            "the client presented none"
        );
        #[derive(Debug)]
        struct UnsupportedCertVersion;
        impl std::fmt::Display for UnsupportedCertVersion {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "UnsupportedCertVersion")
            }
        }
        impl std::error::Error for UnsupportedCertVersion {}
        let v1 = CertificateError::Other(OtherError(Arc::new(UnsupportedCertVersion)));
        assert_eq!(
            told(Error::InvalidCertificate(v1)),
            "it is an X.509 v1 or v2 certificate; v3 is required"
        );
    }

    #[test]
    fn exact_hosts_beat_wildcards() {
        assert_eq!(host_rank("a.example", "a.example"), Some(2));
        assert_eq!(host_rank("*.example", "a.example"), Some(1));
        assert_eq!(host_rank("*.example", "example"), None);
        assert_eq!(host_rank("b.example", "a.example"), None);
        assert!(parse_min_version("1.1").is_err());
        assert_eq!(parse_min_version("1.3").unwrap(), MinVersion::Tls13);
    }

    #[test]
    fn missing_or_mismatched_files_are_refused_with_their_names() {
        let flags = ("--certfile", "--keyfile");
        let e = certified_key(
            Path::new("/nonexistent.pem"),
            Path::new("/nonexistent.key"),
            flags,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--certfile /nonexistent.pem"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let a = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".to_owned()]).unwrap();
        let cert = file("a.pem", &a.cert.pem());
        let key = file("a.key", &a.key_pair.serialize_pem());
        certified_key(&cert, &key, flags).unwrap();
        let missing = Path::new("/nonexistent.key");
        let e = certified_key(&cert, missing, flags)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--keyfile /nonexistent.key: "), "{e}");
        let other = file("b.key", &b.key_pair.serialize_pem());
        let e = certified_key(&cert, &other, flags).unwrap_err().to_string();
        assert!(
            e.contains("do not go together") && e.contains("leaf"),
            "{e}"
        );
        let locked = file(
            "locked.key",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        let e = certified_key(&cert, &locked, flags)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the key is encrypted"), "{e}");
        // The certificate given as the key, and a key in DER.
        let e = certified_key(&cert, &cert, flags).unwrap_err().to_string();
        assert!(
            e.contains("it holds a certificate, not a private key"),
            "{e}"
        );
        let der = dir.path().join("a.der");
        std::fs::write(&der, a.key_pair.serialize_der()).unwrap();
        let e = certified_key(&cert, &der, flags).unwrap_err().to_string();
        assert!(e.contains("no `-----BEGIN` line (DER? convert"), "{e}");
        // The key given as the certificate, and an empty key file.
        let e = certified_key(&key, &key, flags).unwrap_err().to_string();
        assert!(e.contains("it holds a private key (swapped"), "{e}");
        let empty = file("empty.key", "");
        let e = certified_key(&cert, &empty, flags).unwrap_err().to_string();
        assert!(e.contains("the file is empty"), "{e}");
    }
}
