//! The snapshot file format ("`.ghbak`") and the file operations around it: encoding and
//! decoding a snapshot, checking its integrity, passphrase encryption, writing a file
//! atomically and rotating the scheduled backups in a folder.
//!
//! This module owns bytes and files only. It never touches `sled`: the `store` module hands it
//! [`Record`]s to export and takes decoded records back to import, and it alone decides how a
//! snapshot is applied (and how an older schema is migrated). Whether a snapshot's schema
//! version is acceptable is the caller's decision; [`check_schema`] offers the usual policy.
//!
//! # File layout (format version 1)
//!
//! All integers are little-endian. The full description, with the rationale, is in
//! `docs/backup-format.md`.
//!
//! | offset        | size  | field                                                            |
//! |---------------|-------|------------------------------------------------------------------|
//! | 0             | 8     | magic `GHSNAP\r\n` (`47 48 53 4E 41 50 0D 0A`)                    |
//! | 8             | 2     | format version, `u16` (1)                                        |
//! | 10            | 4     | header length `H`, `u32` (at most 64 KiB)                        |
//! | 14            | `H`   | header: a UTF-8 JSON object, see below                           |
//! | 14+H          | 8     | body length `B`, `u64`                                           |
//! | 22+H          | `B`   | body: plain, or XChaCha20-Poly1305 ciphertext followed by its 16-byte tag |
//! | 22+H+B        | 32    | SHA-256 of every byte before it (offset 0 to 22+H+B)             |
//!
//! The file ends right after the checksum; anything after it is an error.
//!
//! The header JSON carries `schema_version` (`u32`), `installation_id` (UUID string),
//! `created` (RFC 3339, UTC), `record_count` (`u64`) and `encryption`: either `null` or
//! `{"cipher":"xchacha20poly1305","kdf":"argon2id","m_cost_kib":…,"t_cost":…,"p_cost":…,
//! "salt":"<base64>","nonce":"<base64>"}`. Unknown fields are refused: any change to the
//! layout bumps the format version.
//!
//! The plain body is the record count (`u64`) followed by each record as
//! `tree_len u32, tree (UTF-8), key_len u32, key, value_len u32, value`.
//!
//! When encrypted, the key is argon2id(passphrase, salt) with the parameters in the header,
//! and the associated data is every byte before the body (magic, version, header, body
//! length), so the header cannot be altered without the decryption failing.
//!
//! # Reading order
//!
//! A reader checks, in this order and before anything else: the magic, the format version,
//! that the file is exactly as long as its length fields say, the SHA-256, then the header.
//! Only then does it derive the key and decrypt (an authentication failure at this point means
//! a wrong passphrase, since the bytes are known to be intact) and parse the records. Every
//! length read from the file is checked against the bytes that remain before anything is
//! allocated, so a hostile file cannot cause a panic or an absurd allocation.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use chrono::{DateTime, NaiveDateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zeroize::Zeroizing;

/// The eight bytes every snapshot file starts with. The CR LF pair makes a copy that went
/// through a text-mode transfer fail loudly instead of importing garbage.
pub const MAGIC: [u8; 8] = *b"GHSNAP\r\n";

/// The snapshot format version this code writes, and the only one it reads.
pub const FORMAT_VERSION: u16 = 1;

/// The extension of snapshot files, without the dot.
pub const FILE_EXTENSION: &str = "ghbak";

/// Argon2id memory cost used when writing, in KiB: OWASP's 46 MiB, 1 pass profile (as strong
/// as 19 MiB with 2 passes), whose working memory glibc always maps and unmaps, so a server
/// that wrote a backup does not keep it (see `auth::ARGON2_M_COST_KIB`).
pub const KDF_M_COST_KIB: u32 = 46 * 1024;
/// Argon2id passes used when writing.
pub const KDF_T_COST: u32 = 1;
/// Argon2id lanes used when writing.
pub const KDF_P_COST: u32 = 1;

/// Most memory a file may ask the KDF for, in KiB (256 MiB); a hostile file cannot make an
/// import allocate more.
const KDF_MAX_M_COST_KIB: u32 = 256 * 1024;
const KDF_MAX_T_COST: u32 = 16;
const KDF_MAX_P_COST: u32 = 16;

const FILE_NAME_PREFIX: &str = "gatehouse-";
const FILE_NAME_TIME_FORMAT: &str = "%Y%m%dT%H%M%S";
const FILE_NAME_SUFFIX: &str = "Z.ghbak";

const MAX_HEADER_LEN: usize = 64 * 1024;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
const CHECKSUM_LEN: usize = 32;
/// magic + format version + header length.
const PREAMBLE_LEN: usize = 8 + 2 + 4;
const BODY_LEN_FIELD: usize = 8;
/// Smallest framed record: three empty length-prefixed fields.
const MIN_RECORD_LEN: usize = 3 * 4;

/// What can go wrong with a snapshot file. Each message says what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "this is not a Gatehouse backup file (it does not start with the snapshot signature); \
         choose a .ghbak file made by `gatehouse backup export` or by the console"
    )]
    NotASnapshot,
    #[error(
        "this backup uses snapshot format version {0}, which this Gatehouse cannot read \
         (it reads version {FORMAT_VERSION}); if the file comes from a newer Gatehouse, \
         upgrade this one before importing it"
    )]
    UnsupportedFormat(u16),
    #[error(
        "the backup file is incomplete: it has {actual} bytes where {expected} were expected; \
         copy it again from the original location"
    )]
    Truncated { expected: u64, actual: u64 },
    #[error("the backup file is damaged ({0}); nothing was changed, use another copy")]
    Corrupt(String),
    #[error("this backup is encrypted; give its passphrase to read it")]
    PassphraseRequired,
    #[error("the passphrase does not open this backup; check it and try again")]
    WrongPassphrase,
    #[error(
        "an empty passphrase would not protect the backup; give a non-empty passphrase, \
         or none for an unencrypted backup"
    )]
    EmptyPassphrase,
    #[error(
        "this backup was made by a newer Gatehouse (data schema version {file}, this one \
         understands up to {ours}); upgrade Gatehouse before importing it"
    )]
    SchemaTooNew { file: u32, ours: u32 },
    #[error(
        "this backup holds a record this Gatehouse cannot read ({0}); if it comes from a \
         newer Gatehouse, upgrade this one before importing it"
    )]
    UnreadableRecord(String),
    #[error(
        "a record in tree {tree:?} is too large for a snapshot ({len} bytes, the limit is \
         4 GiB per field); remove or shrink it before exporting"
    )]
    RecordTooLarge { tree: String, len: usize },
    #[error(
        "the backup could not be encrypted or decrypted ({0}); this is a bug, please report it"
    )]
    Crypto(String),
    #[error("{action} {path} failed: {source}; check the path, its permissions and free space")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = BackupError> = std::result::Result<T, E>;

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BackupError + 'a {
    move |source| BackupError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// One key/value pair of one store tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub tree: String,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// What a snapshot says about itself, readable without the passphrase (see [`peek`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub format_version: u16,
    pub schema_version: u32,
    pub installation_id: Uuid,
    pub created: DateTime<Utc>,
    pub encrypted: bool,
    pub record_count: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    schema_version: u32,
    installation_id: Uuid,
    created: DateTime<Utc>,
    record_count: u64,
    encryption: Option<Encryption>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Encryption {
    cipher: CipherName,
    kdf: KdfName,
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
    /// Base64 (standard alphabet, padded).
    salt: String,
    /// Base64 (standard alphabet, padded).
    nonce: String,
}

#[derive(Debug, Serialize, Deserialize)]
enum CipherName {
    #[serde(rename = "xchacha20poly1305")]
    XChaCha20Poly1305,
}

#[derive(Debug, Serialize, Deserialize)]
enum KdfName {
    #[serde(rename = "argon2id")]
    Argon2id,
}

/// Encodes a whole snapshot. `meta.format_version`, `meta.encrypted` and `meta.record_count`
/// are ignored: they follow from this code, `passphrase` and `records`.
///
/// With a passphrase, the body is encrypted with a fresh random salt and nonce, so two
/// encodings of the same records differ.
pub fn encode(
    meta: &SnapshotMeta,
    records: &[Record],
    passphrase: Option<&str>,
) -> Result<Vec<u8>> {
    let mut plain_len = BODY_LEN_FIELD;
    for r in records {
        for len in [r.tree.len(), r.key.len(), r.value.len()] {
            if u32::try_from(len).is_err() {
                return Err(BackupError::RecordTooLarge {
                    tree: r.tree.clone(),
                    len,
                });
            }
        }
        plain_len += MIN_RECORD_LEN + r.tree.len() + r.key.len() + r.value.len();
    }

    let crypto = match passphrase {
        None => None,
        Some("") => return Err(BackupError::EmptyPassphrase),
        Some(pass) => {
            let mut salt = [0u8; SALT_LEN];
            let mut nonce = [0u8; NONCE_LEN];
            let mut rng = rand::rng();
            rng.fill_bytes(&mut salt);
            rng.fill_bytes(&mut nonce);
            let key = derive_key(pass, &salt, KDF_M_COST_KIB, KDF_T_COST, KDF_P_COST)?;
            Some((salt, nonce, key))
        }
    };

    let header = Header {
        schema_version: meta.schema_version,
        installation_id: meta.installation_id,
        created: meta.created,
        record_count: records.len() as u64,
        encryption: crypto.as_ref().map(|(salt, nonce, _)| Encryption {
            cipher: CipherName::XChaCha20Poly1305,
            kdf: KdfName::Argon2id,
            m_cost_kib: KDF_M_COST_KIB,
            t_cost: KDF_T_COST,
            p_cost: KDF_P_COST,
            salt: BASE64.encode(salt),
            nonce: BASE64.encode(nonce),
        }),
    };
    let header_json = serde_json::to_vec(&header)
        .map_err(|e| BackupError::Crypto(format!("cannot serialise the header: {e}")))?;
    let header_len = u32::try_from(header_json.len())
        .ok()
        .filter(|&l| l as usize <= MAX_HEADER_LEN)
        .ok_or_else(|| BackupError::Crypto("the header is too large".into()))?;

    let body_len = plain_len + if crypto.is_some() { TAG_LEN } else { 0 };
    let body_start = PREAMBLE_LEN + header_json.len() + BODY_LEN_FIELD;
    let mut out = Vec::with_capacity(body_start + body_len + CHECKSUM_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(&header_json);
    out.extend_from_slice(&(body_len as u64).to_le_bytes());

    out.extend_from_slice(&(records.len() as u64).to_le_bytes());
    for r in records {
        for field in [r.tree.as_bytes(), &r.key, &r.value] {
            // Lengths were checked to fit in a u32 above.
            out.extend_from_slice(&(field.len() as u32).to_le_bytes());
            out.extend_from_slice(field);
        }
    }

    if let Some((_, nonce, key)) = &crypto {
        let cipher = XChaCha20Poly1305::new_from_slice(key.as_slice())
            .map_err(|e| BackupError::Crypto(e.to_string()))?;
        let (aad, body) = out.split_at_mut(body_start);
        let tag = cipher
            .encrypt_inout_detached(&XNonce::from(*nonce), aad, body.into())
            .map_err(|e| BackupError::Crypto(e.to_string()))?;
        out.extend_from_slice(tag.as_slice());
    }

    let checksum = Sha256::digest(&out);
    out.extend_from_slice(&checksum);
    Ok(out)
}

/// Verifies and decodes a whole snapshot. Nothing is returned unless the whole file checked
/// out: magic, format version, length, checksum, header, decryption and record framing.
///
/// A passphrase given for an unencrypted snapshot is ignored (with a warning in the log).
pub fn decode(bytes: &[u8], passphrase: Option<&str>) -> Result<(SnapshotMeta, Vec<Record>)> {
    let parts = split(bytes)?;
    let meta = parts.meta();
    let records = match &parts.header.encryption {
        None => {
            if passphrase.is_some() {
                tracing::warn!("a passphrase was given for an unencrypted backup; ignoring it");
            }
            parse_body(parts.body, parts.header.record_count)?
        }
        Some(enc) => {
            let pass = match passphrase {
                None | Some("") => return Err(BackupError::PassphraseRequired),
                Some(p) => p,
            };
            let plain = decrypt_body(&parts, enc, pass)?;
            parse_body(&plain, parts.header.record_count)?
        }
    };
    Ok((meta, records))
}

/// Reads what a snapshot says about itself (origin, date, encryption, record count) so a
/// user can confirm before importing. No passphrase is needed. The file's length and
/// checksum are verified too, so an incomplete or damaged file is reported here already;
/// the records themselves are only checked by [`decode`].
pub fn peek(bytes: &[u8]) -> Result<SnapshotMeta> {
    Ok(split(bytes)?.meta())
}

/// The usual schema policy: a snapshot from a newer schema than `current` is refused (the
/// running code cannot know what its data means); the same or an older one is accepted, and
/// the store migrates an older one after import.
pub fn check_schema(meta: &SnapshotMeta, current: u32) -> Result<()> {
    if meta.schema_version > current {
        return Err(BackupError::SchemaTooNew {
            file: meta.schema_version,
            ours: current,
        });
    }
    Ok(())
}

/// A snapshot whose framing and checksum have been verified, with its header parsed.
struct Parts<'a> {
    header: Header,
    /// Every byte before the body: the associated data of the encryption.
    aad: &'a [u8],
    body: &'a [u8],
}

impl Parts<'_> {
    fn meta(&self) -> SnapshotMeta {
        SnapshotMeta {
            format_version: FORMAT_VERSION,
            schema_version: self.header.schema_version,
            installation_id: self.header.installation_id,
            created: self.header.created,
            encrypted: self.header.encryption.is_some(),
            record_count: self.header.record_count,
        }
    }
}

fn truncated(expected: usize, actual: usize) -> BackupError {
    BackupError::Truncated {
        expected: expected as u64,
        actual: actual as u64,
    }
}

fn corrupt(what: impl Into<String>) -> BackupError {
    BackupError::Corrupt(what.into())
}

fn le_u16(b: &[u8]) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[..2]);
    u16::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Checks magic, version, lengths and checksum, and parses the header.
fn split(bytes: &[u8]) -> Result<Parts<'_>> {
    let len = bytes.len();
    if len < MAGIC.len() {
        return if len > 0 && MAGIC.starts_with(bytes) {
            Err(truncated(PREAMBLE_LEN, len))
        } else {
            Err(BackupError::NotASnapshot)
        };
    }
    if bytes[..MAGIC.len()] != MAGIC {
        return if bytes.starts_with(b"GHSNAP") {
            Err(corrupt(
                "the file signature is altered, as by a text-mode transfer; copy the file in binary mode",
            ))
        } else {
            Err(BackupError::NotASnapshot)
        };
    }
    if len < MAGIC.len() + 2 {
        return Err(truncated(PREAMBLE_LEN, len));
    }
    let version = le_u16(&bytes[8..]);
    if version != FORMAT_VERSION {
        return Err(BackupError::UnsupportedFormat(version));
    }
    if len < PREAMBLE_LEN {
        return Err(truncated(PREAMBLE_LEN, len));
    }
    let header_len = le_u32(&bytes[10..]) as usize;
    if header_len > MAX_HEADER_LEN {
        return Err(corrupt(format!(
            "the header length {header_len} is beyond the {MAX_HEADER_LEN}-byte limit"
        )));
    }
    let body_len_at = PREAMBLE_LEN + header_len;
    let body_start = body_len_at + BODY_LEN_FIELD;
    if len < body_start {
        return Err(truncated(body_start + CHECKSUM_LEN, len));
    }
    let body_len = le_u64(&bytes[body_len_at..]);
    let expected = usize::try_from(body_len)
        .ok()
        .and_then(|b| b.checked_add(body_start + CHECKSUM_LEN));
    let Some(expected) = expected else {
        return Err(corrupt(format!("the body length {body_len} is impossible")));
    };
    if len < expected {
        return Err(truncated(expected, len));
    }
    if len > expected {
        return Err(corrupt(format!(
            "{} unexpected bytes follow the end of the snapshot",
            len - expected
        )));
    }
    let body_end = expected - CHECKSUM_LEN;
    let computed = Sha256::digest(&bytes[..body_end]);
    if computed.as_slice() != &bytes[body_end..] {
        return Err(corrupt("the SHA-256 checksum does not match the content"));
    }
    let header: Header = serde_json::from_slice(&bytes[PREAMBLE_LEN..body_len_at])
        .map_err(|e| corrupt(format!("the header is not valid: {e}")))?;
    Ok(Parts {
        header,
        aad: &bytes[..body_start],
        body: &bytes[body_start..body_end],
    })
}

fn derive_key(
    passphrase: &str,
    salt: &[u8],
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let params = Params::new(m_cost_kib, t_cost, p_cost, Some(KEY_LEN))
        .map_err(|e| corrupt(format!("the key-derivation parameters are not valid: {e}")))?;
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), salt, key.as_mut_slice())
        .map_err(|e| corrupt(format!("the key could not be derived: {e}")))?;
    Ok(key)
}

fn decrypt_body(
    parts: &Parts<'_>,
    enc: &Encryption,
    passphrase: &str,
) -> Result<Zeroizing<Vec<u8>>> {
    if enc.m_cost_kib > KDF_MAX_M_COST_KIB
        || enc.t_cost > KDF_MAX_T_COST
        || enc.p_cost > KDF_MAX_P_COST
    {
        return Err(corrupt(
            "the key-derivation parameters are beyond the accepted range",
        ));
    }
    let salt = BASE64
        .decode(&enc.salt)
        .ok()
        .filter(|s| (SALT_LEN..=64).contains(&s.len()))
        .ok_or_else(|| corrupt("the encryption salt is not valid"))?;
    let nonce = BASE64
        .decode(&enc.nonce)
        .ok()
        .and_then(|n| <[u8; NONCE_LEN]>::try_from(n.as_slice()).ok())
        .ok_or_else(|| corrupt("the encryption nonce is not valid"))?;
    let Some(split_at) = parts.body.len().checked_sub(TAG_LEN) else {
        return Err(corrupt("the encrypted body is shorter than its tag"));
    };
    let (ciphertext, tag) = parts.body.split_at(split_at);
    let tag = Tag::try_from(tag).map_err(|_| corrupt("the encryption tag is not valid"))?;

    let key = derive_key(passphrase, &salt, enc.m_cost_kib, enc.t_cost, enc.p_cost)?;
    let cipher = XChaCha20Poly1305::new_from_slice(key.as_slice())
        .map_err(|e| BackupError::Crypto(e.to_string()))?;
    let mut plain = Zeroizing::new(ciphertext.to_vec());
    cipher
        .decrypt_inout_detached(
            &XNonce::from(nonce),
            parts.aad,
            plain.as_mut_slice().into(),
            &tag,
        )
        // The checksum already proved the bytes intact, so this is the passphrase.
        .map_err(|_| BackupError::WrongPassphrase)?;
    Ok(plain)
}

/// Reads length-prefixed fields, never past the end.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.rest.len() {
            return Err(corrupt(format!(
                "{what} claims {n} bytes but only {} remain",
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn field(&mut self, what: &str) -> Result<&'a [u8]> {
        let len = le_u32(self.take(4, what)?) as usize;
        self.take(len, what)
    }
}

fn parse_body(body: &[u8], header_count: u64) -> Result<Vec<Record>> {
    let mut cur = Cursor { rest: body };
    let count = le_u64(cur.take(8, "the record count")?);
    if count != header_count {
        return Err(corrupt(format!(
            "the body holds {count} records but the header says {header_count}"
        )));
    }
    // Never trust the count for the allocation: each record takes at least 12 bytes.
    let plausible = cur.rest.len() / MIN_RECORD_LEN;
    let mut records =
        Vec::with_capacity(usize::try_from(count).unwrap_or(usize::MAX).min(plausible));
    for i in 0..count {
        let tree = cur.field("a tree name")?;
        let tree = std::str::from_utf8(tree)
            .map_err(|_| corrupt(format!("the tree name of record {i} is not UTF-8")))?;
        let key = cur.field("a key")?;
        let value = cur.field("a value")?;
        records.push(Record {
            tree: tree.to_owned(),
            key: key.to_vec(),
            value: value.to_vec(),
        });
    }
    if !cur.rest.is_empty() {
        return Err(corrupt(format!(
            "{} unexpected bytes follow the last record",
            cur.rest.len()
        )));
    }
    Ok(records)
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one, never
/// a partial one: a temporary file in the same folder (mode 0600), fsync, rename over
/// `path`, fsync of the folder. The temporary file is removed if anything fails.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Some(name) = path.file_name() else {
        return Err(BackupError::Io {
            action: "writing",
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
        });
    };
    let mut suffix = [0u8; 6];
    rand::rng().fill_bytes(&mut suffix);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", hex::encode(suffix)));
    let tmp = dir.join(tmp_name);

    let result = write_and_sync(&tmp, bytes).and_then(|()| {
        fs::rename(&tmp, path).map_err(io_err("renaming the temporary file to", path))
    });
    if let Err(e) = result {
        // Best effort: the temporary file may not exist if creating it failed.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)?;
    tracing::info!(path = %path.display(), bytes = bytes.len(), "backup file written");
    Ok(())
}

fn write_and_sync(tmp: &Path, bytes: &[u8]) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(tmp).map_err(io_err("creating", tmp))?;
    file.write_all(bytes).map_err(io_err("writing", tmp))?;
    file.sync_all().map_err(io_err("syncing", tmp))?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing the folder", dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Reads a whole snapshot file into memory, for [`peek`] and [`decode`].
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(io_err("reading", path))
}

/// The file name of a snapshot made at `created`, e.g. `gatehouse-20261121T030000Z.ghbak`.
/// The resolution is one second; names sort in time order.
pub fn file_name(created: DateTime<Utc>) -> String {
    format!(
        "{FILE_NAME_PREFIX}{}{FILE_NAME_SUFFIX}",
        created.format(FILE_NAME_TIME_FORMAT)
    )
}

/// The creation time encoded in a name made by [`file_name`], or `None` for any other name.
pub fn parse_file_name(name: &str) -> Option<DateTime<Utc>> {
    let stamp = name
        .strip_prefix(FILE_NAME_PREFIX)?
        .strip_suffix(FILE_NAME_SUFFIX)?;
    let naive = NaiveDateTime::parse_from_str(stamp, FILE_NAME_TIME_FORMAT).ok()?;
    let created = naive.and_utc();
    // Only names we could have written: no sign, no extra digits, no other spelling.
    (file_name(created) == name).then_some(created)
}

/// Deletes the oldest snapshot files in `dir` beyond the newest `keep`, and returns the
/// deleted paths, oldest first. Only regular files whose name [`file_name`] could have made
/// are considered: everything else in the folder is left alone. Age is read from the name,
/// not the modification time. The newest snapshot is never deleted, even with `keep == 0`.
pub fn rotate(dir: &Path, keep: usize) -> Result<Vec<PathBuf>> {
    let keep = keep.max(1);
    let mut ours = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some(created) = parse_file_name(&name) else {
            continue;
        };
        let file_type = entry
            .file_type()
            .map_err(io_err("inspecting", &entry.path()))?;
        if file_type.is_file() {
            ours.push((created, entry.path()));
        }
    }
    if ours.len() <= keep {
        return Ok(Vec::new());
    }
    ours.sort();
    let excess = ours.len() - keep;
    let mut deleted = Vec::with_capacity(excess);
    for (_, path) in ours.into_iter().take(excess) {
        fs::remove_file(&path).map_err(io_err("deleting the old backup", &path))?;
        tracing::info!(path = %path.display(), "old backup deleted by rotation");
        deleted.push(path);
    }
    Ok(deleted)
}

/// What [`save_to_dir`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedBackup {
    pub path: PathBuf,
    pub deleted: Vec<PathBuf>,
}

/// The scheduled-backup step after [`encode`]: creates `dir` if needed (mode 0700), writes
/// `bytes` atomically as [`file_name`]`(created)`, then rotates to `keep` snapshots.
pub fn save_to_dir(
    dir: &Path,
    created: DateTime<Utc>,
    bytes: &[u8],
    keep: usize,
) -> Result<SavedBackup> {
    if !dir.is_dir() {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder
            .create(dir)
            .map_err(io_err("creating the backup folder", dir))?;
    }
    let path = dir.join(file_name(created));
    write_file_atomic(&path, bytes)?;
    let deleted = rotate(dir, keep)?;
    Ok(SavedBackup { path, deleted })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            format_version: 0,
            schema_version: 7,
            installation_id: Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0),
            created: Utc
                .with_ymd_and_hms(2026, 11, 21, 3, 0, 0)
                .single()
                .unwrap(),
            encrypted: false,
            record_count: 0,
        }
    }

    fn rec(tree: &str, key: &[u8], value: &[u8]) -> Record {
        Record {
            tree: tree.into(),
            key: key.to_vec(),
            value: value.to_vec(),
        }
    }

    fn sample() -> Vec<Record> {
        vec![
            rec("", b"empty-tree-name", b"v"),
            rec("users", b"alice", b""),
            rec("bin", &(0..=255u8).collect::<Vec<_>>(), &[0, 0xff, 0, 0x80]),
            rec("ünïcode/tree", b"", b"\0\0\0"),
            rec("users", b"bob", b"{\"name\":\"Bob\"}"),
        ]
    }

    #[test]
    fn plain_round_trip_keeps_everything() {
        let records = sample();
        let bytes = encode(&meta(), &records, None).unwrap();
        assert_eq!(&bytes[..8], &MAGIC);
        let (m, back) = decode(&bytes, None).unwrap();
        assert_eq!(back, records);
        assert_eq!(m.format_version, FORMAT_VERSION);
        assert_eq!(m.schema_version, 7);
        assert_eq!(m.installation_id, meta().installation_id);
        assert_eq!(m.created, meta().created);
        assert!(!m.encrypted);
        assert_eq!(m.record_count, records.len() as u64);
        assert_eq!(peek(&bytes).unwrap(), m);
    }

    #[test]
    fn empty_snapshot_round_trips() {
        let bytes = encode(&meta(), &[], None).unwrap();
        let (m, back) = decode(&bytes, None).unwrap();
        assert!(back.is_empty());
        assert_eq!(m.record_count, 0);
    }

    #[test]
    fn encrypted_round_trip_hides_content() {
        let records = sample();
        let bytes = encode(&meta(), &records, Some("correct horse")).unwrap();
        // The body is not readable in the file.
        assert!(!bytes.windows(5).any(|w| w == b"alice"));
        assert!(!bytes.windows(15).any(|w| w == b"empty-tree-name"));
        let m = peek(&bytes).unwrap();
        assert!(m.encrypted);
        assert_eq!(m.record_count, records.len() as u64);
        let (m2, back) = decode(&bytes, Some("correct horse")).unwrap();
        assert_eq!(m2, m);
        assert_eq!(back, records);
        // Fresh salt and nonce every time.
        let again = encode(&meta(), &records, Some("correct horse")).unwrap();
        assert_ne!(again, bytes);
    }

    #[test]
    fn wrong_or_missing_passphrase_is_reported() {
        let bytes = encode(&meta(), &sample(), Some("right")).unwrap();
        assert!(matches!(
            decode(&bytes, Some("wrong")),
            Err(BackupError::WrongPassphrase)
        ));
        assert!(matches!(
            decode(&bytes, None),
            Err(BackupError::PassphraseRequired)
        ));
        assert!(matches!(
            decode(&bytes, Some("")),
            Err(BackupError::PassphraseRequired)
        ));
    }

    #[test]
    fn passphrase_for_plain_file_is_ignored() {
        let bytes = encode(&meta(), &sample(), None).unwrap();
        let (_, back) = decode(&bytes, Some("unneeded")).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn empty_passphrase_is_refused_when_encoding() {
        assert!(matches!(
            encode(&meta(), &sample(), Some("")),
            Err(BackupError::EmptyPassphrase)
        ));
    }

    #[test]
    fn every_truncation_is_caught() {
        for passphrase in [None, Some("pw")] {
            let bytes = encode(&meta(), &sample(), passphrase).unwrap();
            for n in 0..bytes.len() {
                let short = &bytes[..n];
                match decode(short, passphrase) {
                    Err(BackupError::NotASnapshot) => assert_eq!(n, 0),
                    Err(BackupError::Truncated { expected, actual }) => {
                        assert_eq!(actual, n as u64);
                        assert!(expected > actual);
                    }
                    other => panic!("cut at {n}: unexpected {other:?}"),
                }
                assert!(peek(short).is_err(), "peek accepted a cut at {n}");
            }
        }
    }

    #[test]
    fn every_single_byte_flip_is_caught() {
        for passphrase in [None, Some("pw")] {
            let bytes = encode(&meta(), &sample(), passphrase).unwrap();
            for i in 0..bytes.len() {
                for mask in [0x01u8, 0x80, 0xff] {
                    let mut bad = bytes.clone();
                    bad[i] ^= mask;
                    let result = decode(&bad, passphrase);
                    assert!(
                        result.is_err(),
                        "flip {mask:#04x} at {i} of {} was accepted",
                        bytes.len()
                    );
                    assert!(
                        !matches!(result, Err(BackupError::WrongPassphrase)),
                        "flip at {i} reported as a wrong passphrase"
                    );
                }
            }
        }
    }

    #[test]
    fn trailing_bytes_are_corrupt() {
        let mut bytes = encode(&meta(), &sample(), None).unwrap();
        bytes.push(0);
        assert!(matches!(decode(&bytes, None), Err(BackupError::Corrupt(_))));
    }

    #[test]
    fn foreign_files_are_not_snapshots() {
        let png =
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";
        let mut random = vec![0u8; 4096];
        rand::rng().fill_bytes(&mut random);
        random[0] = b'x';
        let text = b"GATEHOUSE BACKUP? no, just a text file\n".to_vec();
        for foreign in [&png[..], &[][..], &random[..], &text[..]] {
            let err = decode(foreign, None).unwrap_err();
            assert!(matches!(err, BackupError::NotASnapshot), "{err:?}");
            assert!(err.to_string().contains("not a Gatehouse backup file"));
            assert!(matches!(peek(foreign), Err(BackupError::NotASnapshot)));
        }
    }

    #[test]
    fn text_mode_damage_is_explained() {
        let mut bytes = encode(&meta(), &sample(), None).unwrap();
        bytes.remove(6); // "\r\n" became "\n"
        let err = decode(&bytes, None).unwrap_err();
        assert!(matches!(err, BackupError::Corrupt(_)));
        assert!(err.to_string().contains("binary mode"));
    }

    #[test]
    fn other_format_versions_are_refused() {
        let mut bytes = encode(&meta(), &sample(), None).unwrap();
        bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
        assert!(matches!(
            decode(&bytes, None),
            Err(BackupError::UnsupportedFormat(2))
        ));
    }

    /// Builds a file around a hand-made header and body with a correct checksum, as a
    /// hostile writer could.
    fn forge(header_json: &[u8], body: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(header_json.len() as u32).to_le_bytes());
        out.extend_from_slice(header_json);
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(body);
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    fn plain_header(count: u64) -> Vec<u8> {
        format!(
            r#"{{"schema_version":1,"installation_id":"{}","created":"2026-01-01T00:00:00Z","record_count":{count},"encryption":null}}"#,
            Uuid::nil()
        )
        .into_bytes()
    }

    #[test]
    fn hostile_lengths_with_valid_checksum_are_corrupt() {
        // A huge record count with almost no bytes must not allocate for it.
        let body = u64::MAX.to_le_bytes();
        assert!(matches!(
            decode(&forge(&plain_header(u64::MAX), &body), None),
            Err(BackupError::Corrupt(_))
        ));
        // A field length far beyond the body.
        let mut body = 1u64.to_le_bytes().to_vec();
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        body.extend_from_slice(b"abc");
        assert!(matches!(
            decode(&forge(&plain_header(1), &body), None),
            Err(BackupError::Corrupt(_))
        ));
        // Count in body disagrees with header.
        let body = 0u64.to_le_bytes();
        assert!(matches!(
            decode(&forge(&plain_header(1), &body), None),
            Err(BackupError::Corrupt(_))
        ));
        // Tree name not UTF-8.
        let mut body = 1u64.to_le_bytes().to_vec();
        for field in [&[0xffu8, 0xfe][..], b"", b""] {
            body.extend_from_slice(&(field.len() as u32).to_le_bytes());
            body.extend_from_slice(field);
        }
        assert!(matches!(
            decode(&forge(&plain_header(1), &body), None),
            Err(BackupError::Corrupt(_))
        ));
        // Bytes after the last record.
        let mut body = 0u64.to_le_bytes().to_vec();
        body.push(1);
        assert!(matches!(
            decode(&forge(&plain_header(0), &body), None),
            Err(BackupError::Corrupt(_))
        ));
        // Unknown header fields and a header that is not JSON.
        let mut header = plain_header(0);
        header.pop();
        header.extend_from_slice(br#","extra":1}"#);
        assert!(matches!(
            decode(&forge(&header, &0u64.to_le_bytes()), None),
            Err(BackupError::Corrupt(_))
        ));
        assert!(matches!(
            peek(&forge(b"\xff\x00garbage", &0u64.to_le_bytes())),
            Err(BackupError::Corrupt(_))
        ));
    }

    #[test]
    fn hostile_header_length_is_corrupt() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 64]);
        assert!(matches!(decode(&bytes, None), Err(BackupError::Corrupt(_))));
    }

    #[test]
    fn hostile_kdf_parameters_are_refused_before_deriving() {
        let header = format!(
            r#"{{"schema_version":1,"installation_id":"{}","created":"2026-01-01T00:00:00Z","record_count":0,"encryption":{{"cipher":"xchacha20poly1305","kdf":"argon2id","m_cost_kib":4294967295,"t_cost":2,"p_cost":1,"salt":"{}","nonce":"{}"}}}}"#,
            Uuid::nil(),
            BASE64.encode([0u8; SALT_LEN]),
            BASE64.encode([0u8; NONCE_LEN]),
        );
        let bytes = forge(header.as_bytes(), &[0u8; 8 + TAG_LEN]);
        assert!(peek(&bytes).unwrap().encrypted);
        assert!(matches!(
            decode(&bytes, Some("pw")),
            Err(BackupError::Corrupt(_))
        ));
    }

    #[test]
    fn schema_policy_refuses_only_newer() {
        let m = meta(); // schema 7
        assert!(check_schema(&m, 7).is_ok());
        assert!(check_schema(&m, 9).is_ok());
        let err = check_schema(&m, 6).unwrap_err();
        assert!(matches!(
            err,
            BackupError::SchemaTooNew { file: 7, ours: 6 }
        ));
        assert!(err.to_string().contains("upgrade Gatehouse"));
    }

    #[test]
    fn file_names_round_trip_and_reject_lookalikes() {
        let t = Utc
            .with_ymd_and_hms(2026, 11, 21, 3, 0, 0)
            .single()
            .unwrap();
        assert_eq!(file_name(t), "gatehouse-20261121T030000Z.ghbak");
        assert_eq!(parse_file_name(&file_name(t)), Some(t));
        for other in [
            "gatehouse-20261121T030000Z.ghbak.tmp",
            ".gatehouse-20261121T030000Z.ghbak.tmp-0011aa",
            "gatehouse-2026112T030000Z.ghbak",
            "gatehouse-+20261121T030000Z.ghbak",
            "gatehouse-20261341T030000Z.ghbak",
            "gatehouse-latest.ghbak",
            "notes.txt",
        ] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn rotate_keeps_newest_and_leaves_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let base = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().unwrap();
        let ours: Vec<String> = (0..5)
            .map(|d| file_name(base + chrono::Duration::days(d)))
            .collect();
        // Write them out of order so directory order cannot help.
        for i in [3, 0, 4, 1, 2] {
            fs::write(dir.path().join(&ours[i]), b"x").unwrap();
        }
        let unrelated = ["notes.txt", "gatehouse-latest.ghbak", "other.ghbak"];
        for name in unrelated {
            fs::write(dir.path().join(name), b"keep me").unwrap();
        }
        // A directory with our name pattern is not ours to delete.
        let old_dir = file_name(base - chrono::Duration::days(30));
        fs::create_dir(dir.path().join(&old_dir)).unwrap();

        let deleted = rotate(dir.path(), 2).unwrap();
        let expected: Vec<PathBuf> = ours[..3].iter().map(|n| dir.path().join(n)).collect();
        assert_eq!(deleted, expected);

        let mut want: Vec<String> = unrelated.iter().map(|s| s.to_string()).collect();
        want.extend([ours[3].clone(), ours[4].clone(), old_dir]);
        want.sort();
        assert_eq!(names_in(dir.path()), want);

        // Already within the limit: nothing more goes.
        assert!(rotate(dir.path(), 2).unwrap().is_empty());
        // keep == 0 still keeps the newest.
        assert_eq!(
            rotate(dir.path(), 0).unwrap(),
            vec![dir.path().join(&ours[3])]
        );
        assert!(dir.path().join(&ours[4]).exists());
    }

    #[test]
    fn write_file_atomic_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gatehouse-20260101T000000Z.ghbak");
        write_file_atomic(&path, b"first").unwrap();
        write_file_atomic(&path, b"second version").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second version");
        assert_eq!(
            names_in(dir.path()),
            vec!["gatehouse-20260101T000000Z.ghbak"]
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn write_file_atomic_failure_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        // The target is an existing non-empty directory, so the rename fails.
        let target = dir.path().join("taken");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), b"x").unwrap();
        let err = write_file_atomic(&target, b"data").unwrap_err();
        assert!(matches!(err, BackupError::Io { .. }));
        assert_eq!(names_in(dir.path()), vec!["taken"]);
    }

    #[test]
    fn save_to_dir_writes_reads_back_and_rotates() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("backups");
        let base = Utc.with_ymd_and_hms(2026, 3, 1, 2, 0, 0).single().unwrap();
        let mut saved = Vec::new();
        for h in 0..4 {
            let created = base + chrono::Duration::hours(h);
            let m = SnapshotMeta { created, ..meta() };
            let bytes = encode(&m, &sample(), None).unwrap();
            saved.push(save_to_dir(&dir, created, &bytes, 3).unwrap());
        }
        assert!(saved[..3].iter().all(|s| s.deleted.is_empty()));
        assert_eq!(saved[3].deleted, vec![saved[0].path.clone()]);
        let newest = read_file(&saved[3].path).unwrap();
        let (m, records) = decode(&newest, None).unwrap();
        assert_eq!(m.created, base + chrono::Duration::hours(3));
        assert_eq!(records, sample());
        assert_eq!(names_in(&dir).len(), 3);
        assert!(matches!(
            read_file(&saved[0].path),
            Err(BackupError::Io { .. })
        ));
    }

    #[test]
    fn hundred_thousand_records_round_trip() {
        let records: Vec<Record> = (0..100_000u32)
            .map(|i| Record {
                tree: format!("tree{}", i % 7),
                key: i.to_be_bytes().to_vec(),
                value: vec![(i % 251) as u8; 190],
            })
            .collect();
        // Plain: in a debug build the unoptimised stream cipher would dominate the run, and
        // encryption is covered by the small round trips above.
        let bytes = encode(&meta(), &records, None).unwrap();
        assert!(bytes.len() > 100_000 * 200);
        let (m, back) = decode(&bytes, None).unwrap();
        assert_eq!(m.record_count, 100_000);
        assert_eq!(back.len(), records.len());
        assert!(back == records);
    }
}
