//! Certificates for the HTTPS console and the gateway listener: generating the appliance's
//! self-signed certificate (rcgen), validating an uploaded PEM certificate chain + private key
//! (parses, key matches the leaf, leaf usable by a server and within its validity period),
//! turning PEM into a rustls [`CertifiedKey`], and a [`ReloadingResolver`] whose certificate
//! can be swapped while the listeners run: new handshakes get the new certificate, established
//! connections keep theirs.
//!
//! This module works on PEM strings only. It must not touch the store (the caller keeps the
//! PEM text), the HTTP layer or the clock policy (callers pass `now`). It always uses the
//! rustls ring provider explicitly and never relies on a process-wide default provider. It never
//! logs key material: only fingerprints and names.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use rcgen::{
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::{InconsistentKeys, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use zeroize::Zeroize;

/// Common name of the certificate [`generate_self_signed`] makes.
pub const SELF_SIGNED_COMMON_NAME: &str = "Gatehouse appliance";

/// How long a generated certificate is valid: about three years.
const SELF_SIGNED_VALIDITY_DAYS: i64 = 3 * 365;

/// What went wrong with a certificate or key, phrased for the admin who pasted it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "the certificate field has no PEM CERTIFICATE block: paste the server certificate \
         (starting with -----BEGIN CERTIFICATE-----), followed by any intermediate certificates"
    )]
    NoCertificate,
    #[error(
        "the private key field has no unencrypted PEM private key block: paste the key that \
         belongs to the certificate (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE \
         KEY); a password-protected key must be decrypted first"
    )]
    NoPrivateKey,
    #[error(
        "the PEM text could not be read ({0}): paste the certificate and the key exactly as \
         exported, including the BEGIN and END lines"
    )]
    BadPem(String),
    #[error(
        "the private key does not belong to this certificate: upload the key that was created \
         together with the certificate request, and put the server certificate first in the \
         chain, before any intermediates"
    )]
    KeyMismatch,
    #[error("the certificate expired on {not_after}: renew it and upload the new certificate")]
    Expired { not_after: DateTime<Utc> },
    #[error(
        "the certificate is not valid before {not_before}: check the appliance clock, or upload \
         it again after that time"
    )]
    NotYetValid { not_before: DateTime<Utc> },
    #[error(
        "the private key is not a supported, well-formed key: use an RSA (2048 bits or more), \
         ECDSA P-256 or P-384, or Ed25519 key"
    )]
    UnsupportedKey,
    #[error(
        "the first certificate is not a server certificate ({0}): put the server's own \
         certificate first, followed by its intermediates"
    )]
    NotServerCertificate(String),
    #[error("the self-signed certificate could not be generated: {0}")]
    Generate(String),
    #[error("the TLS configuration could not be built: {0}")]
    Config(String),
}

pub type Result<T, E = TlsError> = std::result::Result<T, E>;

/// A certificate chain (leaf first, then intermediates) and its private key, both as PEM text.
///
/// The key text is wiped from memory when the value is dropped, and `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct CertPem {
    pub cert_chain_pem: String,
    pub key_pem: String,
}

impl CertPem {
    pub fn new(cert_chain_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        Self {
            cert_chain_pem: cert_chain_pem.into(),
            key_pem: key_pem.into(),
        }
    }
}

impl fmt::Debug for CertPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertPem")
            .field("cert_chain_pem", &self.cert_chain_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Drop for CertPem {
    fn drop(&mut self) {
        self.key_pem.zeroize();
    }
}

/// What the console shows about a certificate; all of it describes the leaf certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// Subject distinguished name, e.g. `CN=Gatehouse appliance`.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Subject alternative names: DNS names and IP addresses, in certificate order.
    pub names: Vec<String>,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// SHA-256 of the leaf certificate's DER, as uppercase hex pairs joined by `:` (the form
    /// browsers show).
    pub sha256_fingerprint: String,
    /// The issuer name equals the subject name.
    pub self_signed: bool,
}

/// Generates an ECDSA P-256 self-signed server certificate, valid from yesterday for about
/// three years, for `hostnames` plus `localhost`, `127.0.0.1` and `::1`.
///
/// Entries of `hostnames` that parse as IP addresses become IP SANs; blank entries and
/// duplicates are skipped. The certificate says `CA:FALSE` and `serverAuth`, which rustls
/// clients require of an end-entity certificate.
pub fn generate_self_signed(hostnames: &[String]) -> Result<CertPem> {
    let now = Utc::now();
    let pem = generate_with_validity(
        hostnames,
        now - Duration::days(1),
        now + Duration::days(SELF_SIGNED_VALIDITY_DAYS),
    )?;
    if let Ok(chain) = pem_certificates(&pem.cert_chain_pem)
        && let Some(leaf) = chain.first()
    {
        tracing::info!(
            fingerprint = %fingerprint(leaf),
            "generated a self-signed TLS certificate"
        );
    }
    Ok(pem)
}

/// Builds the self-signed certificate; validity bounds are rounded down to midnight UTC.
fn generate_with_validity(
    hostnames: &[String],
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
) -> Result<CertPem> {
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = subject_alt_names(hostnames)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, SELF_SIGNED_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let (year, month, day) = ymd(not_before.date_naive())?;
    params.not_before = rcgen::date_time_ymd(year, month, day);
    let (year, month, day) = ymd(not_after.date_naive())?;
    params.not_after = rcgen::date_time_ymd(year, month, day);

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| TlsError::Generate(format!("key generation failed: {e}")))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Generate(format!("signing failed: {e}")))?;
    Ok(CertPem::new(cert.pem(), key.serialize_pem()))
}

fn ymd(date: NaiveDate) -> Result<(i32, u8, u8)> {
    let month = u8::try_from(date.month()).map_err(|e| TlsError::Generate(e.to_string()))?;
    let day = u8::try_from(date.day()).map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok((date.year(), month, day))
}

fn subject_alt_names(hostnames: &[String]) -> Result<Vec<SanType>> {
    let defaults = ["localhost", "127.0.0.1", "::1"];
    let mut seen: Vec<String> = Vec::new();
    let mut sans = Vec::new();
    let names = hostnames
        .iter()
        .map(|name| name.trim())
        .chain(defaults)
        .filter(|name| !name.is_empty());
    for name in names {
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => {
                let key = ip.to_string();
                if seen.contains(&key) {
                    continue;
                }
                seen.push(key);
                SanType::IpAddress(ip)
            }
            Err(_) => {
                let key = name.to_ascii_lowercase();
                if seen.contains(&key) {
                    continue;
                }
                let valid = name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*' | '_'));
                if !valid {
                    return Err(TlsError::Generate(format!(
                        "{name:?} is not a host name or IP address; use letters, digits, '-' and \
                         '.' only (punycode for international names)"
                    )));
                }
                seen.push(key);
                let ia5 = name
                    .try_into()
                    .map_err(|e| TlsError::Generate(format!("{name:?}: {e}")))?;
                SanType::DnsName(ia5)
            }
        };
        sans.push(san);
    }
    Ok(sans)
}

/// Checks an uploaded certificate chain and key before it is stored and applied.
///
/// The chain must hold at least one certificate (the leaf first, intermediates after it), the
/// key must be an unencrypted PKCS#8, PKCS#1 (RSA) or SEC1 (EC) key that rustls can use and
/// whose public key is the leaf's, the leaf must not be a CA certificate nor restricted to
/// other uses than serving TLS, and `now` must lie within the leaf's validity period.
pub fn validate(pem: &CertPem, now: DateTime<Utc>) -> Result<CertInfo> {
    check(pem, now).map(|(info, _)| info)
}

fn check(pem: &CertPem, now: DateTime<Utc>) -> Result<(CertInfo, Loaded)> {
    let loaded = load(pem)?;
    let leaf_der = loaded.chain.first().ok_or(TlsError::NoCertificate)?;
    let leaf = parse_x509(leaf_der, 0)?;

    if let Ok(Some(bc)) = leaf.basic_constraints()
        && bc.value.ca
    {
        return Err(TlsError::NotServerCertificate(
            "it is a CA certificate (basicConstraints CA:TRUE)".to_owned(),
        ));
    }
    if let Ok(Some(eku)) = leaf.extended_key_usage()
        && !eku.value.server_auth
        && !eku.value.any
    {
        return Err(TlsError::NotServerCertificate(
            "its extended key usage does not include TLS server authentication".to_owned(),
        ));
    }

    let info = cert_info(&leaf, leaf_der)?;
    if now < info.not_before {
        return Err(TlsError::NotYetValid {
            not_before: info.not_before,
        });
    }
    if now > info.not_after {
        return Err(TlsError::Expired {
            not_after: info.not_after,
        });
    }
    Ok((info, loaded))
}

/// Turns PEM into what rustls serves: checks that everything parses and that the key belongs
/// to the leaf certificate, but not the validity period (an expired stored certificate can
/// still be served while the admin replaces it; [`validate`] is the gate for uploads).
pub fn certified_key(pem: &CertPem) -> Result<Arc<CertifiedKey>> {
    let loaded = load(pem)?;
    Ok(Arc::new(CertifiedKey::new(loaded.chain, loaded.key)))
}

/// Describes the leaf certificate of a chain without checking the key or the dates, e.g. to
/// show what is currently stored.
pub fn describe(cert_chain_pem: &str) -> Result<CertInfo> {
    let chain = pem_certificates(cert_chain_pem)?;
    let leaf_der = chain.first().ok_or(TlsError::NoCertificate)?;
    let leaf = parse_x509(leaf_der, 0)?;
    cert_info(&leaf, leaf_der)
}

/// The SHA-256 fingerprint of a DER certificate, as in [`CertInfo::sha256_fingerprint`].
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    digest
        .iter()
        .map(|byte| hex::encode_upper([*byte]))
        .collect::<Vec<_>>()
        .join(":")
}

/// The rustls ring provider, used explicitly everywhere in this module.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct Loaded {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<dyn SigningKey>,
}

fn load(pem: &CertPem) -> Result<Loaded> {
    let chain = pem_certificates(&pem.cert_chain_pem)?;
    for (index, der) in chain.iter().enumerate() {
        parse_x509(der, index)?;
    }

    let key_der = match PrivateKeyDer::from_pem_slice(pem.key_pem.as_bytes()) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => return Err(TlsError::NoPrivateKey),
        Err(e) => return Err(TlsError::BadPem(pem_error("private key", &e))),
    };
    let key = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|_| TlsError::UnsupportedKey)?;

    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch);
        }
        // The ring provider knows the public key of every key type it loads, so "unknown"
        // cannot happen; refuse rather than serve a pair nobody checked.
        Err(rustls::Error::InconsistentKeys(_)) => return Err(TlsError::UnsupportedKey),
        Err(e) => {
            return Err(TlsError::BadPem(format!(
                "the server certificate cannot be used for TLS: {e}"
            )));
        }
    }
    Ok(Loaded {
        chain: certified.cert,
        key: certified.key,
    })
}

fn pem_certificates(text: &str) -> Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem(pem_error("certificate", &e)))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(chain)
}

fn pem_error(field: &str, error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { end_marker } => {
            let label = String::from_utf8_lossy(end_marker);
            format!("{field}: the {label} block has no -----END {label}----- line (cut off?)")
        }
        pem::Error::IllegalSectionStart { line } => format!(
            "{field}: malformed BEGIN line {:?}",
            String::from_utf8_lossy(line)
        ),
        pem::Error::Base64Decode(detail) => {
            format!("{field}: the text between BEGIN and END is not valid base64 ({detail})")
        }
        other => format!("{field}: {other}"),
    }
}

fn parse_x509<'a>(der: &'a CertificateDer<'_>, index: usize) -> Result<X509Certificate<'a>> {
    X509Certificate::from_der(der.as_ref())
        .map(|(_, cert)| cert)
        .map_err(|e| {
            TlsError::BadPem(format!(
                "certificate {} in the chain is not a valid X.509 certificate: {e}",
                index + 1
            ))
        })
}

fn cert_info(leaf: &X509Certificate<'_>, der: &CertificateDer<'_>) -> Result<CertInfo> {
    let validity = leaf.validity();
    let not_before = timestamp(validity.not_before.timestamp())?;
    let not_after = timestamp(validity.not_after.timestamp())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push((*dns).to_owned()),
                GeneralName::IPAddress(bytes) => {
                    if let Ok(octets) = <[u8; 4]>::try_from(*bytes) {
                        names.push(IpAddr::from(octets).to_string());
                    } else if let Ok(octets) = <[u8; 16]>::try_from(*bytes) {
                        names.push(IpAddr::from(octets).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        subject: leaf.subject().to_string(),
        issuer: leaf.issuer().to_string(),
        names,
        not_before,
        not_after,
        sha256_fingerprint: fingerprint(der),
        self_signed: leaf.subject().as_raw() == leaf.issuer().as_raw(),
    })
}

fn timestamp(secs: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp(secs, 0).ok_or_else(|| {
        TlsError::BadPem(format!(
            "the certificate has a validity date out of range ({secs})"
        ))
    })
}

/// A certificate resolver whose certificate can be replaced while servers use it.
///
/// Each handshake takes the certificate current at that moment; connections already
/// established keep the one they were made with, so nothing is dropped on a swap. Share one
/// `Arc<ReloadingResolver>` between the console and the gateway configs.
pub struct ReloadingResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingResolver {
    pub fn new(initial: Arc<CertifiedKey>) -> Self {
        Self {
            current: RwLock::new(initial),
        }
    }

    /// Starts with the certificate in `pem` (see [`certified_key`]).
    pub fn from_pem(pem: &CertPem) -> Result<Self> {
        Ok(Self::new(certified_key(pem)?))
    }

    /// Replaces the certificate for all later handshakes.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        if let Some(leaf) = key.cert.first() {
            tracing::info!(fingerprint = %fingerprint(leaf), "TLS certificate replaced");
        }
        // The lock guards a single Arc that is always whole, so a poisoned lock is still usable.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = key;
    }

    /// Validates `pem` at `now` and, if it passes, makes it current; returns what was applied.
    pub fn apply(&self, pem: &CertPem, now: DateTime<Utc>) -> Result<CertInfo> {
        let (info, loaded) = check(pem, now)?;
        self.set(Arc::new(CertifiedKey::new(loaded.chain, loaded.key)));
        Ok(info)
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl fmt::Debug for ReloadingResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current();
        let leaf = current.cert.first().map(fingerprint);
        f.debug_struct("ReloadingResolver")
            .field("fingerprint", &leaf)
            .finish()
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A server config (TLS 1.2 and 1.3, ring, no client authentication) that takes its
/// certificate from `resolver` and offers ALPN `h2` then `http/1.1`.
///
/// actix-web prepends its own ALPN list (only `http/1.1` with this crate's features), so the
/// console never negotiates h2 it cannot speak; a listener that only speaks HTTP/1.1 should use
/// [`server_config_with_alpn`] instead.
pub fn server_config(resolver: Arc<ReloadingResolver>) -> Result<ServerConfig> {
    server_config_with_alpn(resolver, &[b"h2", b"http/1.1"])
}

/// Like [`server_config`], with the given ALPN protocols in order of preference (empty: no
/// ALPN).
pub fn server_config_with_alpn(
    resolver: Arc<ReloadingResolver>,
    alpn: &[&[u8]],
) -> Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client-side verifier that accepts any certificate ("do not verify", `--insecure`) but
/// still checks the handshake signatures. Shared by every client Gatehouse runs (directories,
/// clouds, gateways, the tunnel client); each shows its own warning where it is chosen.
#[derive(Debug)]
pub struct NoVerification(pub Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
    }

    fn generated(names: &[&str]) -> CertPem {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        generate_self_signed(&names).expect("generate")
    }

    fn leaf_der(pem: &CertPem) -> CertificateDer<'static> {
        pem_certificates(&pem.cert_chain_pem).expect("certs")[0].clone()
    }

    #[test]
    fn generated_certificate_validates_and_loads() {
        let pem = generated(&["gatehouse.example.org", "10.1.2.3", " ", "LOCALHOST"]);
        assert!(pem.key_pem.contains("BEGIN PRIVATE KEY"));
        let now = Utc::now();
        let info = validate(&pem, now).expect("valid");

        assert_eq!(info.subject, "CN=Gatehouse appliance");
        assert_eq!(info.issuer, info.subject);
        assert!(info.self_signed);
        assert_eq!(
            info.names,
            [
                "gatehouse.example.org",
                "10.1.2.3",
                "LOCALHOST",
                "127.0.0.1",
                "::1"
            ]
        );
        assert!(info.not_before <= now && info.not_before > now - Duration::days(3));
        let lifetime = info.not_after - now;
        assert!(lifetime > Duration::days(3 * 365 - 2) && lifetime < Duration::days(3 * 365 + 2));
        assert_eq!(info.sha256_fingerprint, fingerprint(&leaf_der(&pem)));
        assert_eq!(info.sha256_fingerprint.len(), 32 * 3 - 1);

        let leaf = leaf_der(&pem);
        let parsed = parse_x509(&leaf, 0).expect("x509");
        let bc = parsed.basic_constraints().expect("bc").expect("present");
        assert!(!bc.value.ca);
        let eku = parsed.extended_key_usage().expect("eku").expect("present");
        assert!(eku.value.server_auth);

        let key = certified_key(&pem).expect("certified key");
        assert_eq!(key.cert.len(), 1);
        assert_eq!(key.cert[0], leaf);
        assert_eq!(key.key.algorithm(), rustls::SignatureAlgorithm::ECDSA);
    }

    #[test]
    fn generation_rejects_a_bad_host_name() {
        let err = generate_self_signed(&["not a host".to_owned()]).expect_err("bad name");
        assert!(matches!(err, TlsError::Generate(ref d) if d.contains("not a host")));
    }

    #[test]
    fn swapped_keys_are_a_mismatch() {
        let a = generated(&["a.example"]);
        let b = generated(&["b.example"]);
        let crossed = CertPem::new(a.cert_chain_pem.clone(), b.key_pem.clone());
        assert!(matches!(
            validate(&crossed, Utc::now()),
            Err(TlsError::KeyMismatch)
        ));
        assert!(matches!(
            certified_key(&crossed),
            Err(TlsError::KeyMismatch)
        ));
    }

    #[test]
    fn expired_certificate_is_refused_with_its_end_date() {
        let now = Utc::now();
        let pem = generate_with_validity(&[], now - Duration::days(800), now - Duration::days(400))
            .expect("generate");
        match validate(&pem, now) {
            Err(TlsError::Expired { not_after }) => {
                assert!(not_after < now - Duration::days(398));
                assert!(not_after > now - Duration::days(402));
            }
            other => panic!("expected Expired, got {other:?}"),
        }
        // It still loads for serving: only uploads are gated on dates.
        assert!(certified_key(&pem).is_ok());
        // The same certificate was fine while it was valid.
        assert!(validate(&pem, now - Duration::days(600)).is_ok());
    }

    #[test]
    fn not_yet_valid_certificate_is_refused() {
        let now = Utc::now();
        let pem = generate_with_validity(&[], now + Duration::days(30), now + Duration::days(400))
            .expect("generate");
        match validate(&pem, now) {
            Err(TlsError::NotYetValid { not_before }) => assert!(not_before > now),
            other => panic!("expected NotYetValid, got {other:?}"),
        }
    }

    #[test]
    fn missing_or_garbled_pem_gives_the_matching_error() {
        let good = generated(&[]);
        let now = Utc::now();
        let check = |cert: &str, key: &str| validate(&CertPem::new(cert, key), now);

        assert!(matches!(check("", ""), Err(TlsError::NoCertificate)));
        assert!(matches!(
            check("hello, this is not PEM", &good.key_pem),
            Err(TlsError::NoCertificate)
        ));
        // Key pasted into both fields: no certificate.
        assert!(matches!(
            check(&good.key_pem, &good.key_pem),
            Err(TlsError::NoCertificate)
        ));
        // Certificate only.
        assert!(matches!(
            check(&good.cert_chain_pem, ""),
            Err(TlsError::NoPrivateKey)
        ));
        assert!(matches!(
            check(&good.cert_chain_pem, &good.cert_chain_pem),
            Err(TlsError::NoPrivateKey)
        ));
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(matches!(
            check(&good.cert_chain_pem, encrypted),
            Err(TlsError::NoPrivateKey)
        ));

        let bad_base64 =
            "-----BEGIN CERTIFICATE-----\n!!!*** not base64 ***!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            check(bad_base64, &good.key_pem),
            Err(TlsError::BadPem(ref d)) if d.contains("base64")
        ));
        let not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            check(not_der, &good.key_pem),
            Err(TlsError::BadPem(ref d)) if d.contains("certificate 1")
        ));
        let truncated: String = good
            .cert_chain_pem
            .lines()
            .take(3)
            .collect::<Vec<_>>()
            .join("\n");
        let result = check(&truncated, &good.key_pem);
        assert!(
            matches!(result, Err(TlsError::BadPem(ref d)) if d.contains("END CERTIFICATE")),
            "{result:?}"
        );
        let garbage_key =
            "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            check(&good.cert_chain_pem, garbage_key),
            Err(TlsError::UnsupportedKey)
        ));
    }

    #[test]
    fn error_messages_say_what_to_do() {
        assert!(
            TlsError::NoCertificate
                .to_string()
                .starts_with("the certificate field has no PEM CERTIFICATE block")
        );
        assert!(
            TlsError::KeyMismatch
                .to_string()
                .starts_with("the private key does not belong to this certificate")
        );
    }

    #[test]
    fn rsa_pkcs1_key_is_accepted() {
        let pem = CertPem::new(fixture("rsa-cert.pem"), fixture("rsa-key-pkcs1.pem"));
        assert!(pem.key_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let info = validate(&pem, Utc::now()).expect("valid");
        assert_eq!(info.names, ["localhost"]);
        assert!(info.self_signed);
        let key = certified_key(&pem).expect("loads");
        assert_eq!(key.key.algorithm(), rustls::SignatureAlgorithm::RSA);
        assert_eq!(
            handshake_fingerprint(&key, &[leaf_der(&pem)]),
            info.sha256_fingerprint
        );
    }

    #[test]
    fn ec_sec1_key_is_accepted() {
        let pem = CertPem::new(fixture("ec-cert.pem"), fixture("ec-key-sec1.pem"));
        assert!(pem.key_pem.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        let info = validate(&pem, Utc::now()).expect("valid");
        let key = certified_key(&pem).expect("loads");
        assert_eq!(
            handshake_fingerprint(&key, &[leaf_der(&pem)]),
            info.sha256_fingerprint
        );
        // The RSA key does not fit the EC certificate.
        let crossed = CertPem::new(fixture("ec-cert.pem"), fixture("rsa-key-pkcs1.pem"));
        assert!(matches!(
            validate(&crossed, Utc::now()),
            Err(TlsError::KeyMismatch)
        ));
    }

    /// A CA and a leaf it signs, both made with rcgen: (ca_pem, leaf cert pem, leaf key pem).
    fn ca_and_leaf() -> (CertPem, String, String) {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.distinguished_name = DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Test Root CA");
        ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);

        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        leaf_params.is_ca = IsCa::ExplicitNoCa;
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
        (
            CertPem::new(ca_cert.pem(), ca_key.serialize_pem()),
            leaf.pem(),
            leaf_key.serialize_pem(),
        )
    }

    #[test]
    fn chain_with_intermediate_after_the_leaf() {
        let (ca, leaf_pem, leaf_key) = ca_and_leaf();
        let chain = CertPem::new(format!("{leaf_pem}{}", ca.cert_chain_pem), leaf_key.clone());
        let info = validate(&chain, Utc::now()).expect("valid chain");
        assert!(!info.self_signed);
        assert_eq!(info.issuer, "CN=Test Root CA");
        let key = certified_key(&chain).expect("loads");
        assert_eq!(key.cert.len(), 2);
        let ca_der = leaf_der(&ca);
        assert_eq!(key.cert[1], ca_der);
        // A client trusting only the CA accepts the leaf.
        assert_eq!(
            handshake_fingerprint(&key, &[ca_der]),
            info.sha256_fingerprint
        );

        // Intermediates first: the key does not match the first certificate.
        let reversed = CertPem::new(format!("{}{leaf_pem}", ca.cert_chain_pem), leaf_key);
        assert!(matches!(
            validate(&reversed, Utc::now()),
            Err(TlsError::KeyMismatch)
        ));

        // The CA certificate with its own key is not a server certificate.
        assert!(matches!(
            validate(&ca, Utc::now()),
            Err(TlsError::NotServerCertificate(_))
        ));
    }

    #[test]
    fn client_only_certificate_is_not_a_server_certificate() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.self_signed(&key).expect("cert");
        let pem = CertPem::new(cert.pem(), key.serialize_pem());
        assert!(matches!(
            validate(&pem, Utc::now()),
            Err(TlsError::NotServerCertificate(ref d)) if d.contains("extended key usage")
        ));
    }

    #[test]
    fn debug_hides_the_key() {
        let pem = generated(&[]);
        let shown = format!("{pem:?}");
        assert!(shown.contains("<redacted>"));
        assert!(!shown.contains("PRIVATE KEY"));
    }

    fn client_config(trusted: &[CertificateDer<'static>]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in trusted {
            roots.add(cert.clone()).expect("root");
        }
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Moves TLS records between the two ends until neither has anything to send.
    fn try_pump(
        client: &mut ClientConnection,
        server: &mut ServerConnection,
    ) -> std::result::Result<(), rustls::Error> {
        loop {
            let mut moved = false;
            while client.wants_write() {
                let mut buf = Vec::new();
                client.write_tls(&mut buf).expect("client write");
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    moved = true;
                    server.read_tls(&mut rd).expect("server read");
                    server.process_new_packets()?;
                }
            }
            while server.wants_write() {
                let mut buf = Vec::new();
                server.write_tls(&mut buf).expect("server write");
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    moved = true;
                    client.read_tls(&mut rd).expect("client read");
                    client.process_new_packets()?;
                }
            }
            if !moved {
                return Ok(());
            }
        }
    }

    fn pump(client: &mut ClientConnection, server: &mut ServerConnection) {
        try_pump(client, server).expect("TLS exchange");
    }

    fn connect(
        server_config: &Arc<ServerConfig>,
        trusted: &[CertificateDer<'static>],
    ) -> (ClientConnection, ServerConnection) {
        let name = ServerName::try_from("localhost").expect("name");
        let mut client = ClientConnection::new(client_config(trusted), name).expect("client");
        let mut server = ServerConnection::new(Arc::clone(server_config)).expect("server");
        pump(&mut client, &mut server);
        assert!(!client.is_handshaking() && !server.is_handshaking());
        (client, server)
    }

    fn peer_fingerprint(client: &ClientConnection) -> String {
        fingerprint(&client.peer_certificates().expect("peer certs")[0])
    }

    fn handshake_fingerprint(
        key: &Arc<CertifiedKey>,
        trusted: &[CertificateDer<'static>],
    ) -> String {
        let resolver = Arc::new(ReloadingResolver::new(Arc::clone(key)));
        let config = Arc::new(server_config(resolver).expect("config"));
        let (client, _server) = connect(&config, trusted);
        peer_fingerprint(&client)
    }

    fn exchange(client: &mut ClientConnection, server: &mut ServerConnection, msg: &[u8]) {
        client.writer().write_all(msg).expect("client send");
        pump(client, server);
        let mut got = vec![0; msg.len()];
        server
            .reader()
            .read_exact(&mut got)
            .expect("server receive");
        assert_eq!(got, msg);
        server.writer().write_all(msg).expect("server send");
        pump(client, server);
        let mut back = vec![0; msg.len()];
        client
            .reader()
            .read_exact(&mut back)
            .expect("client receive");
        assert_eq!(back, msg);
    }

    #[test]
    fn swapping_the_certificate_affects_only_new_handshakes() {
        let first = generated(&[]);
        let second = generated(&[]);
        let (first_der, second_der) = (leaf_der(&first), leaf_der(&second));
        let trusted = [first_der.clone(), second_der.clone()];

        let resolver = Arc::new(ReloadingResolver::from_pem(&first).expect("resolver"));
        let config = Arc::new(server_config(Arc::clone(&resolver)).expect("config"));

        let (mut old_client, mut old_server) = connect(&config, &trusted);
        assert_eq!(peer_fingerprint(&old_client), fingerprint(&first_der));
        assert_eq!(old_client.alpn_protocol(), Some(&b"h2"[..]));

        let info = resolver.apply(&second, Utc::now()).expect("apply");
        assert_eq!(info.sha256_fingerprint, fingerprint(&second_der));
        assert_eq!(resolver.current().cert[0], second_der);

        let (new_client, _new_server) = connect(&config, &trusted);
        assert_eq!(peer_fingerprint(&new_client), fingerprint(&second_der));

        // The connection made before the swap still has its certificate and still carries data.
        assert_eq!(peer_fingerprint(&old_client), fingerprint(&first_der));
        exchange(
            &mut old_client,
            &mut old_server,
            b"still here after the swap",
        );
    }

    #[test]
    fn a_rejected_upload_leaves_the_current_certificate_in_place() {
        let first = generated(&[]);
        let resolver = ReloadingResolver::from_pem(&first).expect("resolver");
        let a = generated(&[]);
        let b = generated(&[]);
        let crossed = CertPem::new(a.cert_chain_pem.clone(), b.key_pem.clone());
        assert!(matches!(
            resolver.apply(&crossed, Utc::now()),
            Err(TlsError::KeyMismatch)
        ));
        assert_eq!(resolver.current().cert[0], leaf_der(&first));
    }

    #[test]
    fn client_refuses_a_certificate_it_does_not_trust() {
        let served = generated(&[]);
        let other = generated(&[]);
        let resolver = Arc::new(ReloadingResolver::from_pem(&served).expect("resolver"));
        let config = Arc::new(server_config(resolver).expect("config"));
        let name = ServerName::try_from("localhost").expect("name");
        let mut client =
            ClientConnection::new(client_config(&[leaf_der(&other)]), name).expect("client");
        let mut server = ServerConnection::new(config).expect("server");
        let failure = try_pump(&mut client, &mut server).expect_err("handshake must fail");
        assert!(
            matches!(failure, rustls::Error::InvalidCertificate(_)),
            "{failure:?}"
        );
        assert!(client.is_handshaking(), "the connection must not complete");
    }
}
