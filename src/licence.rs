//! Licensing: installation codes, signed licence keys, the 30-day evaluation, and the one
//! answer to "is this allowed" that later capabilities ask.
//!
//! A licence key is text a person can paste: an armoured block of base64 holding the licence
//! payload (JSON, versioned by its `v` field) followed by an ed25519 signature over a
//! domain-separated copy of those exact payload bytes. The vendor's public key is built in
//! (`assets/licence-vendor.pub`); a configured public key file can be used instead (self-hosters,
//! tests). The vendor side (`keygen`, `issue`) lives here too so the CLI and the tests share one
//! format. This module is pure apart from `keygen` writing its two files: it never touches the
//! store, HTTP or the config; the caller hands in the installation code, the evaluation start
//! date and today's date, and stores the [`Licence`] it gets back. Private keys are never logged.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use chrono::{Days, NaiveDate};
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// The vendor's licence-signing public key, built into every binary.
const VENDOR_PUBLIC_KEY_PEM: &str = include_str!("../assets/licence-vendor.pub");

/// Days an installation may run without a licence key.
pub const EVALUATION_DAYS: u64 = 30;
/// Concurrent users allowed during the evaluation.
pub const EVALUATION_MAX_USERS: u32 = 10;
/// Gateways allowed during the evaluation.
pub const EVALUATION_MAX_GATEWAYS: u32 = 1;

/// The payload format this build writes and the newest it understands.
pub const PAYLOAD_VERSION: u32 = 1;

/// File name of the private signing key written by [`keygen`].
pub const SIGNING_KEY_FILE: &str = "licence-signing.key";
/// File name of the public key written by [`keygen`].
pub const PUBLIC_KEY_FILE: &str = "licence-signing.pub";

const ARMOUR_BEGIN: &str = "-----BEGIN GATEHOUSE LICENCE-----";
const ARMOUR_END: &str = "-----END GATEHOUSE LICENCE-----";
/// Base64 characters per line inside the armour.
const LINE_WIDTH: usize = 64;
/// Prefixed to the payload bytes before signing, so a licence signature can never be mistaken
/// for a signature over anything else made with the same key.
const SIGNING_CONTEXT: &[u8] = b"gatehouse licence v1\0";
/// Domain separation for the installation code hash.
const INSTALLATION_CONTEXT: &[u8] = b"gatehouse installation code v1\0";
const INSTALLATION_PREFIX: &str = "GH";
/// Data characters in an installation code; one check character follows.
const INSTALLATION_DATA_CHARS: usize = 19;
/// Crockford base32: no I, L, O or U, so nothing reads as something else.
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Everything that can go wrong here. Each message says what was wrong and what to do; the
/// first four are the ones the activation wizard shows.
#[derive(Debug, thiserror::Error)]
pub enum LicenceError {
    #[error(
        "The licence key could not be read: {reason}. Paste the whole key exactly as you \
         received it, including the BEGIN and END lines."
    )]
    Malformed { reason: String },
    #[error(
        "The licence key's signature does not match: it was changed after it was issued, or it \
         was not issued by your Gatehouse supplier. Paste the key exactly as you received it, or \
         ask your supplier for a new one."
    )]
    BadSignature,
    #[error(
        "This licence key was issued for installation {key_for}, but this installation's code is \
         {this}. Send this installation's code to your supplier to get a key for it."
    )]
    WrongInstallation { key_for: String, this: String },
    #[error("This licence key expired on {on}. Ask your supplier for a renewed key.")]
    Expired { on: NaiveDate },
    #[error(
        "This licence key uses format version {version}, which this version of Gatehouse does not \
         understand. Update Gatehouse, then paste the key again."
    )]
    TooNew { version: u32 },
    #[error(
        "\"{input}\" is not an installation code: {reason}. Copy the code exactly as the console \
         shows it (like GH-XXXXX-XXXXX-XXXXX-XXXXX)."
    )]
    InstallationCode { input: String, reason: String },
    #[error("The licence payload cannot be issued: {0}.")]
    InvalidPayload(String),
    #[error(
        "The signing key could not be read: {0}. Give the licence-signing.key file made by \
         `gatehouse licence keygen`."
    )]
    SigningKey(String),
    #[error(
        "The licence public key could not be read: {0}. Give a PEM public key file such as the \
         licence-signing.pub made by `gatehouse licence keygen`."
    )]
    PublicKey(String),
    #[error(
        "{} already exists; a signing key is never overwritten. Choose another directory.",
        path.display()
    )]
    KeyExists { path: PathBuf },
    #[error(
        "Could not write {}: {source}. Check that the directory is writable.",
        path.display()
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = LicenceError> = std::result::Result<T, E>;

fn malformed(reason: impl Into<String>) -> LicenceError {
    LicenceError::Malformed {
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Installation codes
// ---------------------------------------------------------------------------------------------

/// The installation code for an installation id: stable for the id, short enough to read out
/// over the phone, `GH-` and four groups of five Crockford base32 characters (95 bits of a
/// domain-separated SHA-256 of the id, then a Luhn mod 32 check character that catches any one
/// mistyped character and most swapped neighbours).
pub fn installation_code(id: &uuid::Uuid) -> String {
    let digest = Sha256::new()
        .chain_update(INSTALLATION_CONTEXT)
        .chain_update(id.as_bytes())
        .finalize();
    let mut values = Vec::with_capacity(INSTALLATION_DATA_CHARS + 1);
    for i in 0..INSTALLATION_DATA_CHARS {
        let mut value = 0u8;
        for bit in i * 5..i * 5 + 5 {
            let byte = digest[bit / 8];
            value = (value << 1) | ((byte >> (7 - bit % 8)) & 1);
        }
        values.push(value);
    }
    values.push(luhn_check_value(&values));
    format_installation_code(&values)
}

/// Reads an installation code as a person may have typed it: any case, spaces or dashes
/// anywhere, with or without the `GH` prefix, `O` for zero and `I`/`L` for one. Returns the
/// canonical form `GH-XXXXX-XXXXX-XXXXX-XXXXX`, or an error naming what is wrong.
pub fn normalize_installation_code(input: &str) -> Result<String> {
    let error = |reason: &str| LicenceError::InstallationCode {
        input: input.trim().to_owned(),
        reason: reason.to_owned(),
    };
    let compact: String = input
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-' && *c != '_')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let wanted = INSTALLATION_DATA_CHARS + 1;
    let body = match compact.strip_prefix(INSTALLATION_PREFIX) {
        Some(rest) if compact.chars().count() == wanted + INSTALLATION_PREFIX.len() => rest,
        _ => compact.as_str(),
    };
    if body.is_empty() {
        return Err(error("it is empty"));
    }
    let mut values = Vec::with_capacity(wanted);
    for c in body.chars() {
        match crockford_value(c) {
            Some(v) => values.push(v),
            None => return Err(error(&format!("it contains '{c}', which codes never use"))),
        }
    }
    if values.len() != wanted {
        return Err(error(&format!(
            "it has {} characters after GH, where a code has {wanted}",
            values.len()
        )));
    }
    if !luhn_valid(&values) {
        return Err(error(
            "its check character does not match, so one character is probably mistyped",
        ));
    }
    Ok(format_installation_code(&values))
}

fn format_installation_code(values: &[u8]) -> String {
    let mut out = String::from(INSTALLATION_PREFIX);
    for (i, v) in values.iter().enumerate() {
        if i % 5 == 0 {
            out.push('-');
        }
        out.push(char::from(CROCKFORD[usize::from(*v & 31)]));
    }
    out
}

fn crockford_value(c: char) -> Option<u8> {
    let c = match c {
        'O' => '0',
        'I' | 'L' => '1',
        other => other,
    };
    CROCKFORD
        .iter()
        .position(|b| char::from(*b) == c)
        .and_then(|p| u8::try_from(p).ok())
}

/// Luhn mod N (N = 32) over code values, walking from the right. `factor_start` is 2 when
/// computing a check value for data without one, 1 when validating data that ends in one.
fn luhn_sum(values: &[u8], factor_start: u32) -> u32 {
    let mut factor = factor_start;
    let mut sum = 0u32;
    for v in values.iter().rev() {
        let addend = factor * u32::from(*v);
        sum += addend / 32 + addend % 32;
        factor = if factor == 2 { 1 } else { 2 };
    }
    sum
}

fn luhn_check_value(values: &[u8]) -> u8 {
    let check = (32 - luhn_sum(values, 2) % 32) % 32;
    // check < 32, so this always fits.
    u8::try_from(check).unwrap_or(0)
}

fn luhn_valid(values: &[u8]) -> bool {
    luhn_sum(values, 1).is_multiple_of(32)
}

// ---------------------------------------------------------------------------------------------
// Payload and verified licence
// ---------------------------------------------------------------------------------------------

/// What a licence key says. Field meanings for limits: `None` means unlimited.
///
/// Format version 1. Fields added later within version 1 must be optional (older builds ignore
/// unknown fields); anything an older build must not ignore bumps `v`, and older builds then
/// refuse the key with [`LicenceError::TooNew`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicencePayload {
    /// Payload format version, [`PAYLOAD_VERSION`] when issued by this build.
    pub v: u32,
    /// The vendor's serial number for this licence.
    pub serial: String,
    /// Who the licence is for, as shown in the console; may be empty.
    #[serde(default)]
    pub customer: String,
    /// The installation this key is for, canonical form.
    pub installation_code: String,
    pub issued: NaiveDate,
    /// Last day the licence is valid (inclusive); `None` never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<NaiveDate>,
    /// Maximum concurrent users; `None` is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_users: Option<u32>,
    /// Whether pools may provision new instances.
    #[serde(default)]
    pub provisioning: bool,
    /// Maximum gateways; `None` is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateways: Option<u32>,
    /// Named optional features, lowercase.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

impl LicencePayload {
    /// A current-version payload with no expiry, no limits, provisioning allowed and no extra
    /// features; set the other fields directly.
    pub fn new(
        serial: impl Into<String>,
        installation_code: impl Into<String>,
        issued: NaiveDate,
    ) -> Self {
        Self {
            v: PAYLOAD_VERSION,
            serial: serial.into(),
            customer: String::new(),
            installation_code: installation_code.into(),
            issued,
            expires: None,
            max_users: None,
            provisioning: true,
            gateways: None,
            features: Vec::new(),
        }
    }

    /// Checks the payload is something this build would issue, and canonicalises the
    /// installation code and feature names.
    fn validated(&self) -> Result<Self> {
        let invalid = |s: &str| LicenceError::InvalidPayload(s.to_owned());
        if self.v != PAYLOAD_VERSION {
            return Err(invalid(&format!(
                "format version {} is not {PAYLOAD_VERSION}",
                self.v
            )));
        }
        let serial = self.serial.trim();
        if serial.is_empty() {
            return Err(invalid("the serial is empty"));
        }
        if serial.chars().any(char::is_control) {
            return Err(invalid("the serial contains control characters"));
        }
        if self.customer.chars().any(char::is_control) {
            return Err(invalid("the customer name contains control characters"));
        }
        if let Some(expires) = self.expires
            && expires < self.issued
        {
            return Err(invalid(&format!(
                "it would expire ({expires}) before it is issued ({})",
                self.issued
            )));
        }
        let installation_code = normalize_installation_code(&self.installation_code)?;
        let mut features = Vec::with_capacity(self.features.len());
        for feature in &self.features {
            let name = normalize_feature(feature).ok_or_else(|| {
                invalid(&format!(
                    "feature \"{feature}\" is not a name of lowercase letters, digits, '-' or '_'"
                ))
            })?;
            if !features.contains(&name) {
                features.push(name);
            }
        }
        Ok(Self {
            v: self.v,
            serial: serial.to_owned(),
            customer: self.customer.trim().to_owned(),
            installation_code,
            issued: self.issued,
            expires: self.expires,
            max_users: self.max_users,
            provisioning: self.provisioning,
            gateways: self.gateways,
            features,
        })
    }
}

fn normalize_feature(name: &str) -> Option<String> {
    let name = name.trim().to_ascii_lowercase();
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    ok.then_some(name)
}

/// Splits a `--features a,b` argument into feature names (empty entries are skipped).
pub fn parse_features(list: &str) -> Result<Vec<String>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            normalize_feature(s).ok_or_else(|| {
                LicenceError::InvalidPayload(format!(
                    "feature \"{s}\" is not a name of lowercase letters, digits, '-' or '_'"
                ))
            })
        })
        .collect()
}

/// A licence key whose signature and installation code have been checked: the payload it
/// carries and the key text as pasted, so it can be stored and checked again later.
///
/// It is serializable for storage. Whatever is read back from storage should be checked again
/// with [`Verifier::check`] on [`Licence::key_text`] (on start-up), so that editing the stored
/// payload grants nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Licence {
    payload: LicencePayload,
    key_text: String,
}

impl Licence {
    pub fn payload(&self) -> &LicencePayload {
        &self.payload
    }

    /// The key text, re-armoured in the form [`issue`] writes (same bytes as pasted, without
    /// whatever wrapping or surrounding text the paste had).
    pub fn key_text(&self) -> &str {
        &self.key_text
    }

    pub fn serial(&self) -> &str {
        &self.payload.serial
    }

    pub fn customer(&self) -> &str {
        &self.payload.customer
    }

    pub fn expires(&self) -> Option<NaiveDate> {
        self.payload.expires
    }

    /// True once `today` is after the last valid day.
    pub fn is_expired(&self, today: NaiveDate) -> bool {
        self.payload.expires.is_some_and(|last| today > last)
    }

    /// "ACME (serial S-1)", or just the serial when no customer was named.
    fn holder(&self) -> String {
        if self.payload.customer.is_empty() {
            format!("serial {}", self.payload.serial)
        } else {
            self.payload.customer.clone()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Key text
// ---------------------------------------------------------------------------------------------

fn base64_engine() -> GeneralPurpose {
    GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    )
}

fn signed_message(payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_CONTEXT.len() + payload.len());
    message.extend_from_slice(SIGNING_CONTEXT);
    message.extend_from_slice(payload);
    message
}

/// Finds `marker` ignoring ASCII case; returns its byte range in `haystack`.
fn find_marker(haystack: &str, marker: &str) -> Option<(usize, usize)> {
    let upper = haystack.to_ascii_uppercase();
    // Accept the American spelling too: people retype armour lines.
    let american = marker.replace("LICENCE", "LICENSE");
    [marker, american.as_str()]
        .iter()
        .filter_map(|m| upper.find(m).map(|at| (at, at + m.len())))
        .min()
}

/// Pulls the base64 body out of pasted text: with or without the armour lines, with any
/// surrounding text (an e-mail), wrapped at any width, with CRLF or spaces.
fn extract_body(text: &str) -> Result<String> {
    let mut body = text;
    if let Some((_, end)) = find_marker(body, ARMOUR_BEGIN) {
        body = &body[end..];
        match find_marker(body, ARMOUR_END) {
            Some((start, _)) => body = &body[..start],
            None => {
                return Err(malformed(
                    "the END line is missing, so the key looks cut off",
                ));
            }
        }
    } else if let Some((start, _)) = find_marker(body, ARMOUR_END) {
        body = &body[..start];
    }
    let compact: String = body
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '\u{feff}')
        .collect();
    if compact.is_empty() {
        return Err(malformed("it is empty"));
    }
    if let Some(bad) = compact
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=')))
    {
        return Err(malformed(format!(
            "it contains '{bad}', which never appears in a licence key"
        )));
    }
    Ok(compact)
}

/// Key text taken apart, not yet verified.
struct ParsedKey {
    /// The payload bytes exactly as signed.
    payload_bytes: Vec<u8>,
    payload: LicencePayload,
    signature: Signature,
    /// The key re-armoured the way [`issue`] writes it, whatever the paste looked like.
    canonical_text: String,
}

/// Splits key text into the signed payload bytes, the parsed payload and the signature.
fn parse_key(text: &str) -> Result<ParsedKey> {
    let body = extract_body(text)?;
    let bytes = base64_engine()
        .decode(body.as_bytes())
        .map_err(|_| malformed("part of it is missing or mistyped"))?;
    let Some(split) = bytes.len().checked_sub(Signature::BYTE_SIZE) else {
        return Err(malformed("it is too short to be a licence key"));
    };
    let (payload_bytes, signature_bytes) = bytes.split_at(split);
    let signature = Signature::from_slice(signature_bytes)
        .map_err(|_| malformed("its signature part is the wrong size"))?;

    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    let version: Version = serde_json::from_slice(payload_bytes)
        .map_err(|_| malformed("its contents are not readable, so part of it is missing"))?;
    if version.v == 0 {
        return Err(malformed("its format version is 0, which was never issued"));
    }
    if version.v > PAYLOAD_VERSION {
        return Err(LicenceError::TooNew { version: version.v });
    }
    let mut payload: LicencePayload = serde_json::from_slice(payload_bytes)
        .map_err(|e| malformed(format!("its contents are incomplete ({e})")))?;
    payload.installation_code = normalize_installation_code(&payload.installation_code)
        .map_err(|_| malformed("the installation code inside it is not valid"))?;
    Ok(ParsedKey {
        payload_bytes: payload_bytes.to_vec(),
        payload,
        signature,
        canonical_text: armour(&bytes),
    })
}

/// The key text for `payload || signature` bytes: armour lines around 64-column base64,
/// ending in a newline.
fn armour(bytes: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut text = String::with_capacity(encoded.len() + 128);
    text.push_str(ARMOUR_BEGIN);
    text.push('\n');
    for line in encoded.as_bytes().chunks(LINE_WIDTH) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    text.push_str(ARMOUR_END);
    text.push('\n');
    text
}

/// Signs `payload` with a PKCS#8 PEM ed25519 private key and returns the key text to send to
/// the customer (armoured, 64-column base64, ending in a newline).
pub fn issue(signing_key_pem: &str, payload: &LicencePayload) -> Result<String> {
    let payload = payload.validated()?;
    let signing_key = SigningKey::from_pkcs8_pem(signing_key_pem)
        .map_err(|e| LicenceError::SigningKey(e.to_string()))?;
    let payload_bytes = serde_json::to_vec(&payload)
        .map_err(|e| LicenceError::InvalidPayload(format!("cannot encode it ({e})")))?;
    let signature = signing_key.sign(&signed_message(&payload_bytes));

    let mut bytes = payload_bytes;
    bytes.extend_from_slice(&signature.to_bytes());
    let text = armour(&bytes);
    tracing::info!(
        serial = %payload.serial,
        installation_code = %payload.installation_code,
        "issued licence key"
    );
    Ok(text)
}

// ---------------------------------------------------------------------------------------------
// Key generation
// ---------------------------------------------------------------------------------------------

/// Where [`keygen`] wrote the key pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPaths {
    /// `licence-signing.key`: PKCS#8 PEM private key, mode 0600. Keep it off the appliance.
    pub signing_key: PathBuf,
    /// `licence-signing.pub`: PEM public key, for `Verifier::from_pem` / the config.
    pub public_key: PathBuf,
}

/// Makes a new licence-signing key pair in `out_dir` (created if missing). Refuses to touch
/// either file if it already exists, so a signing key is never overwritten by accident.
pub fn keygen(out_dir: &Path) -> Result<KeyPaths> {
    let paths = KeyPaths {
        signing_key: out_dir.join(SIGNING_KEY_FILE),
        public_key: out_dir.join(PUBLIC_KEY_FILE),
    };
    for path in [&paths.signing_key, &paths.public_key] {
        if path.exists() {
            return Err(LicenceError::KeyExists { path: path.clone() });
        }
    }
    std::fs::create_dir_all(out_dir).map_err(|source| LicenceError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;

    let mut secret = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(secret.as_mut());
    let signing_key = SigningKey::from_bytes(&secret);
    // PKCS#8 v1 (secret only, RFC 8410): what OpenSSL and other tools read too.
    let keypair = KeypairBytes {
        secret_key: signing_key.to_bytes(),
        public_key: None,
    };
    let private_pem = keypair
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| LicenceError::SigningKey(e.to_string()))?;
    let public_pem = signing_key
        .verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| LicenceError::PublicKey(e.to_string()))?;

    write_new_file(&paths.signing_key, private_pem.as_bytes(), 0o600)?;
    write_new_file(&paths.public_key, public_pem.as_bytes(), 0o644)?;
    tracing::info!(
        signing_key = %paths.signing_key.display(),
        public_key = %paths.public_key.display(),
        "generated licence signing key pair"
    );
    Ok(paths)
}

/// Creates `path` (failing if it exists) with `mode` on Unix, and writes `contents`.
fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let io_error = |source| LicenceError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            LicenceError::KeyExists {
                path: path.to_path_buf(),
            }
        } else {
            io_error(source)
        }
    })?;
    file.write_all(contents).map_err(io_error)?;
    file.sync_all().map_err(io_error)
}

// ---------------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------------

/// The public keys whose signatures this installation accepts.
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: Vec<VerifyingKey>,
}

impl Verifier {
    /// Accepts keys signed by the vendor key built into this binary.
    pub fn builtin() -> Result<Self> {
        Self::from_pem(VENDOR_PUBLIC_KEY_PEM)
    }

    /// Accepts keys signed by the PEM public key given (the config's licence public key file).
    pub fn from_pem(public_key_pem: &str) -> Result<Self> {
        Ok(Self {
            keys: vec![parse_public_key(public_key_pem)?],
        })
    }

    /// Also accepts keys signed by another PEM public key (e.g. the built-in vendor key and a
    /// configured one together).
    pub fn add_pem(&mut self, public_key_pem: &str) -> Result<()> {
        let key = parse_public_key(public_key_pem)?;
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
        Ok(())
    }

    /// Checks pasted key text: readable, signed by an accepted key, for this installation.
    /// Does not look at expiry; use it to re-check a stored licence, then let
    /// [`LicenceState::current`] say whether it has expired.
    pub fn check(&self, key_text: &str, installation_code: &str) -> Result<Licence> {
        let ParsedKey {
            payload_bytes,
            payload,
            signature,
            canonical_text,
        } = parse_key(key_text)?;
        let message = signed_message(&payload_bytes);
        if !self
            .keys
            .iter()
            .any(|key| key.verify_strict(&message, &signature).is_ok())
        {
            tracing::warn!("licence key rejected: bad signature");
            return Err(LicenceError::BadSignature);
        }
        let this = normalize_installation_code(installation_code)?;
        if payload.installation_code != this {
            tracing::warn!(
                serial = %payload.serial,
                key_for = %payload.installation_code,
                "licence key rejected: issued for another installation"
            );
            return Err(LicenceError::WrongInstallation {
                key_for: payload.installation_code,
                this,
            });
        }
        Ok(Licence {
            payload,
            key_text: canonical_text,
        })
    }

    /// Checks pasted key text, in this order: readable ([`LicenceError::Malformed`]), signed by
    /// an accepted key ([`LicenceError::BadSignature`]), for this installation
    /// ([`LicenceError::WrongInstallation`]), not expired ([`LicenceError::Expired`]).
    pub fn verify(
        &self,
        key_text: &str,
        installation_code: &str,
        today: NaiveDate,
    ) -> Result<Licence> {
        let licence = self.check(key_text, installation_code)?;
        if let Some(on) = licence.expires()
            && today > on
        {
            tracing::warn!(serial = %licence.serial(), %on, "licence key rejected: expired");
            return Err(LicenceError::Expired { on });
        }
        tracing::info!(
            serial = %licence.serial(),
            customer = %licence.customer(),
            "licence key accepted"
        );
        Ok(licence)
    }
}

fn parse_public_key(pem: &str) -> Result<VerifyingKey> {
    let key = VerifyingKey::from_public_key_pem(pem.trim())
        .map_err(|e| LicenceError::PublicKey(e.to_string()))?;
    if key.is_weak() {
        return Err(LicenceError::PublicKey("it is a weak key".to_owned()));
    }
    Ok(key)
}

// ---------------------------------------------------------------------------------------------
// Licence state and "is this allowed"
// ---------------------------------------------------------------------------------------------

/// Something a later part of Gatehouse asks permission for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability<'a> {
    /// Broker new desktop connections at all.
    Connect,
    /// Have this many users connected at once.
    ConcurrentUsers(u32),
    /// Provision new instances in pools.
    Provisioning,
    /// Run this many gateways.
    Gateways(u32),
    /// A named optional feature.
    Feature(&'a str),
}

/// Where this installation stands. Without a licence the evaluation runs for
/// [`EVALUATION_DAYS`] days from its start and allows everything within the `EVALUATION_*`
/// limits; when it is over, or a licence has expired, nothing is allowed but the console (to
/// enter a key), so every capability answers no.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LicenceState {
    /// No licence; evaluation running until (not including) `ends`.
    Evaluation { started: NaiveDate, ends: NaiveDate },
    /// No licence and the evaluation has ended.
    EvaluationOver { ended: NaiveDate },
    /// A valid licence.
    Licensed(Licence),
    /// A licence whose last valid day has passed.
    Expired(Licence),
}

impl LicenceState {
    /// The state for a stored, already checked licence (if any), the day the evaluation began
    /// (first start) and today.
    pub fn current(licence: Option<&Licence>, eval_started: NaiveDate, today: NaiveDate) -> Self {
        match licence {
            Some(licence) if licence.is_expired(today) => Self::Expired(licence.clone()),
            Some(licence) => Self::Licensed(licence.clone()),
            None => {
                let ends = evaluation_end(eval_started);
                if today < ends {
                    Self::Evaluation {
                        started: eval_started,
                        ends,
                    }
                } else {
                    Self::EvaluationOver { ended: ends }
                }
            }
        }
    }

    pub fn is_evaluation(&self) -> bool {
        matches!(self, Self::Evaluation { .. })
    }

    /// The licence in force, if any.
    pub fn licence(&self) -> Option<&Licence> {
        match self {
            Self::Licensed(licence) => Some(licence),
            _ => None,
        }
    }

    /// Whole days of evaluation left including today (30 on the first day, 1 on the last), or
    /// `None` outside the evaluation.
    pub fn evaluation_days_left(&self, today: NaiveDate) -> Option<u64> {
        match self {
            Self::Evaluation { ends, .. } => {
                let left = (*ends - today).num_days().clamp(0, EVALUATION_DAYS as i64);
                u64::try_from(left).ok()
            }
            _ => None,
        }
    }

    /// Whether `capability` is allowed now.
    pub fn allows(&self, capability: Capability<'_>) -> bool {
        let active = matches!(self, Self::Evaluation { .. } | Self::Licensed(_));
        if !active {
            return false;
        }
        match capability {
            Capability::Connect => true,
            Capability::ConcurrentUsers(n) => {
                self.max_concurrent_users().is_none_or(|max| n <= max)
            }
            Capability::Gateways(n) => self.max_gateways().is_none_or(|max| n <= max),
            Capability::Provisioning => match self {
                Self::Licensed(licence) => licence.payload.provisioning,
                _ => true,
            },
            Capability::Feature(name) => match self {
                Self::Licensed(licence) => {
                    let name = name.trim().to_ascii_lowercase();
                    licence.payload.features.contains(&name)
                }
                _ => true,
            },
        }
    }

    /// Concurrent users allowed: `None` is unlimited, `Some(0)` when nothing is allowed.
    pub fn max_concurrent_users(&self) -> Option<u32> {
        match self {
            Self::Evaluation { .. } => Some(EVALUATION_MAX_USERS),
            Self::Licensed(licence) => licence.payload.max_users,
            Self::EvaluationOver { .. } | Self::Expired(_) => Some(0),
        }
    }

    /// Gateways allowed: `None` is unlimited, `Some(0)` when nothing is allowed.
    pub fn max_gateways(&self) -> Option<u32> {
        match self {
            Self::Evaluation { .. } => Some(EVALUATION_MAX_GATEWAYS),
            Self::Licensed(licence) => licence.payload.gateways,
            Self::EvaluationOver { .. } | Self::Expired(_) => Some(0),
        }
    }

    /// One line for the console header, e.g. "Evaluation: 23 days left" or "Licensed to ACME
    /// until 2027-01-01".
    pub fn label(&self, today: NaiveDate) -> String {
        match self {
            Self::Evaluation { .. } => {
                let left = self.evaluation_days_left(today).unwrap_or(0);
                let days = if left == 1 { "day" } else { "days" };
                format!("Evaluation: {left} {days} left")
            }
            Self::EvaluationOver { ended } => {
                format!("Evaluation ended on {ended}: enter a licence key")
            }
            Self::Licensed(licence) => {
                let mut label = format!("Licensed to {}", licence.holder());
                match licence.expires() {
                    Some(last) => {
                        let _ = write!(label, " until {last}");
                    }
                    None => label.push_str(", no expiry"),
                }
                label
            }
            Self::Expired(licence) => {
                let on = licence.expires().map(|d| d.to_string()).unwrap_or_default();
                format!(
                    "Licence for {} expired on {on}: enter a renewed key",
                    licence.holder()
                )
            }
        }
    }
}

/// The first day the evaluation no longer runs.
fn evaluation_end(started: NaiveDate) -> NaiveDate {
    started
        .checked_add_days(Days::new(EVALUATION_DAYS))
        .unwrap_or(NaiveDate::MAX)
}

/// Today's date in UTC, the calendar licence expiry and the evaluation use.
pub fn today() -> NaiveDate {
    chrono::Utc::now().date_naive()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> NaiveDate {
        s.parse().expect("test date")
    }

    struct Vendor {
        _dir: tempfile::TempDir,
        signing_pem: String,
        verifier: Verifier,
    }

    fn vendor() -> Vendor {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = keygen(dir.path()).expect("keygen");
        let signing_pem = std::fs::read_to_string(&paths.signing_key).expect("read key");
        let public_pem = std::fs::read_to_string(&paths.public_key).expect("read pub");
        Vendor {
            _dir: dir,
            signing_pem,
            verifier: Verifier::from_pem(&public_pem).expect("verifier"),
        }
    }

    fn code() -> String {
        installation_code(&uuid::Uuid::from_u128(
            0x1234_5678_9abc_def0_0fed_cba9_8765_4321,
        ))
    }

    fn other_code() -> String {
        installation_code(&uuid::Uuid::from_u128(7))
    }

    fn payload() -> LicencePayload {
        let mut p = LicencePayload::new("S-0001", code(), date("2026-01-01"));
        p.customer = "ACME".to_owned();
        p.expires = Some(date("2027-01-01"));
        p.max_users = Some(50);
        p.provisioning = false;
        p.gateways = Some(2);
        p.features = vec!["html5".to_owned()];
        p
    }

    fn body_lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with("-----")).collect()
    }

    fn decode(text: &str) -> Vec<u8> {
        let body = extract_body(text).expect("body");
        base64_engine().decode(body).expect("base64")
    }

    #[test]
    fn round_trip_keygen_issue_verify() {
        let v = vendor();
        let key = issue(&v.signing_pem, &payload()).expect("issue");
        assert!(key.starts_with(ARMOUR_BEGIN));
        assert!(key.trim_end().ends_with(ARMOUR_END));
        assert!(body_lines(&key).iter().all(|l| l.len() <= LINE_WIDTH));

        let licence = v
            .verifier
            .verify(&key, &code(), date("2026-06-01"))
            .expect("verify");
        assert_eq!(licence.payload(), &payload());
        assert_eq!(licence.key_text(), key);
        // The last valid day is still valid.
        assert!(v.verifier.verify(&key, &code(), date("2027-01-01")).is_ok());
        // And the code may be typed loosely.
        let loose = code().to_lowercase().replace('-', " ");
        assert!(v.verifier.verify(&key, &loose, date("2026-06-01")).is_ok());

        // Stored and read back, it still checks.
        let stored = serde_json::to_string(&licence).expect("serialize");
        let back: Licence = serde_json::from_str(&stored).expect("deserialize");
        assert_eq!(back, licence);
        assert_eq!(
            v.verifier.check(back.key_text(), &code()).expect("recheck"),
            licence
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let v = vendor();
        for text in [
            "",
            "   \r\n",
            "hello, world!",
            "not a licence key at all",
            "QUJD",
        ] {
            let err = v.verifier.verify(text, &code(), date("2026-06-01"));
            assert!(
                matches!(err, Err(LicenceError::Malformed { .. })),
                "{text:?}: {err:?}"
            );
        }
    }

    #[test]
    fn truncated_key_is_malformed() {
        let v = vendor();
        let key = issue(&v.signing_pem, &payload()).expect("issue");
        let lines: Vec<&str> = key.lines().collect();
        // Last base64 line dropped, armour kept.
        let mut missing_line = lines.clone();
        missing_line.remove(lines.len() - 2);
        // Cut off in the middle, END line gone.
        let cut = &key[..key.len() / 2];
        // Body without its first line.
        let mut missing_first = lines.clone();
        missing_first.remove(1);
        for text in [
            missing_line.join("\n"),
            cut.to_owned(),
            missing_first.join("\n"),
        ] {
            let err = v.verifier.verify(&text, &code(), date("2026-06-01"));
            assert!(
                matches!(err, Err(LicenceError::Malformed { .. })),
                "{text}: {err:?}"
            );
        }
    }

    #[test]
    fn flipped_signature_byte_is_bad_signature() {
        let v = vendor();
        let key = issue(&v.signing_pem, &payload()).expect("issue");
        let mut bytes = decode(&key);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let err = v
            .verifier
            .verify(&armour(&bytes), &code(), date("2026-06-01"));
        assert!(matches!(err, Err(LicenceError::BadSignature)), "{err:?}");
    }

    #[test]
    fn payload_edited_after_signing_is_bad_signature() {
        let v = vendor();
        let key = issue(&v.signing_pem, &payload()).expect("issue");
        let bytes = decode(&key);
        let (payload_bytes, sig) = bytes.split_at(bytes.len() - Signature::BYTE_SIZE);
        let edited = String::from_utf8(payload_bytes.to_vec())
            .expect("utf8")
            .replace("\"max_users\":50", "\"max_users\":5000");
        assert_ne!(
            edited.as_bytes(),
            payload_bytes,
            "the edit must change something"
        );
        let mut forged = edited.into_bytes();
        forged.extend_from_slice(sig);
        let err = v
            .verifier
            .verify(&armour(&forged), &code(), date("2026-06-01"));
        assert!(matches!(err, Err(LicenceError::BadSignature)), "{err:?}");
    }

    #[test]
    fn key_signed_by_another_vendor_is_bad_signature() {
        let v = vendor();
        let other = vendor();
        let key = issue(&other.signing_pem, &payload()).expect("issue");
        let err = v.verifier.verify(&key, &code(), date("2026-06-01"));
        assert!(matches!(err, Err(LicenceError::BadSignature)), "{err:?}");
        // A verifier that also trusts the other key accepts it.
        let mut both = v.verifier.clone();
        let other_pub = other.verifier.keys[0]
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("pem");
        both.add_pem(&other_pub).expect("add");
        assert!(both.verify(&key, &code(), date("2026-06-01")).is_ok());
    }

    #[test]
    fn other_installation_is_refused_with_both_codes() {
        let v = vendor();
        let key = issue(&v.signing_pem, &payload()).expect("issue");
        match v.verifier.verify(&key, &other_code(), date("2026-06-01")) {
            Err(LicenceError::WrongInstallation { key_for, this }) => {
                assert_eq!(key_for, code());
                assert_eq!(this, other_code());
            }
            other => panic!("expected WrongInstallation, got {other:?}"),
        }
    }

    #[test]
    fn expired_key_is_refused_with_its_date() {
        let v = vendor();
        let key = issue(&v.signing_pem, &payload()).expect("issue");
        match v.verifier.verify(&key, &code(), date("2027-01-02")) {
            Err(LicenceError::Expired { on }) => assert_eq!(on, date("2027-01-01")),
            other => panic!("expected Expired, got {other:?}"),
        }
        // check() ignores expiry so a stored licence can still be shown as expired.
        let licence = v.verifier.check(&key, &code()).expect("check");
        let state = LicenceState::current(Some(&licence), date("2026-01-01"), date("2027-01-02"));
        assert!(matches!(state, LicenceState::Expired(_)));
        assert!(!state.allows(Capability::Connect));
        assert_eq!(
            state.label(date("2027-01-02")),
            "Licence for ACME expired on 2027-01-01: enter a renewed key"
        );
    }

    #[test]
    fn wizard_errors_come_in_the_documented_order() {
        let v = vendor();
        // A key for another installation that has also expired: the installation is reported.
        let mut p = payload();
        p.installation_code = other_code();
        let key = issue(&v.signing_pem, &p).expect("issue");
        let err = v.verifier.verify(&key, &code(), date("2030-01-01"));
        assert!(
            matches!(err, Err(LicenceError::WrongInstallation { .. })),
            "{err:?}"
        );
        // The same key with a damaged signature: the signature is reported.
        let mut bytes = decode(&key);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x80;
        let err = v
            .verifier
            .verify(&armour(&bytes), &code(), date("2030-01-01"));
        assert!(matches!(err, Err(LicenceError::BadSignature)), "{err:?}");
        // And cut short as well: that it cannot be read is reported.
        let text = armour(&bytes[..bytes.len() / 2]);
        let err = v.verifier.verify(&text, &code(), date("2030-01-01"));
        assert!(
            matches!(err, Err(LicenceError::Malformed { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn rewrapped_crlf_and_unarmoured_keys_verify() {
        let v = vendor();
        let key = issue(&v.signing_pem, &payload()).expect("issue");
        let body: String = body_lines(&key).concat();
        let wrapped_76: String = body
            .as_bytes()
            .chunks(76)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("\r\n");
        let variants = [
            key.replace('\n', "\r\n"),
            format!("{ARMOUR_BEGIN}\r\n{wrapped_76}\r\n{ARMOUR_END}\r\n"),
            format!("  {ARMOUR_BEGIN} {body} {ARMOUR_END}  "),
            body.clone(),
            format!("\n\n  {}\n", body_lines(&key).join("\n    ")),
            format!("Dear customer,\n\nhere is your key:\n\n{key}\nRegards,\nThe vendor\n"),
            key.replace(ARMOUR_BEGIN, &ARMOUR_BEGIN.to_lowercase())
                .replace(ARMOUR_END, &ARMOUR_END.to_lowercase()),
            key.replace("LICENCE", "LICENSE"),
            body.trim_end_matches('=').to_owned(),
        ];
        for text in variants {
            let licence = v
                .verifier
                .verify(&text, &code(), date("2026-06-01"))
                .unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(licence.payload(), &payload());
            assert_eq!(licence.key_text(), key, "stored in canonical form");
        }
    }

    #[test]
    fn newer_payload_version_asks_for_an_update() {
        let v = vendor();
        let signing = SigningKey::from_pkcs8_pem(&v.signing_pem).expect("key");
        let json = br#"{"v":2,"serial":"S","installation_code":"x","issued":"2026-01-01"}"#;
        let mut bytes = json.to_vec();
        bytes.extend_from_slice(&signing.sign(&signed_message(json)).to_bytes());
        let err = v
            .verifier
            .verify(&armour(&bytes), &code(), date("2026-06-01"));
        assert!(
            matches!(err, Err(LicenceError::TooNew { version: 2 })),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_fields_in_a_v1_payload_are_ignored() {
        let v = vendor();
        let signing = SigningKey::from_pkcs8_pem(&v.signing_pem).expect("key");
        let json = format!(
            r#"{{"v":1,"serial":"S","installation_code":"{}","issued":"2026-01-01","later":true}}"#,
            code()
        );
        let mut bytes = json.clone().into_bytes();
        bytes.extend_from_slice(&signing.sign(&signed_message(json.as_bytes())).to_bytes());
        let licence = v
            .verifier
            .verify(&armour(&bytes), &code(), date("2026-06-01"))
            .expect("verify");
        assert_eq!(licence.serial(), "S");
        assert!(
            !licence.payload().provisioning,
            "missing booleans default to false"
        );
        assert_eq!(licence.expires(), None);
    }

    #[test]
    fn issue_rejects_bad_payloads_and_keys() {
        let v = vendor();
        let mut p = payload();
        p.serial = "  ".to_owned();
        assert!(matches!(
            issue(&v.signing_pem, &p),
            Err(LicenceError::InvalidPayload(_))
        ));
        let mut p = payload();
        p.expires = Some(date("2025-12-31"));
        assert!(matches!(
            issue(&v.signing_pem, &p),
            Err(LicenceError::InvalidPayload(_))
        ));
        let mut p = payload();
        p.installation_code = "GH-12345".to_owned();
        assert!(matches!(
            issue(&v.signing_pem, &p),
            Err(LicenceError::InstallationCode { .. })
        ));
        let mut p = payload();
        p.features = vec!["no spaces".to_owned()];
        assert!(matches!(
            issue(&v.signing_pem, &p),
            Err(LicenceError::InvalidPayload(_))
        ));
        let public = v.verifier.keys[0]
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("pem");
        assert!(matches!(
            issue(&public, &payload()),
            Err(LicenceError::SigningKey(_))
        ));
        assert!(matches!(
            Verifier::from_pem("nope"),
            Err(LicenceError::PublicKey(_))
        ));
    }

    #[test]
    fn issue_canonicalises_code_and_features() {
        let v = vendor();
        let mut p = payload();
        p.installation_code = code().to_lowercase().replace('-', "");
        p.features = vec!["HTML5".to_owned(), "html5".to_owned(), " Spice ".to_owned()];
        let key = issue(&v.signing_pem, &p).expect("issue");
        let licence = v.verifier.check(&key, &code()).expect("check");
        assert_eq!(licence.payload().installation_code, code());
        assert_eq!(licence.payload().features, vec!["html5", "spice"]);
        assert_eq!(
            parse_features("a, b-2,,c_3").expect("parse"),
            vec!["a", "b-2", "c_3"]
        );
        assert!(parse_features("a,b c").is_err());
    }

    #[test]
    fn builtin_vendor_key_loads() {
        let verifier = Verifier::builtin().expect("built-in vendor key");
        assert_eq!(verifier.keys.len(), 1);
        // It is not the key of some freshly made vendor.
        let v = vendor();
        let key = issue(&v.signing_pem, &payload()).expect("issue");
        assert!(matches!(
            verifier.verify(&key, &code(), date("2026-06-01")),
            Err(LicenceError::BadSignature)
        ));
    }

    #[test]
    fn keygen_writes_private_key_0600_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("keys");
        let paths = keygen(&out).expect("keygen");
        let private = std::fs::read_to_string(&paths.signing_key).expect("read");
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
        let public = std::fs::read_to_string(&paths.public_key).expect("read");
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&paths.signing_key)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        match keygen(&out) {
            Err(LicenceError::KeyExists { path }) => assert_eq!(path, paths.signing_key),
            other => panic!("expected KeyExists, got {other:?}"),
        }
        assert_eq!(
            std::fs::read_to_string(&paths.signing_key).expect("read"),
            private,
            "the existing key is untouched"
        );
        // Only the public file left behind still blocks a new pair.
        std::fs::remove_file(&paths.signing_key).expect("rm");
        assert!(matches!(keygen(&out), Err(LicenceError::KeyExists { .. })));
        assert!(!paths.signing_key.exists());
    }

    #[test]
    fn installation_code_is_stable_and_well_formed() {
        let id = uuid::Uuid::from_u128(0x1234_5678_9abc_def0_0fed_cba9_8765_4321);
        let first = installation_code(&id);
        assert_eq!(first, installation_code(&id));
        // Pinned: the code must never change for an existing installation.
        assert_eq!(first, "GH-RH8SF-DT17V-R1PHB-8WW16");
        assert_ne!(first, installation_code(&uuid::Uuid::from_u128(7)));
        assert_eq!(first.len(), 2 + 4 * 6);
        let groups: Vec<&str> = first.split('-').collect();
        assert_eq!(groups.len(), 5);
        assert_eq!(groups[0], "GH");
        assert!(
            groups[1..]
                .iter()
                .all(|g| g.len() == 5 && g.bytes().all(|b| CROCKFORD.contains(&b)))
        );
        for _ in 0..50 {
            let code = installation_code(&uuid::Uuid::new_v4());
            assert_eq!(normalize_installation_code(&code).expect("valid"), code);
        }
    }

    #[test]
    fn installation_code_normalizes_loose_input() {
        let canonical = code();
        let body: String = canonical[3..].replace('-', "");
        let loose = [
            canonical.to_lowercase(),
            format!("  {}  ", canonical.replace('-', " ")),
            body.clone(),
            body.to_lowercase(),
            format!("gh{body}"),
            body.replace('0', "o").replace('1', "l"),
        ];
        for input in loose {
            assert_eq!(
                normalize_installation_code(&input).expect("normalizes"),
                canonical,
                "{input}"
            );
        }
    }

    #[test]
    fn installation_code_typos_are_caught() {
        let canonical = code();
        let chars: Vec<char> = canonical.chars().collect();
        // Every single-character substitution is rejected.
        for (i, c) in chars.iter().enumerate() {
            if i < 3 || *c == '-' {
                continue;
            }
            for replacement in CROCKFORD.iter().map(|b| char::from(*b)) {
                if replacement == *c {
                    continue;
                }
                let mut typo = chars.clone();
                typo[i] = replacement;
                let typo: String = typo.into_iter().collect();
                assert!(
                    matches!(
                        normalize_installation_code(&typo),
                        Err(LicenceError::InstallationCode { .. })
                    ),
                    "{typo} accepted"
                );
            }
        }
        for bad in [
            "",
            "GH-1234",
            "GH-UUUUU-UUUUU-UUUUU-UUUUU",
            &format!("{canonical}X"),
        ] {
            assert!(normalize_installation_code(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn evaluation_days() {
        let start = date("2026-03-01");
        let day = |n: u64| start.checked_add_days(Days::new(n)).expect("date");

        let s = LicenceState::current(None, start, day(0));
        assert!(s.is_evaluation());
        assert_eq!(s.evaluation_days_left(day(0)), Some(30));
        assert_eq!(s.label(day(0)), "Evaluation: 30 days left");
        assert_eq!(
            s,
            LicenceState::Evaluation {
                started: start,
                ends: day(30)
            }
        );

        let s = LicenceState::current(None, start, day(7));
        assert_eq!(s.label(day(7)), "Evaluation: 23 days left");

        let s = LicenceState::current(None, start, day(29));
        assert!(s.is_evaluation());
        assert_eq!(s.label(day(29)), "Evaluation: 1 day left");

        for n in [30, 31, 400] {
            let s = LicenceState::current(None, start, day(n));
            assert_eq!(s, LicenceState::EvaluationOver { ended: day(30) });
            assert!(!s.is_evaluation());
            assert!(!s.allows(Capability::Connect));
            assert_eq!(s.max_concurrent_users(), Some(0));
        }
        assert_eq!(
            LicenceState::current(None, start, day(30)).label(day(30)),
            "Evaluation ended on 2026-03-31: enter a licence key"
        );
    }

    #[test]
    fn evaluation_allows_everything_within_modest_limits() {
        let start = date("2026-03-01");
        let s = LicenceState::current(None, start, start);
        assert!(s.allows(Capability::Connect));
        assert!(s.allows(Capability::Provisioning));
        assert!(s.allows(Capability::Feature("anything")));
        assert!(s.allows(Capability::ConcurrentUsers(EVALUATION_MAX_USERS)));
        assert!(!s.allows(Capability::ConcurrentUsers(EVALUATION_MAX_USERS + 1)));
        assert!(s.allows(Capability::Gateways(EVALUATION_MAX_GATEWAYS)));
        assert!(!s.allows(Capability::Gateways(EVALUATION_MAX_GATEWAYS + 1)));
        assert_eq!(s.max_concurrent_users(), Some(EVALUATION_MAX_USERS));
    }

    #[test]
    fn licence_limits_answer_is_this_allowed() {
        let v = vendor();
        let key = issue(&v.signing_pem, &payload()).expect("issue");
        let licence = v.verifier.check(&key, &code()).expect("check");
        // A licence replaces the evaluation even after the evaluation is over.
        let s = LicenceState::current(Some(&licence), date("2020-01-01"), date("2026-06-01"));
        assert_eq!(s.licence(), Some(&licence));
        assert!(!s.is_evaluation());
        assert!(s.allows(Capability::Connect));
        assert!(s.allows(Capability::ConcurrentUsers(50)));
        assert!(!s.allows(Capability::ConcurrentUsers(51)));
        assert!(!s.allows(Capability::Provisioning));
        assert!(s.allows(Capability::Gateways(2)));
        assert!(!s.allows(Capability::Gateways(3)));
        assert!(s.allows(Capability::Feature("html5")));
        assert!(s.allows(Capability::Feature("HTML5")));
        assert!(!s.allows(Capability::Feature("spice")));
        assert_eq!(s.max_concurrent_users(), Some(50));
        assert_eq!(
            s.label(date("2026-06-01")),
            "Licensed to ACME until 2027-01-01"
        );

        let mut open = LicencePayload::new("S-2", code(), date("2026-01-01"));
        open.max_users = None;
        let key = issue(&v.signing_pem, &open).expect("issue");
        let licence = v.verifier.check(&key, &code()).expect("check");
        let s = LicenceState::current(Some(&licence), date("2026-01-01"), date("2099-01-01"));
        assert!(s.allows(Capability::ConcurrentUsers(u32::MAX)));
        assert!(s.allows(Capability::Provisioning));
        assert_eq!(s.max_concurrent_users(), None);
        assert_eq!(
            s.label(date("2099-01-01")),
            "Licensed to serial S-2, no expiry"
        );
    }

    #[test]
    fn error_messages_say_what_to_do() {
        let malformed = malformed("it is empty").to_string();
        assert!(malformed.contains("it is empty") && malformed.contains("Paste the whole key"));
        let wrong = LicenceError::WrongInstallation {
            key_for: "GH-A".to_owned(),
            this: "GH-B".to_owned(),
        }
        .to_string();
        assert!(wrong.contains("GH-A") && wrong.contains("GH-B") && wrong.contains("Send"));
        let expired = LicenceError::Expired {
            on: date("2027-01-01"),
        }
        .to_string();
        assert!(expired.contains("2027-01-01") && expired.contains("renewed"));
        assert!(
            LicenceError::BadSignature
                .to_string()
                .contains("exactly as you received")
        );
    }
}
