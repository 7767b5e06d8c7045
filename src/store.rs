//! The embedded store: the only module that names `sled`.
//!
//! What it owns:
//! - the data folder's layout: `gatehouse.lock` (held while a process uses the store, so a CLI
//!   command cannot write under a running server), `installation-id` (made once, never part of
//!   a backup, so a restore keeps this installation's identity), `CURRENT` (names the live store
//!   folder), and the sled folders `store-NNNN/`;
//! - typed collections: a value type implements [`Record`] (its tree name and version); values
//!   are stored as a 2-byte version marker followed by JSON, and an older version is decoded
//!   through [`Record::upgrade`];
//! - a schema version with numbered, idempotent migrations run at open and after a restore;
//! - multi-record changes as transactions ([`Store::transact`]);
//! - durability: every write is flushed to disk before it returns, so what a request reported
//!   as saved survives `kill -9`;
//! - whole-store snapshots for backups, and the atomic swap that restores one: the new store is
//!   written beside the live one and `CURRENT` is switched with one rename.
//!
//! All calls block; async code reaches the store through [`Store::call`], which runs the work
//! on tokio's blocking threads. No lock is held across an `.await`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use uuid::Uuid;

use crate::backup;

/// The schema this build writes. Bump it together with a new entry in `MIGRATIONS`.
pub const SCHEMA_VERSION: u32 = 1;

const META_TREE: &str = "meta";
const SCHEMA_KEY: &[u8] = b"schema_version";
const LOCK_FILE: &str = "gatehouse.lock";
const ID_FILE: &str = "installation-id";
const CURRENT_FILE: &str = "CURRENT";
const STORE_PREFIX: &str = "store-";
/// sled's own default tree: never exported, never imported.
const SLED_DEFAULT_TREE: &[u8] = b"__sled__default";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the data folder {dir} is in use by another Gatehouse process{pid}: stop it first (systemctl stop gatehouse), or use the console's System > Backups while it runs"
    )]
    InUse { dir: PathBuf, pid: String },
    #[error("data folder {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("store engine: {0}")]
    Engine(String),
    #[error("stored value in `{tree}` / `{key}` cannot be read: {reason}")]
    Decode {
        tree: &'static str,
        key: String,
        reason: String,
    },
    #[error("value for `{tree}` cannot be written: {reason}")]
    Encode { tree: &'static str, reason: String },
    #[error(
        "the store has schema version {found}, newer than this Gatehouse ({ours}): install the newer Gatehouse or restore an older backup"
    )]
    SchemaTooNew { found: u32, ours: u32 },
    #[error("migration to schema {version} failed: {reason}")]
    Migration { version: u32, reason: String },
    #[error("background task failed: {0}")]
    Join(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Engine(e.to_string())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A value type kept in one tree of the store.
pub trait Record: Serialize + DeserializeOwned + Send + 'static {
    /// The tree holding values of this type. Tree names say what the key is: `admin_by_name`.
    const TREE: &'static str;
    /// The version written now; bump it when the serialized shape changes incompatibly.
    const VERSION: u16 = 1;
    /// Decodes a value written with an older `version`. The default refuses.
    fn upgrade(version: u16, json: &[u8]) -> std::result::Result<Self, String> {
        let _ = json;
        Err(format!("no upgrade from version {version}"))
    }
}

/// A record of which there is exactly one, kept under a fixed key.
pub trait Singleton: Record + Default {
    const KEY: &'static str;
}

/// The time part of a time-ordered key: milliseconds since 1970, 13 hex digits, so that keys
/// sort by time.
pub fn time_key(at: DateTime<Utc>) -> String {
    format!("{:013x}", at.timestamp_millis().max(0))
}

fn encode<T: Record>(value: &T) -> Result<Vec<u8>> {
    let mut out = T::VERSION.to_le_bytes().to_vec();
    serde_json::to_writer(&mut out, value).map_err(|e| StoreError::Encode {
        tree: T::TREE,
        reason: e.to_string(),
    })?;
    Ok(out)
}

fn decode<T: Record>(key: &[u8], bytes: &[u8]) -> Result<T> {
    let err = |reason: String| StoreError::Decode {
        tree: T::TREE,
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    if bytes.len() < 2 {
        return Err(err("value shorter than its version marker".into()));
    }
    let version = u16::from_le_bytes([bytes[0], bytes[1]]);
    let json = &bytes[2..];
    if version == T::VERSION {
        serde_json::from_slice(json).map_err(|e| err(e.to_string()))
    } else if version < T::VERSION {
        T::upgrade(version, json).map_err(err)
    } else {
        Err(err(format!(
            "written by a newer Gatehouse (version {version}, this one reads up to {})",
            T::VERSION
        )))
    }
}

/// Whether `value` reads as a `T` stored under `key` (a snapshot's record, checked before a
/// restore puts it in place): the reason when it does not.
pub fn check_value<T: Record>(key: &[u8], value: &[u8]) -> Result<()> {
    decode::<T>(key, value).map(|_| ())
}

/// One numbered migration: brings the store from `version - 1` to `version`. Must be idempotent.
struct Migration {
    version: u32,
    run: fn(&Engine) -> Result<()>,
}

/// Schema 1 is the first one: nothing to change.
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    run: |_| Ok(()),
}];

/// A live sled database and the folder name it lives in.
struct Engine {
    db: sled::Db,
    dir_name: String,
    /// Group commit: writes announced, and the last announcement a finished flush covered.
    announced: std::sync::atomic::AtomicU64,
    flushed: std::sync::Mutex<u64>,
}

impl Engine {
    /// Opens the engine's folder. The data folder's own lock is held already, so a sled lock
    /// that is still taken can only be this process's previous handle of the folder, whose
    /// background threads release it a moment after it was dropped (a restart in the same
    /// process, a restored backup): that is waited for, a little.
    fn open(path: &Path, dir_name: String) -> Result<Self> {
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(32 * 1024 * 1024);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(e))
                    if e.to_string().starts_with("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other,
            }
        }
        .map_err(|e| match e {
            sled::Error::Io(source) => StoreError::Io {
                dir: path.to_path_buf(),
                source,
            },
            other => StoreError::from(other),
        })?;
        Ok(Self {
            db,
            dir_name,
            announced: std::sync::atomic::AtomicU64::new(0),
            flushed: std::sync::Mutex::new(0),
        })
    }

    fn tree(&self, name: &str) -> Result<sled::Tree> {
        Ok(self.db.open_tree(name)?)
    }

    fn schema_version(&self) -> Result<u32> {
        let meta = self.tree(META_TREE)?;
        Ok(match meta.get(SCHEMA_KEY)? {
            Some(v) if v.len() == 4 => u32::from_le_bytes([v[0], v[1], v[2], v[3]]),
            Some(_) => return Err(StoreError::Engine("schema version is malformed".into())),
            None => 0,
        })
    }

    /// Brings the store to [`SCHEMA_VERSION`], one numbered step at a time.
    fn migrate(&self) -> Result<()> {
        let found = self.schema_version()?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                ours: SCHEMA_VERSION,
            });
        }
        for m in MIGRATIONS.iter().filter(|m| m.version > found) {
            (m.run)(self).map_err(|e| StoreError::Migration {
                version: m.version,
                reason: e.to_string(),
            })?;
            self.tree(META_TREE)?
                .insert(SCHEMA_KEY, &m.version.to_le_bytes())?;
            tracing::info!(version = m.version, "store migrated");
        }
        self.db.flush()?;
        Ok(())
    }

    /// Makes every write that finished before this call durable. Concurrent callers share
    /// one disk sync: a flush that began after a caller's write covers it, so that caller
    /// returns without syncing again (group commit).
    fn flush(&self) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        let mine = self.announced.fetch_add(1, SeqCst) + 1;
        let mut flushed = self.flushed.lock().unwrap_or_else(|p| p.into_inner());
        if *flushed >= mine {
            return Ok(());
        }
        let covers = self.announced.load(SeqCst);
        self.db.flush()?;
        *flushed = covers;
        Ok(())
    }
}

struct Shared {
    root: PathBuf,
    engine: RwLock<Engine>,
    installation_id: Uuid,
    /// Held for the life of the process: the data folder's advisory lock.
    _lock: File,
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.shared.root)
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store in `root`, takes the folder's lock and migrates.
    pub fn open(root: &Path) -> Result<Self> {
        let io = |source| StoreError::Io {
            dir: root.to_path_buf(),
            source,
        };
        create_private_dir(root).map_err(io)?;
        let lock = take_lock(root)?;
        let installation_id = installation_id(root).map_err(io)?;
        let current = match std::fs::read_to_string(root.join(CURRENT_FILE)) {
            Ok(s) if s.trim().starts_with(STORE_PREFIX) => s.trim().to_string(),
            Ok(_) => {
                return Err(StoreError::Engine(format!(
                    "{} does not name a store folder",
                    root.join(CURRENT_FILE).display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let first = format!("{STORE_PREFIX}0001");
                write_atomic(&root.join(CURRENT_FILE), first.as_bytes()).map_err(io)?;
                first
            }
            Err(e) => return Err(io(e)),
        };
        remove_stale_store_dirs(root, &current).map_err(io)?;
        let engine = Engine::open(&root.join(&current), current)?;
        engine.migrate()?;
        Ok(Self {
            shared: Arc::new(Shared {
                root: root.to_path_buf(),
                engine: RwLock::new(engine),
                installation_id,
                _lock: lock,
            }),
        })
    }

    /// The installation id of a data folder, read without taking its lock (`None` before the
    /// first start).
    pub fn installation_id_of(root: &Path) -> std::io::Result<Option<Uuid>> {
        if root.join(ID_FILE).exists() {
            installation_id(root).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// This installation's random id: made on first start, kept across restores.
    pub fn installation_id(&self) -> Uuid {
        self.shared.installation_id
    }

    pub fn schema_version(&self) -> Result<u32> {
        self.read().schema_version()
    }

    fn read(&self) -> RwLockReadGuard<'_, Engine> {
        self.shared.engine.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_lock(&self) -> RwLockWriteGuard<'_, Engine> {
        self.shared
            .engine
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Runs blocking store work on tokio's blocking threads.
    pub async fn call<R, E, F>(&self, f: F) -> std::result::Result<R, E>
    where
        F: FnOnce(&Store) -> std::result::Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| E::from(StoreError::Join(e.to_string())))?
    }

    pub fn get<T: Record>(&self, key: &str) -> Result<Option<T>> {
        let engine = self.read();
        match engine.tree(T::TREE)?.get(key.as_bytes())? {
            Some(bytes) => Ok(Some(decode(key.as_bytes(), &bytes)?)),
            None => Ok(None),
        }
    }

    /// Saves `value` under `key` and flushes it to disk before returning.
    pub fn put<T: Record>(&self, key: &str, value: &T) -> Result<()> {
        let bytes = encode(value)?;
        let engine = self.read();
        engine.tree(T::TREE)?.insert(key.as_bytes(), bytes)?;
        engine.flush()
    }

    /// Saves `value` without waiting for the disk: for bookkeeping that may be lost in a crash
    /// (a last-seen time). The engine writes it out within half a second.
    pub fn put_lazy<T: Record>(&self, key: &str, value: &T) -> Result<()> {
        let bytes = encode(value)?;
        self.read().tree(T::TREE)?.insert(key.as_bytes(), bytes)?;
        Ok(())
    }

    /// Removes `key`; says whether it was there.
    pub fn delete<T: Record>(&self, key: &str) -> Result<bool> {
        let engine = self.read();
        let was = engine.tree(T::TREE)?.remove(key.as_bytes())?.is_some();
        engine.flush()?;
        Ok(was)
    }

    /// Every value of a collection in key order.
    pub fn list<T: Record>(&self) -> Result<Vec<(String, T)>> {
        self.scan::<T>(false, usize::MAX)
    }

    /// Every value, in key order, without the keys.
    pub fn values<T: Record>(&self) -> Result<Vec<T>> {
        Ok(self.list::<T>()?.into_iter().map(|(_, v)| v).collect())
    }

    /// Up to `limit` values in reverse key order (newest first for time-ordered keys).
    pub fn list_newest<T: Record>(&self, limit: usize) -> Result<Vec<(String, T)>> {
        self.scan::<T>(true, limit)
    }

    fn scan<T: Record>(&self, reverse: bool, limit: usize) -> Result<Vec<(String, T)>> {
        let engine = self.read();
        let tree = engine.tree(T::TREE)?;
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if reverse {
            Box::new(tree.iter().rev())
        } else {
            Box::new(tree.iter())
        };
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (k, v) = item?;
            out.push((String::from_utf8_lossy(&k).into_owned(), decode(&k, &v)?));
        }
        Ok(out)
    }

    /// Up to `limit` values with keys from `from` (included) to `to` (excluded), in key order,
    /// or newest first with `reverse`. Time-ordered keys under a prefix make this a time range.
    pub fn range<T: Record>(
        &self,
        from: &str,
        to: &str,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(String, T)>> {
        let engine = self.read();
        let tree = engine.tree(T::TREE)?;
        let range = tree.range(from.as_bytes()..to.as_bytes());
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if reverse {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (k, v) = item?;
            out.push((String::from_utf8_lossy(&k).into_owned(), decode(&k, &v)?));
        }
        Ok(out)
    }

    /// Removes every key from `from` (included) to `to` (excluded); says how many went.
    pub fn delete_range<T: Record>(&self, from: &str, to: &str) -> Result<usize> {
        let engine = self.read();
        let tree = engine.tree(T::TREE)?;
        let mut removed = 0;
        for key in tree.range(from.as_bytes()..to.as_bytes()).keys() {
            tree.remove(key?)?;
            removed += 1;
        }
        if removed > 0 {
            engine.flush()?;
        }
        Ok(removed)
    }

    /// Drops the records from before `cutoff` of a tree keyed `{owner}/{time key}…` (see
    /// [`time_key`]), for every owner, visiting each owner's range once; how many it dropped.
    pub fn prune_before<T: Record>(&self, cutoff: DateTime<Utc>) -> Result<usize> {
        let engine = self.read();
        let tree = engine.tree(T::TREE)?;
        let cutoff = time_key(cutoff);
        let mut removed = 0;
        let mut from = Vec::new();
        while let Some(key) = tree.range(from.as_slice()..).keys().next() {
            let key = key?;
            let owner = match key.iter().position(|b| *b == b'/') {
                Some(slash) => key[..slash].to_vec(),
                None => key.to_vec(),
            };
            let start = [owner.as_slice(), b"/"].concat();
            let end = [start.as_slice(), cutoff.as_bytes()].concat();
            for old in tree.range(start.as_slice()..end.as_slice()).keys() {
                tree.remove(old?)?;
                removed += 1;
            }
            // '0' comes right after '/': the first key of the next owner.
            from = [owner.as_slice(), b"0"].concat();
        }
        if removed > 0 {
            engine.flush()?;
        }
        Ok(removed)
    }

    /// The first key at or after `from`, without reading its value.
    pub fn first_key_from<T: Record>(&self, from: &str) -> Result<Option<String>> {
        let engine = self.read();
        let tree = engine.tree(T::TREE)?;
        match tree.range(from.as_bytes()..).keys().next() {
            Some(key) => Ok(Some(String::from_utf8_lossy(&key?).into_owned())),
            None => Ok(None),
        }
    }

    pub fn count<T: Record>(&self) -> Result<usize> {
        Ok(self.read().tree(T::TREE)?.len())
    }

    pub fn get_one<T: Singleton>(&self) -> Result<T> {
        Ok(self.get::<T>(T::KEY)?.unwrap_or_default())
    }

    pub fn put_one<T: Singleton>(&self, value: &T) -> Result<()> {
        self.put(T::KEY, value)
    }

    /// A key that sorts after every key made before it (for append-only logs): its
    /// [`time_key`], then a counter.
    pub fn next_key(&self) -> Result<String> {
        let id = self.read().db.generate_id()?;
        Ok(format!("{}-{id:016x}", time_key(Utc::now())))
    }

    /// Runs `f` as one transaction over the trees it names; all its writes land together or
    /// not at all, and are on disk when this returns. `f` may run more than once on conflict,
    /// so it must not have side effects outside the transaction.
    pub fn transact<R, E, F>(
        &self,
        trees: &[&'static str],
        f: F,
    ) -> std::result::Result<R, TxError<E>>
    where
        F: Fn(&Tx<'_>) -> std::result::Result<R, TxError<E>>,
    {
        let engine = self.read();
        let opened: Vec<sled::Tree> = trees
            .iter()
            .map(|name| engine.tree(name))
            .collect::<Result<_>>()
            .map_err(TxError::Store)?;
        let result = opened.as_slice().transaction(|views| {
            let tx = Tx {
                names: trees,
                views: views.as_slice(),
            };
            f(&tx).map_err(|e| match e {
                TxError::Conflict(c) => c.into(),
                other => ConflictableTransactionError::Abort(other),
            })
        });
        match result {
            Ok(r) => {
                engine.flush().map_err(TxError::Store)?;
                Ok(r)
            }
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(TxError::Store(e.into())),
        }
    }

    /// Every record of every tree, read while writers wait, so the copy is consistent.
    pub fn export_records(&self) -> Result<Vec<backup::Record>> {
        let engine = self.write_lock();
        let mut out = Vec::new();
        // Trees in name order, so two exports of the same content are the same file content.
        let mut names = engine.db.tree_names();
        names.sort();
        for name in names {
            if name.as_ref() == SLED_DEFAULT_TREE {
                continue;
            }
            let tree_name = String::from_utf8_lossy(&name).into_owned();
            let tree = engine.db.open_tree(&name)?;
            for item in tree.iter() {
                let (k, v) = item?;
                out.push(backup::Record {
                    tree: tree_name.clone(),
                    key: k.to_vec(),
                    value: v.to_vec(),
                });
            }
        }
        Ok(out)
    }

    /// Every record of one tree, raw.
    pub fn export_tree(&self, tree: &str) -> Result<Vec<backup::Record>> {
        let engine = self.read();
        engine
            .tree(tree)?
            .iter()
            .map(|item| {
                let (k, v) = item?;
                Ok(backup::Record {
                    tree: tree.to_string(),
                    key: k.to_vec(),
                    value: v.to_vec(),
                })
            })
            .collect()
    }

    /// Replaces the whole store with `records` (from a verified snapshot). The new store is
    /// built and migrated in a fresh folder first; only then does one rename of `CURRENT`
    /// make it live. On any error before that rename the live store is untouched; once the
    /// rename is done the new store is the live one (a failed folder sync after it is logged,
    /// see `write_atomic`).
    pub fn replace_all(&self, records: &[backup::Record]) -> Result<()> {
        let root = self.shared.root.clone();
        let io = |source| StoreError::Io {
            dir: root.clone(),
            source,
        };
        let mut engine = self.write_lock();
        let next = next_store_dir(&engine.dir_name);
        let next_path = root.join(&next);
        if next_path.exists() {
            std::fs::remove_dir_all(&next_path).map_err(io)?;
        }
        let built = (|| -> Result<Engine> {
            let fresh = Engine::open(&next_path, next.clone())?;
            let mut batches: std::collections::BTreeMap<&str, sled::Batch> = Default::default();
            for r in records {
                if r.tree.as_bytes() == SLED_DEFAULT_TREE {
                    continue;
                }
                batches
                    .entry(r.tree.as_str())
                    .or_default()
                    .insert(r.key.as_slice(), r.value.as_slice());
            }
            for (tree, batch) in batches {
                fresh.tree(tree)?.apply_batch(batch)?;
            }
            fresh.migrate()?;
            fresh.flush()?;
            Ok(fresh)
        })();
        let fresh = match built {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&next_path);
                return Err(e);
            }
        };
        write_atomic(&root.join(CURRENT_FILE), next.as_bytes()).map_err(io)?;
        let old = std::mem::replace(&mut *engine, fresh);
        let old_path = root.join(&old.dir_name);
        drop(old);
        if let Err(e) = std::fs::remove_dir_all(&old_path) {
            tracing::warn!(path = %old_path.display(), "old store folder not removed: {e}");
        }
        Ok(())
    }
}

/// Typed access to the trees of one transaction.
pub struct Tx<'a> {
    names: &'a [&'static str],
    views: &'a [TransactionalTree],
}

/// Why a transaction did not commit: the closure's own reason, or the store's.
#[derive(Debug)]
pub enum TxError<E> {
    /// The closure decided not to commit.
    Abort(E),
    Store(StoreError),
    /// The engine asks for a retry; only produced and consumed inside the store.
    #[doc(hidden)]
    Conflict(Conflict),
}

#[doc(hidden)]
#[derive(Debug)]
pub struct Conflict(ConflictableTransactionError<()>);

impl<E> From<StoreError> for TxError<E> {
    fn from(e: StoreError) -> Self {
        TxError::Store(e)
    }
}

impl From<TxError<StoreError>> for StoreError {
    /// A transaction whose closure fails only with store errors.
    fn from(e: TxError<StoreError>) -> Self {
        match e {
            TxError::Abort(e) | TxError::Store(e) => e,
            TxError::Conflict(_) => StoreError::Engine("transaction conflict".into()),
        }
    }
}

impl<E: std::fmt::Display> std::fmt::Display for TxError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TxError::Abort(e) => e.fmt(f),
            TxError::Store(e) => e.fmt(f),
            TxError::Conflict(_) => f.write_str("transaction conflict"),
        }
    }
}

impl Tx<'_> {
    fn view<T: Record, E>(&self) -> std::result::Result<&TransactionalTree, TxError<E>> {
        self.names
            .iter()
            .position(|n| *n == T::TREE)
            .map(|i| &self.views[i])
            .ok_or_else(|| {
                TxError::Store(StoreError::Engine(format!(
                    "tree `{}` was not named when the transaction began",
                    T::TREE
                )))
            })
    }

    pub fn get<T: Record, E>(&self, key: &str) -> std::result::Result<Option<T>, TxError<E>> {
        let view = self.view::<T, E>()?;
        match view.get(key.as_bytes()).map_err(conflict)? {
            Some(bytes) => Ok(Some(decode(key.as_bytes(), &bytes)?)),
            None => Ok(None),
        }
    }

    pub fn put<T: Record, E>(&self, key: &str, value: &T) -> std::result::Result<(), TxError<E>> {
        let bytes = encode(value)?;
        self.view::<T, E>()?
            .insert(key.as_bytes(), bytes)
            .map_err(conflict)?;
        Ok(())
    }

    pub fn delete<T: Record, E>(&self, key: &str) -> std::result::Result<bool, TxError<E>> {
        Ok(self
            .view::<T, E>()?
            .remove(key.as_bytes())
            .map_err(conflict)?
            .is_some())
    }
}

fn conflict<E>(e: sled::transaction::UnabortableTransactionError) -> TxError<E> {
    TxError::Conflict(Conflict(e.into()))
}

// The closure's abort type travels through sled as `TxError<E>`; conflicts carry `()`.
impl<E> From<Conflict> for ConflictableTransactionError<TxError<E>> {
    fn from(c: Conflict) -> Self {
        match c.0 {
            ConflictableTransactionError::Conflict => ConflictableTransactionError::Conflict,
            ConflictableTransactionError::Storage(e) => ConflictableTransactionError::Storage(e),
            ConflictableTransactionError::Abort(()) => ConflictableTransactionError::Conflict,
        }
    }
}

fn next_store_dir(current: &str) -> String {
    let n: u32 = current
        .strip_prefix(STORE_PREFIX)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    format!("{STORE_PREFIX}{:04}", n + 1)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn take_lock(root: &Path) -> Result<File> {
    let path = root.join(LOCK_FILE);
    let io = |source| StoreError::Io {
        dir: root.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let pid = match holder.trim() {
                "" => String::new(),
                p => format!(" (pid {p})"),
            };
            return Err(StoreError::InUse {
                dir: root.to_path_buf(),
                pid,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    write!(file, "{}", std::process::id()).map_err(io)?;
    Ok(file)
}

fn installation_id(root: &Path) -> std::io::Result<Uuid> {
    let path = root.join(ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => Uuid::parse_str(s.trim()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is damaged ({e}); restore it from a backup of the folder",
                    path.display()
                ),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = Uuid::new_v4();
            write_atomic(&path, id.to_string().as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

fn remove_stale_store_dirs(root: &Path, current: &str) -> std::io::Result<()> {
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(STORE_PREFIX) && name != current && entry.file_type()?.is_dir() {
            tracing::info!(folder = %name, "removing a store folder left by an interrupted restore");
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

/// Writes a small file so that readers see the old or the new content, never a mix.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename is the commit: from here on readers see the new file. A failed folder sync
    // leaves it visible but perhaps not yet on disk after a power cut; reporting that as a
    // failure would make the caller act as if the old file were still current (after a
    // restore: keep writing to a store the next start no longer opens).
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(path = %path.display(), "written, but the folder sync failed: {e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
    struct Note {
        text: String,
        stars: u32,
    }
    impl Record for Note {
        const TREE: &'static str = "note_by_id";
        const VERSION: u16 = 2;
        fn upgrade(version: u16, json: &[u8]) -> std::result::Result<Self, String> {
            #[derive(Deserialize)]
            struct V1 {
                text: String,
            }
            match version {
                1 => {
                    let v1: V1 = serde_json::from_slice(json).map_err(|e| e.to_string())?;
                    Ok(Note {
                        text: v1.text,
                        stars: 0,
                    })
                }
                v => Err(format!("unknown version {v}")),
            }
        }
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
    struct Counter {
        n: u64,
    }
    impl Record for Counter {
        const TREE: &'static str = "counter_by_name";
    }

    fn note(text: &str) -> Note {
        Note {
            text: text.into(),
            stars: 1,
        }
    }

    #[test]
    fn put_get_list_delete_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id;
        {
            let s = Store::open(dir.path()).expect("open");
            id = s.installation_id();
            s.put("b", &note("second")).expect("put");
            s.put("a", &note("first")).expect("put");
            assert_eq!(s.get::<Note>("a").expect("get"), Some(note("first")));
            assert!(s.delete::<Note>("b").expect("delete"));
            assert!(!s.delete::<Note>("b").expect("delete again"));
        }
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(s.installation_id(), id, "installation id is stable");
        assert_eq!(
            s.list::<Note>().expect("list"),
            vec![("a".into(), note("first"))]
        );
        assert_eq!(s.schema_version().expect("schema"), SCHEMA_VERSION);
    }

    #[test]
    fn ranges_read_and_delete_between_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        for key in ["p1/01", "p1/02", "p1/03", "p2/01"] {
            s.put(key, &note(key)).expect("put");
        }
        let keys = |v: Vec<(String, Note)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(s.range::<Note>("p1/02", "p1/~", false, 10).expect("range")),
            ["p1/02", "p1/03"]
        );
        assert_eq!(
            keys(s.range::<Note>("p1/", "p1/~", true, 2).expect("range")),
            ["p1/03", "p1/02"]
        );
        assert_eq!(
            s.first_key_from::<Note>("p10").expect("first").as_deref(),
            Some("p2/01")
        );
        assert_eq!(s.delete_range::<Note>("p1/", "p1/03").expect("delete"), 2);
        assert_eq!(keys(s.list::<Note>().expect("list")), ["p1/03", "p2/01"]);
        assert_eq!(s.first_key_from::<Note>("q").expect("first"), None);
    }

    #[test]
    fn older_value_versions_are_upgraded_and_newer_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        let mut v1 = 1u16.to_le_bytes().to_vec();
        v1.extend_from_slice(br#"{"text":"old"}"#);
        let mut v9 = 9u16.to_le_bytes().to_vec();
        v9.extend_from_slice(br#"{"text":"future","stars":1}"#);
        {
            let engine = s.read();
            let tree = engine.tree(Note::TREE).expect("tree");
            tree.insert("old", v1).expect("raw insert");
            tree.insert("new", v9).expect("raw insert");
        }
        assert_eq!(
            s.get::<Note>("old").expect("upgraded"),
            Some(Note {
                text: "old".into(),
                stars: 0
            })
        );
        let err = s.get::<Note>("new").expect_err("newer refused");
        assert!(err.to_string().contains("newer"), "{err}");
    }

    #[test]
    fn second_opener_is_told_the_folder_is_in_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = Store::open(dir.path()).expect("open");
        let err = Store::open(dir.path()).expect_err("locked");
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("in use"), "{err}");
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = Store::open(dir.path()).expect("open");
            let engine = s.read();
            engine
                .tree(META_TREE)
                .expect("meta")
                .insert(SCHEMA_KEY, &(SCHEMA_VERSION + 1).to_le_bytes())
                .expect("insert");
            engine.flush().expect("flush");
        }
        let err = Store::open(dir.path()).expect_err("refused");
        assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err}");
    }

    #[test]
    fn transaction_commits_all_or_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        s.transact::<_, String, _>(&[Note::TREE, Counter::TREE], |tx| {
            tx.put("n1", &note("one"))?;
            tx.put("c", &Counter { n: 1 })?;
            Ok(())
        })
        .expect("committed");
        let aborted = s.transact::<(), String, _>(&[Note::TREE, Counter::TREE], |tx| {
            tx.put("n2", &note("two"))?;
            tx.put("c", &Counter { n: 2 })?;
            Err(TxError::Abort("changed my mind".to_string()))
        });
        assert!(matches!(aborted, Err(TxError::Abort(ref m)) if m == "changed my mind"));
        assert_eq!(s.get::<Note>("n2").expect("get"), None);
        assert_eq!(s.get::<Counter>("c").expect("get"), Some(Counter { n: 1 }));
        let unnamed = s.transact::<(), String, _>(&[Note::TREE], |tx| {
            tx.put("c", &Counter { n: 3 })?;
            Ok(())
        });
        assert!(matches!(unnamed, Err(TxError::Store(_))));
    }

    #[test]
    fn concurrent_increments_in_transactions_lose_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        s.transact::<_, String, _>(&[Counter::TREE], |tx| {
                            let c = tx.get::<Counter, String>("c")?.unwrap_or_default();
                            tx.put("c", &Counter { n: c.n + 1 })
                        })
                        .expect("committed");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(
            s.get::<Counter>("c").expect("get"),
            Some(Counter { n: 100 })
        );
    }

    #[test]
    fn export_and_replace_all_swap_the_whole_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        s.put("keep", &note("in snapshot")).expect("put");
        let snapshot = s.export_records().expect("export");
        s.put("later", &note("after snapshot")).expect("put");
        s.delete::<Note>("keep").expect("delete");
        s.replace_all(&snapshot).expect("replace");
        assert_eq!(
            s.get::<Note>("keep").expect("get"),
            Some(note("in snapshot"))
        );
        assert_eq!(s.get::<Note>("later").expect("get"), None);
        drop(s);
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(
            s.get::<Note>("keep").expect("get"),
            Some(note("in snapshot"))
        );
        let dirs: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(STORE_PREFIX))
            .collect();
        assert_eq!(dirs.len(), 1, "the old store folder is gone");
    }

    #[test]
    fn lazy_puts_are_readable_at_once_and_kept_on_a_clean_close() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = Store::open(dir.path()).expect("open");
            s.put_lazy("seen", &note("later")).expect("put");
            assert_eq!(s.get::<Note>("seen").expect("get"), Some(note("later")));
        }
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(s.get::<Note>("seen").expect("get"), Some(note("later")));
    }

    #[test]
    fn next_keys_sort_in_creation_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        let keys: Vec<String> = (0..50).map(|_| s.next_key().expect("key")).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }
}
