//! Backups through the real CLI and console, bad snapshot files, and crash durability.

use std::collections::BTreeMap;
use std::path::Path;

use gatehouse::backup::{self, Record};
use sha2::{Digest, Sha256};

use crate::common::{self, Server};

const PASSWORD: &str = "Gatehouse-Test-42!";

fn path(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// SHA-256 of every file under `dir`, by relative path: "byte-for-byte unchanged" made checkable.
fn tree_hash(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let bytes = std::fs::read(&p).expect("read file");
                let rel = p.strip_prefix(root).expect("prefix").display().to_string();
                out.insert(rel, hex::encode(Sha256::digest(&bytes)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// A data folder that went through the wizard and has some history.
async fn prepared(data: &Path) {
    let server = Server::start(data, None);
    let mut c = server.console();
    c.complete_wizard(PASSWORD, None).await;
    c.get("/admin/system/audit").await;
}

fn export(data: &Path, out: &Path, passphrase_file: Option<&Path>) -> (bool, String, String) {
    let mut args = vec!["backup", "export", "--data", path(data), "--out", path(out)];
    if let Some(p) = passphrase_file {
        args.extend_from_slice(&["--passphrase-file", path(p)]);
    }
    common::run(&args)
}

fn import(data: &Path, input: &Path, passphrase_file: Option<&Path>) -> (bool, String, String) {
    let mut args = vec![
        "backup",
        "import",
        "--data",
        path(data),
        "--in",
        path(input),
    ];
    if let Some(p) = passphrase_file {
        args.extend_from_slice(&["--passphrase-file", path(p)]);
    }
    common::run(&args)
}

fn records(file: &Path, passphrase: Option<&str>) -> Vec<Record> {
    let bytes = std::fs::read(file).expect("snapshot");
    backup::decode(&bytes, passphrase).expect("decodes").1
}

/// The records that are not audit lines: what a restore must bring back exactly.
fn content(records: &[Record]) -> Vec<&Record> {
    records
        .iter()
        .filter(|r| r.tree != "audit_by_time")
        .collect()
}

#[tokio::test]
async fn export_change_import_brings_everything_back() {
    let (dir, data) = common::fresh_data();
    prepared(&data).await;
    let code = common::installation_code(&data);
    let snapshot = dir.path().join("before.ghbak");
    let (ok, out, err) = export(&data, &snapshot, None);
    assert!(ok, "{err}");
    assert!(out.contains("Exported"), "{out}");
    let before = records(&snapshot, None);

    // Change things: a new password (and more audit lines).
    {
        let server = Server::start(&data, None);
        let mut c = server.console();
        c.sign_in("admin", PASSWORD).await;
        c.get("/admin/me").await;
        let a = c
            .post(
                "/admin/me/password",
                &[
                    ("current", PASSWORD),
                    ("password", "Changed-Pass-55!"),
                    ("confirm", "Changed-Pass-55!"),
                ],
            )
            .await;
        assert_eq!(a.status, 200);
    }
    let (ok, out, err) = import(&data, &snapshot, None);
    assert!(ok, "{err}");
    assert!(out.contains("Imported"), "{out}");

    // Everything is as it was: all records equal, every earlier audit line present.
    let after_file = dir.path().join("after.ghbak");
    assert!(export(&data, &after_file, None).0);
    let after = records(&after_file, None);
    assert_eq!(content(&after), content(&before));
    for r in before.iter().filter(|r| r.tree == "audit_by_time") {
        assert!(after.contains(r), "audit line kept");
    }
    assert!(after.iter().any(|r| r.tree == "audit_by_time"
        && String::from_utf8_lossy(&r.value).contains("backup.imported")));
    assert_eq!(
        common::installation_code(&data),
        code,
        "a restore keeps the installation code"
    );
    let server = Server::start(&data, None);
    assert_eq!(
        server.console().sign_in("admin", PASSWORD).await.status,
        303
    );
    assert_eq!(
        server
            .console()
            .sign_in("admin", "Changed-Pass-55!")
            .await
            .status,
        401
    );
    drop(server);

    // Restored onto another installation, the data moves but that installation keeps its code.
    let (_other_dir, other) = common::fresh_data();
    drop(Server::start(&other, None));
    let other_code = common::installation_code(&other);
    assert_ne!(other_code, code);
    let (ok, _, err) = import(&other, &snapshot, None);
    assert!(ok, "{err}");
    assert_eq!(common::installation_code(&other), other_code);
    let server = Server::start(&other, None);
    assert_eq!(
        server.console().sign_in("admin", PASSWORD).await.status,
        303
    );
}

#[tokio::test]
async fn bad_snapshot_files_are_refused_and_the_store_is_untouched() {
    let (dir, data) = common::fresh_data();
    prepared(&data).await;
    let good = dir.path().join("good.ghbak");
    let pass = dir.path().join("pass.txt");
    std::fs::write(&pass, "correct horse battery staple\n").expect("passphrase");
    let wrong = dir.path().join("wrong.txt");
    std::fs::write(&wrong, "incorrect horse\n").expect("passphrase");
    assert!(export(&data, &good, Some(&pass)).0);
    let bytes = std::fs::read(&good).expect("read");

    let truncated = dir.path().join("truncated.ghbak");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let flipped = dir.path().join("flipped.ghbak");
    let mut f = bytes.clone();
    let mid = f.len() * 3 / 4;
    f[mid] ^= 0x01;
    std::fs::write(&flipped, &f).expect("write");
    let foreign = dir.path().join("foreign.ghbak");
    std::fs::write(&foreign, b"\x89PNG\r\n\x1a\n not a backup at all").expect("write");
    // Sound file, checksum and all, but one record written by a newer Gatehouse (its version
    // marker past what this one reads).
    let newer = dir.path().join("newer-record.ghbak");
    {
        let (meta, mut records) =
            backup::decode(&bytes, Some("correct horse battery staple")).expect("decode");
        let setup = records
            .iter_mut()
            .find(|r| r.tree == "settings" && r.key == b"setup")
            .expect("the setup record");
        setup.value[..2].copy_from_slice(&u16::MAX.to_le_bytes());
        let encoded =
            backup::encode(&meta, &records, Some("correct horse battery staple")).expect("encode");
        std::fs::write(&newer, encoded).expect("write");
    }

    let before = tree_hash(&data);
    let cases: [(&str, &Path, Option<&Path>, &str); 6] = [
        ("truncated", &truncated, Some(&pass), "truncated"),
        ("a newer record", &newer, Some(&pass), "cannot read"),
        ("flipped byte", &flipped, Some(&pass), "checksum"),
        ("other format", &foreign, None, "not a Gatehouse backup"),
        ("wrong passphrase", &good, Some(&wrong), "passphrase"),
        ("missing passphrase", &good, None, "passphrase"),
    ];
    for (what, file, pass, expect) in cases {
        let (ok, _, err) = import(&data, file, pass);
        assert!(!ok, "{what} must be refused");
        assert!(
            err.to_lowercase().contains(&expect.to_lowercase()),
            "{what}: expected {expect:?} in {err}"
        );
        assert!(err.contains("unchanged"), "{what}: {err}");
        assert_eq!(tree_hash(&data), before, "{what}: store changed");
    }
    // The good file with the right passphrase does import.
    let (ok, _, err) = import(&data, &good, Some(&pass));
    assert!(ok, "{err}");
}

#[tokio::test]
async fn newer_schema_is_refused_and_a_running_server_blocks_the_cli() {
    let (dir, data) = common::fresh_data();
    prepared(&data).await;
    let file = dir.path().join("current.ghbak");
    assert!(export(&data, &file, None).0);
    let (mut meta, recs) =
        backup::decode(&std::fs::read(&file).expect("read"), None).expect("decode");
    meta.schema_version = gatehouse::store::SCHEMA_VERSION + 1;
    let newer = dir.path().join("newer.ghbak");
    std::fs::write(&newer, backup::encode(&meta, &recs, None).expect("encode")).expect("write");
    let before = tree_hash(&data);
    let (ok, _, err) = import(&data, &newer, None);
    assert!(!ok);
    assert!(err.contains("newer"), "{err}");
    assert_eq!(tree_hash(&data), before);

    let _server = Server::start(&data, None);
    let (ok, _, err) = import(&data, &file, None);
    assert!(!ok);
    assert!(err.contains("in use by another Gatehouse process"), "{err}");
    let (ok, _, err) = export(&data, &dir.path().join("x.ghbak"), None);
    assert!(!ok);
    assert!(err.contains("in use"), "{err}");
}

#[tokio::test]
async fn console_export_and_import_round_trip() {
    let (dir, data) = common::fresh_data();
    let server = Server::start(&data, None);
    let mut c = server.console();
    c.complete_wizard(PASSWORD, None).await;
    c.get("/admin/system/backups").await;
    let resp = c
        .client
        .post(format!("{}/admin/system/backups/export", server.base))
        .form(&[
            ("csrf", c.csrf.as_str()),
            ("passphrase", "pass phrase 1"),
            ("confirm", "pass phrase 1"),
        ])
        .send()
        .await
        .expect("export");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-disposition"]
            .to_str()
            .expect("ascii")
            .contains(".ghbak")
    );
    let file = resp.bytes().await.expect("body").to_vec();
    let (meta, _) = backup::decode(&file, Some("pass phrase 1")).expect("valid encrypted snapshot");
    assert!(meta.encrypted);

    // A change, then the upload: checked first, confirmed second.
    c.get("/admin/me").await;
    c.post(
        "/admin/me/password",
        &[
            ("current", PASSWORD),
            ("password", "Changed-Pass-55!"),
            ("confirm", "Changed-Pass-55!"),
        ],
    )
    .await;
    c.get("/admin/system/backups").await;
    let a = c
        .post_multipart(
            "/admin/system/backups/import",
            &[("passphrase", "wrong")],
            &[("file", "b.ghbak", file.clone())],
        )
        .await;
    assert_eq!(a.status, 400);
    assert!(a.body.contains("passphrase"), "{}", a.body);
    let a = c
        .post_multipart(
            "/admin/system/backups/import",
            &[("passphrase", "pass phrase 1")],
            &[("file", "b.ghbak", file)],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("id=\"confirm-import\""));
    assert_eq!(
        server.console().sign_in("admin", PASSWORD).await.status,
        401,
        "nothing restored before the confirmation"
    );
    let id = a
        .body
        .split("name=\"id\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("pending id")
        .to_string();
    let a = c
        .post("/admin/system/backups/import/confirm", &[("id", &id)])
        .await;
    assert_eq!(
        (a.status, a.location.as_str()),
        (303, "/admin/system/backups"),
        "{}",
        a.body
    );
    assert_eq!(
        server.console().sign_in("admin", PASSWORD).await.status,
        303,
        "restored password works"
    );
    let audit = c.get("/admin/system/audit").await.body;
    assert!(audit.contains("backup.imported") && audit.contains("backup.refused"));
    let _ = dir;
}

#[tokio::test]
async fn scheduled_backup_runs_now_and_lists_the_file() {
    let (_dir, data) = common::fresh_data();
    let server = Server::start(&data, None);
    let mut c = server.console();
    c.complete_wizard(PASSWORD, None).await;
    c.get("/admin/system/jobs").await;
    let a = c
        .post("/admin/system/jobs/run", &[("name", "backup")])
        .await;
    assert_eq!(a.status, 303);
    let backups = data.join("backups");
    // The job runs in the background: wait for its file, bounded by the job table's word.
    let mut listed = String::new();
    for _ in 0..200 {
        listed = c.get("/admin/system/jobs").await.body;
        if listed.contains("ok: saved") {
            break;
        }
    }
    assert!(listed.contains("ok: saved"), "{listed}");
    let files: Vec<_> = std::fs::read_dir(&backups)
        .expect("backup folder")
        .flatten()
        .collect();
    assert_eq!(files.len(), 1);
    let name = files[0].file_name().to_string_lossy().into_owned();
    let page = c.get("/admin/system/backups").await;
    assert!(page.body.contains(&name));
    let resp = c
        .client
        .get(format!("{}/admin/system/backups/files/{name}", server.base))
        .send()
        .await
        .expect("download");
    assert_eq!(resp.status(), 200);
    let bytes = resp.bytes().await.expect("body");
    assert!(backup::decode(&bytes, None).is_ok());
    let traversal = c
        .get("/admin/system/backups/files/..%2Fgatehouse.lock")
        .await;
    assert_eq!(traversal.status, 404);
    let audit = c.get("/admin/system/audit").await.body;
    assert!(
        audit.contains("backup.downloaded") && audit.contains(&name),
        "a download exports everything: audited with the file's name"
    );
}

#[tokio::test]
async fn acknowledged_saves_survive_sigkill() {
    let (_dir, data) = common::fresh_data();
    let server = Server::start(&data, None);
    let mut c = server.console();
    c.complete_wizard(PASSWORD, None).await;
    c.get("/admin/me").await;
    let a = c
        .post(
            "/admin/me/password",
            &[
                ("current", PASSWORD),
                ("password", "After-Crash-Pass-1!"),
                ("confirm", "After-Crash-Pass-1!"),
            ],
        )
        .await;
    assert_eq!(a.status, 200, "saved and acknowledged");
    server.kill();

    let server = Server::start(&data, None);
    let mut c = server.console();
    let a = c.sign_in("admin", "After-Crash-Pass-1!").await;
    assert_eq!(
        (a.status, a.location.as_str()),
        (303, "/admin"),
        "the wizard and the new password survived"
    );
    let audit = c.get("/admin/system/audit").await.body;
    assert!(audit.contains("password.change"));
}
