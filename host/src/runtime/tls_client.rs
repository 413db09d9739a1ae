//! The guest's outbound TLS (`rsgi-wasm:wsgi/tls`): rustls sessions that
//! turn plaintext into records and back while the guest moves the records
//! over its own socket, and the trust each app's settings build.
//!
//! The socket stays the guest's, so the allow-list check happens at
//! connect, as for plain TCP, and the host holds no socket for it.
//! Certificate errors come back with OpenSSL's verify codes and wording,
//! which the guest's `ssl` raises as `SSLCertVerificationError`.

use std::io::{Read, Write};
use std::sync::{Arc, LazyLock, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore,
};
use sha2::{Digest, Sha256};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::runtime::generated::tls::{
    self, CertError, Error, HostClient, Received, SessionInfo, Settings,
};
use crate::runtime::outbound::Outbound;
use crate::runtime::tls_session::Session as Client;

/// Sessions one instance may hold at once: each keeps its buffers on the
/// host (up to 64 KiB of unsent plaintext, 16 KiB received, the records in
/// flight), outside the instance's memory limit.
const MAX_SESSIONS: usize = 256;
/// Client configurations an app keeps built (most apps use one or two).
const CACHED_CONFIGS: usize = 8;
/// Largest plaintext chunk one `read` returns.
const MAX_READ: usize = 64 * 1024;
/// Most bytes of certificates and key one session's settings may carry
/// (certifi's whole bundle is about 0.3 MB).
const MAX_SETTINGS_BYTES: usize = 4 << 20;
/// Distinct configurations an app's sessions may hold at once: each holds
/// its roots in host memory, outside the instances' `--memory`.
const MAX_LIVE_CONFIGS: usize = 32;

static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));

/// Mozilla's roots, parsed once for the process.
static DEFAULT_ROOTS: LazyLock<RootCertStore> = LazyLock::new(|| RootCertStore {
    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
});

/// One app's TLS: the operator's CAs and the configurations built so far.
pub struct TlsClients {
    operator_ca: Vec<CertificateDer<'static>>,
    configs: Mutex<Configs>,
    outbound: Arc<Outbound>,
}

/// The configurations an app built: the last few kept for reuse, and every
/// one a session still holds (counted against `MAX_LIVE_CONFIGS`).
#[derive(Default)]
struct Configs {
    cached: Vec<([u8; 32], Arc<ClientConfig>)>,
    live: Vec<std::sync::Weak<ClientConfig>>,
}

impl TlsClients {
    /// Trusting `operator_ca` (`--tls-ca`) in every session; bytes are
    /// counted in `outbound`'s metrics.
    pub fn new(operator_ca: Vec<CertificateDer<'static>>, outbound: Arc<Outbound>) -> Arc<Self> {
        Arc::new(TlsClients {
            operator_ca,
            configs: Mutex::default(),
            outbound,
        })
    }

    /// The configuration for `s`, built once per distinct settings: an app
    /// using `requests` hands over certifi's whole bundle with every new
    /// session, and parsing it each time would cost more than the handshake.
    fn config(&self, s: &Settings) -> Result<Arc<ClientConfig>, Error> {
        let size = s.ca_certs.iter().map(Vec::len).sum::<usize>()
            + s.client_chain.len()
            + s.client_key.len();
        if size > MAX_SETTINGS_BYTES {
            return Err(Error::Settings(format!(
                "{size} bytes of certificates and keys in one context; at most {MAX_SETTINGS_BYTES} are accepted"
            )));
        }
        let key = settings_key(s);
        if let Some((_, c)) = self.lock().cached.iter().find(|(k, _)| *k == key) {
            return Ok(c.clone());
        }
        let config = Arc::new(self.build(s)?);
        let mut configs = self.lock();
        configs.live.retain(|c| c.strong_count() > 0);
        if configs.live.len() >= MAX_LIVE_CONFIGS {
            return Err(Error::Settings(format!(
                "{MAX_LIVE_CONFIGS} different TLS configurations are in use by this app's connections; close some, or reuse one SSLContext"
            )));
        }
        configs.live.push(Arc::downgrade(&config));
        if configs.cached.len() >= CACHED_CONFIGS {
            configs.cached.remove(0);
        }
        configs.cached.push((key, config.clone()));
        Ok(config)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Configs> {
        self.configs.lock().expect("tls config lock")
    }

    fn build(&self, s: &Settings) -> Result<ClientConfig, Error> {
        let bad = |what: String| Error::Settings(what);
        let versions: Vec<_> = [&rustls::version::TLS12, &rustls::version::TLS13]
            .into_iter()
            .filter(|v| {
                let wire = u16::from(v.version);
                (s.min_version == 0 || wire >= s.min_version)
                    && (s.max_version == 0 || wire <= s.max_version)
            })
            .collect();
        if versions.is_empty() {
            return Err(bad(
                "no protocol version left: only TLS 1.2 and 1.3 are available".into(),
            ));
        }
        let builder = ClientConfig::builder_with_provider(PROVIDER.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| bad(e.to_string()))?;
        let verifier: Arc<dyn ServerCertVerifier> = if s.verify {
            let mut roots = if s.default_roots {
                DEFAULT_ROOTS.clone()
            } else {
                RootCertStore::empty()
            };
            roots.add_parsable_certificates(self.operator_ca.iter().cloned());
            for item in &s.ca_certs {
                for cert in certificates(item)? {
                    roots
                        .add(cert)
                        .map_err(|e| bad(format!("a CA certificate was refused: {e}")))?;
                }
            }
            if roots.is_empty() {
                Arc::new(Lenient::Refuse)
            } else {
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), PROVIDER.clone())
                        .build()
                        .map_err(|e| bad(e.to_string()))?;
                if s.check_hostname {
                    webpki
                } else {
                    Arc::new(Lenient::AnyName(webpki))
                }
            }
        } else {
            Arc::new(Lenient::Accept)
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = if s.client_chain.is_empty() {
            builder.with_no_client_auth()
        } else {
            let chain = certificates(&s.client_chain)?;
            let key = PrivateKeyDer::from_pem_slice(&s.client_key).map_err(|e| {
                bad(format!(
                    "the client key is not an unencrypted PEM private key: {e}"
                ))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad(format!("the client certificate and key do not fit: {e}")))?
        };
        config.alpn_protocols = s.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        // A configuration serves all of an app's instances: a session cache
        // in it would be state shared between them (and between requests
        // under request isolation).
        config.resumption = rustls::client::Resumption::disabled();
        Ok(config)
    }
}

/// A digest of everything that shapes a configuration.
fn settings_key(s: &Settings) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([
        u8::from(s.verify),
        u8::from(s.check_hostname),
        u8::from(s.default_roots),
    ]);
    h.update(s.min_version.to_le_bytes());
    h.update(s.max_version.to_le_bytes());
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    for item in &s.ca_certs {
        field(item);
    }
    field(b"|");
    for p in &s.alpn {
        field(p.as_bytes());
    }
    field(&s.client_chain);
    field(&s.client_key);
    h.finalize().into()
}

/// The certificates in `item`: PEM text, or else one DER certificate.
fn certificates(item: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    if item.starts_with(b"\x30") {
        return Ok(vec![CertificateDer::from(item.to_vec())]);
    }
    let certs = CertificateDer::pem_slice_iter(item)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Settings(format!("a certificate is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Settings(
            "no certificate found (expected PEM with BEGIN CERTIFICATE, or DER)".into(),
        ));
    }
    Ok(certs)
}

/// The verifiers other than plain webpki (`CERT_REQUIRED` with
/// `check_hostname`); every one still checks the handshake's signatures.
#[derive(Debug)]
enum Lenient {
    /// `check_hostname = False` with verification on: the chain must
    /// verify, the name need not match.
    AnyName(Arc<WebPkiServerVerifier>),
    /// `verify_mode = CERT_NONE`: any certificate.
    Accept,
    /// Verification on with no CA at all: refused, as OpenSSL refuses a
    /// chain it cannot anchor.
    Refuse,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self {
            Lenient::AnyName(webpki) => match webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            },
            Lenient::Accept => Ok(ServerCertVerified::assertion()),
            Lenient::Refuse => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &PROVIDER.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &PROVIDER.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        PROVIDER
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls error as the guest's `ssl` reports it.
fn guest_error(e: rustls::Error, server: &str) -> Error {
    use CertificateError as C;
    let cert = |code: i32, message: String| Error::Certificate(CertError { code, message });
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => cert(20, "unable to get local issuer certificate".into()),
            C::Expired | C::ExpiredContext { .. } => cert(10, "certificate has expired".into()),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                cert(9, "certificate is not yet valid".into())
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                if server.parse::<std::net::IpAddr>().is_ok() {
                    cert(
                        64,
                        format!("IP address mismatch, certificate is not valid for '{server}'."),
                    )
                } else {
                    cert(
                        62,
                        format!("Hostname mismatch, certificate is not valid for '{server}'."),
                    )
                }
            }
            C::Revoked => cert(23, "certificate revoked".into()),
            C::BadSignature => cert(7, "certificate signature failure".into()),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                cert(26, "unsupported certificate purpose".into())
            }
            C::UnhandledCriticalExtension => cert(34, "unhandled critical extension".into()),
            // `openssl req -x509` makes a CA certificate, which webpki
            // refuses as a server's own; OpenSSL says what it is.
            C::Other(ref o)
                if o.0.downcast_ref::<webpki::Error>()
                    == Some(&webpki::Error::CaUsedAsEndEntity) =>
            {
                cert(18, "self-signed certificate".into())
            }
            // The guest's message starts "certificate verify failed: ".
            other => cert(1, other.to_string()),
        },
        // A server that does not speak TLS (plain HTTP on that port):
        // OpenSSL's words for it, not rustls's enum.
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            Error::Protocol("wrong version number (does the server speak TLS on that port?)".into())
        }
        rustls::Error::AlertReceived(alert) => {
            Error::Protocol(format!("the server sent the TLS alert {alert:?}"))
        }
        other => Error::Protocol(other.to_string()),
    }
}

/// The store data the `tls` interface works on.
pub struct TlsView<'a> {
    /// Where sessions live.
    pub table: &'a mut ResourceTable,
    /// The app's trust and metrics.
    pub clients: &'a Arc<TlsClients>,
    /// Sessions this instance holds.
    pub sessions: &'a mut usize,
}

struct Tls;

impl HasData for Tls {
    type Data<'a> = TlsView<'a>;
}

/// Link `rsgi-wasm:wsgi/tls`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> TlsView<'_>,
) -> anyhow::Result<()> {
    Ok(tls::add_to_linker::<T, Tls>(linker, view)?)
}

impl tls::Host for TlsView<'_> {}

impl TlsView<'_> {
    fn client(&mut self, c: &Resource<Client>) -> wasmtime::Result<&mut Client> {
        Ok(self.table.get_mut(c)?)
    }
}

type Trappable<T> = wasmtime::Result<T>;

impl HostClient for TlsView<'_> {
    async fn connect(
        &mut self,
        settings: Settings,
        server_name: String,
    ) -> Trappable<Result<Resource<Client>, Error>> {
        Ok(self.open(settings, server_name))
    }

    async fn receive(
        &mut self,
        c: Resource<Client>,
        records: Vec<u8>,
    ) -> Trappable<Result<u32, Error>> {
        Ok(receive(self.client(&c)?, &records))
    }

    async fn transmit(&mut self, c: Resource<Client>) -> Trappable<Vec<u8>> {
        let client = self.client(&c)?;
        let mut out = Vec::new();
        while client.conn.wants_write() {
            match client.conn.write_tls(&mut out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        client.outbound.metrics.tls_sent.inc_by(out.len() as u64);
        Ok(out)
    }

    async fn send(&mut self, c: Resource<Client>, data: Vec<u8>) -> Trappable<Result<u32, Error>> {
        let client = self.client(&c)?;
        // rustls buffers at most 64 KiB of unsent plaintext and takes less
        // than offered when it is full; the guest transmits and offers the rest.
        Ok(client
            .conn
            .writer()
            .write(&data)
            .map(|n| n as u32)
            .map_err(|e| Error::Protocol(e.to_string())))
    }

    async fn read(&mut self, c: Resource<Client>, max: u32) -> Trappable<Result<Received, Error>> {
        let client = self.client(&c)?;
        let mut buf = vec![0; (max as usize).clamp(1, MAX_READ)];
        Ok(match client.conn.reader().read(&mut buf) {
            Ok(0) => Ok(Received::Closed),
            Ok(n) => {
                buf.truncate(n);
                Ok(Received::Data(buf))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(Received::WantRead),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::Protocol(
                "EOF occurred in violation of protocol".into(),
            )),
            Err(e) => Err(Error::Protocol(e.to_string())),
        })
    }

    async fn pending(&mut self, c: Resource<Client>) -> Trappable<u32> {
        let client = self.client(&c)?;
        Ok(client
            .conn
            .process_new_packets()
            .map_or(0, |s| s.plaintext_bytes_to_read() as u32))
    }

    async fn handshaking(&mut self, c: Resource<Client>) -> Trappable<bool> {
        Ok(self.client(&c)?.conn.is_handshaking())
    }

    async fn info(&mut self, c: Resource<Client>) -> Trappable<SessionInfo> {
        Ok(info(self.client(&c)?))
    }

    async fn close(&mut self, c: Resource<Client>) -> Trappable<()> {
        self.client(&c)?.conn.send_close_notify();
        Ok(())
    }

    async fn drop(&mut self, c: Resource<Client>) -> wasmtime::Result<()> {
        self.table.delete(c)?;
        *self.sessions -= 1;
        Ok(())
    }
}

impl TlsView<'_> {
    fn open(&mut self, settings: Settings, server_name: String) -> Result<Resource<Client>, Error> {
        if *self.sessions >= MAX_SESSIONS {
            return Err(Error::Settings(format!(
                "too many TLS connections open at once in this instance (at most {MAX_SESSIONS}); close some first"
            )));
        }
        if server_name.is_empty() && settings.verify && settings.check_hostname {
            return Err(Error::Settings(
                "check_hostname requires server_hostname".into(),
            ));
        }
        let config = self.clients.config(&settings)?;
        // No name: an address that sends no SNI; only reachable with the
        // name check off (above), so it is never compared.
        let name = if server_name.is_empty() {
            ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into())
        } else {
            ServerName::try_from(server_name.clone()).map_err(|_| {
                Error::Settings(format!(
                    "server_hostname {server_name:?} is neither a DNS name nor an IP address"
                ))
            })?
        };
        let conn = ClientConnection::new(config, name).map_err(|e| guest_error(e, &server_name))?;
        let client = Client {
            conn,
            server: server_name,
            outbound: self.clients.outbound.clone(),
        };
        let handle = self
            .table
            .push(client)
            .map_err(|e| Error::Settings(format!("cannot hold another session: {e}")))?;
        *self.sessions += 1;
        Ok(handle)
    }
}

/// Feed `records` from the socket to `s`: how many bytes it took.
fn receive(s: &mut Client, records: &[u8]) -> Result<u32, Error> {
    let mut rest = records;
    if rest.is_empty() {
        // End of file from the socket: rustls notes it, and `read` then
        // tells a clean close from a truncation.
        let _ = s.conn.read_tls(&mut rest);
        return Ok(0);
    }
    let mut failed = None;
    while !rest.is_empty() {
        match s.conn.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            // The received plaintext buffer is full: the guest offers the
            // rest again after reading.
            Err(e) if e.kind() == std::io::ErrorKind::Other => break,
            // Anything else (a handshake message larger than rustls
            // buffers) cannot get better by offering the bytes again.
            Err(e) => {
                failed = Some(Error::Protocol(e.to_string()));
                break;
            }
        }
        if let Err(e) = s.conn.process_new_packets() {
            failed = Some(guest_error(e, &s.server));
            break;
        }
    }
    // Counted whether or not they made sense: the bytes of a handshake that
    // failed verification were received as surely as the ones sent.
    let taken = records.len() - rest.len();
    s.outbound.metrics.tls_received.inc_by(taken as u64);
    match failed {
        Some(e) => Err(e),
        None => Ok(taken as u32),
    }
}

/// What `s`'s handshake agreed.
fn info(s: &Client) -> SessionInfo {
    let conn = &s.conn;
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "",
    };
    let (cipher, bits) = conn
        .negotiated_cipher_suite()
        .map_or((String::new(), 0), |s| {
            let name = format!("{:?}", s.suite());
            let bits = if name.contains("AES_128") { 128 } else { 256 };
            // IANA's names: rustls spells the TLS 1.3 suites `TLS13_...`.
            (name.replacen("TLS13_", "TLS_", 1), bits)
        });
    SessionInfo {
        version: version.into(),
        cipher,
        bits,
        alpn: conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        peer_chain: conn
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.to_vec())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            verify: true,
            check_hostname: true,
            default_roots: true,
            ca_certs: Vec::new(),
            alpn: vec!["http/1.1".into()],
            min_version: 0,
            max_version: 0,
            client_chain: Vec::new(),
            client_key: Vec::new(),
        }
    }

    fn clients() -> Arc<TlsClients> {
        TlsClients::new(
            Vec::new(),
            Outbound::new(&Arc::from("unit-tls"), Vec::new()),
        )
    }

    #[test]
    fn configurations_are_built_once_per_distinct_settings() {
        let c = clients();
        let a = c.config(&settings()).unwrap();
        assert!(Arc::ptr_eq(&a, &c.config(&settings()).unwrap()));
        let other = Settings {
            alpn: Vec::new(),
            ..settings()
        };
        assert!(!Arc::ptr_eq(&a, &c.config(&other).unwrap()));
        assert_eq!(a.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn unusable_settings_are_refused_with_the_reason() {
        let c = clients();
        let only_tls11 = Settings {
            min_version: 0x0301,
            max_version: 0x0302,
            ..settings()
        };
        let Err(Error::Settings(why)) = c.config(&only_tls11) else {
            panic!("TLS 1.1 only was accepted");
        };
        assert!(why.contains("TLS 1.2 and 1.3"), "{why}");
        let junk = Settings {
            ca_certs: vec![b"not a certificate".to_vec()],
            ..settings()
        };
        let Err(Error::Settings(why)) = c.config(&junk) else {
            panic!("junk CA accepted");
        };
        assert!(why.contains("no certificate"), "{why}");
    }

    #[test]
    fn settings_are_bounded_in_size_and_in_distinct_live_configurations() {
        let c = clients();
        let huge = Settings {
            ca_certs: vec![vec![b'x'; MAX_SETTINGS_BYTES + 1]],
            ..settings()
        };
        let Err(Error::Settings(why)) = c.config(&huge) else {
            panic!("a huge CA bundle was accepted");
        };
        assert!(why.contains("at most"), "{why}");
        let held: Vec<_> = (0..MAX_LIVE_CONFIGS)
            .map(|i| {
                let s = Settings {
                    alpn: vec![format!("p{i}")],
                    ..settings()
                };
                c.config(&s).unwrap()
            })
            .collect();
        let one_more = Settings {
            alpn: vec!["another".into()],
            ..settings()
        };
        assert!(c.config(&one_more).is_err());
        // One already built is still handed out, and freeing some makes room.
        assert!(c
            .config(&Settings {
                alpn: vec![format!("p{}", MAX_LIVE_CONFIGS - 1)],
                ..settings()
            })
            .is_ok());
        drop(held);
        c.lock().cached.clear();
        assert!(c.config(&one_more).is_ok());
    }

    #[test]
    fn certificate_errors_read_like_openssl() {
        let e = guest_error(
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
            "example.com",
        );
        let Error::Certificate(CertError { code, message }) = e else {
            panic!("not a certificate error");
        };
        assert_eq!(code, 62);
        assert!(message.contains("'example.com'"), "{message}");
        let of = |c| match guest_error(rustls::Error::InvalidCertificate(c), "x") {
            Error::Certificate(CertError { code, message }) => (code, message),
            _ => panic!("not a certificate error"),
        };
        let ca_as_leaf = rustls::OtherError(Arc::new(webpki::Error::CaUsedAsEndEntity));
        assert_eq!(
            of(CertificateError::Other(ca_as_leaf)),
            (18, "self-signed certificate".into())
        );
        let (code, message) = of(CertificateError::BadEncoding);
        assert_eq!(code, 1);
        assert!(!message.contains("verify failed"), "{message}");
    }
}
