//! A throwaway OpenLDAP server for the tests: Debian's `slapd` on free loopback ports
//! (`ldap://` with StartTLS and `ldaps://` with a certificate from a generated CA, each on
//! 127.0.0.1 and on ::1 with the same port, and an `ldapi://` socket the fixture itself uses),
//! the memberOf overlay, the ppolicy schema, users loaded with `slapadd` before start and groups
//! added over LDAP after start (the memberOf overlay does not fire for `slapadd`). Killed on
//! `Drop`.
//!
//! The directory (base `dc=example,dc=com`):
//! - `ou=people`: alice (groups staff, admins; staff is inside all-staff), bob (staff), carol
//!   (no group), dave (`shadowExpire: 1`, expired), erin (`pwdAccountLockedTime`, locked),
//!   `o*brien` (a login with a filter metacharacter); password of each: `<uid>-pw`.
//! - `ou=services`: `cn=search` ([`SEARCH_DN`] / [`SEARCH_PASSWORD`]).
//! - `ou=branch`: bea, and `ou=remote`, a referral to `ou=hidden` on the same server, where zed
//!   lives; a subtree search from the root therefore returns a continuation reference, as
//!   Active Directory's do.
//! - The schema also has Active Directory's `userPrincipalName` attribute (no entry holds it
//!   until a test adds it, with the `extensibleObject` class).
//! - `ou=ad` ([`AD_BASE`], served as Active Directory by [`Slapd::ad_auth_server`]): entries
//!   shaped as Active Directory's, with its attribute and class names and OIDs (`user`,
//!   `group`, `sAMAccountName`, `objectSid`, `primaryGroupID`, `userAccountControl`,
//!   `objectCategory`). ada (objectSid [`AD_DOMAIN_SID`]-1105, primaryGroupID 513, `memberOf`
//!   only Engineers) and ned (no objectSid or primaryGroupID, `memberOf` Engineers); groups
//!   `cn=Domain Users` (objectSid [`AD_DOMAIN_SID`]-513, no `member`: Active Directory lists
//!   nobody's primary group there) and `cn=Engineers`. All loaded with slapadd, `memberOf`
//!   included, since Active Directory maintains `memberOf` itself and the memberOf overlay here
//!   only tracks `groupOfNames`. Passwords as above (`ada-pw`, `ned-pw`).
//! - `SlapdOptions::generated_users`: `user00001` … with password [`GENERATED_PASSWORD`], all in
//!   group `cn=generated`.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use gatehouse::model::directory::{AuthServer, DirectoryKind, HostPort, Security};

pub const BASE: &str = "dc=example,dc=com";
pub const ROOT_DN: &str = "cn=admin,dc=example,dc=com";
pub const ROOT_PASSWORD: &str = "root-secret";
pub const SEARCH_DN: &str = "cn=search,ou=services,dc=example,dc=com";
pub const SEARCH_PASSWORD: &str = "search-secret";
pub const GENERATED_PASSWORD: &str = "generated-pw";
/// Where the Active Directory-like entries live.
pub const AD_BASE: &str = "ou=ad,dc=example,dc=com";
/// The domain part of the SIDs under [`AD_BASE`]; an account's SID adds its RID.
pub const AD_DOMAIN_SID: &str = "S-1-5-21-111-222-333";

/// The password of a fixture user.
pub fn password_of(uid: &str) -> String {
    format!("{uid}-pw")
}

#[derive(Debug, Clone, Default)]
pub struct SlapdOptions {
    /// Extra users `user00001` …, loaded with slapadd (fast: thousands per second).
    pub generated_users: usize,
    /// Refuse simple binds without TLS, as Active Directory does on port 389.
    pub require_tls_for_binds: bool,
}

pub struct Slapd {
    dir: tempfile::TempDir,
    child: Child,
    pub ldap_port: u16,
    pub ldaps_port: u16,
    ca_pem: String,
    log: Arc<Mutex<String>>,
}

impl Slapd {
    /// The standard directory.
    pub fn start() -> Slapd {
        Slapd::start_with(&SlapdOptions::default())
    }

    pub fn start_with(options: &SlapdOptions) -> Slapd {
        let slapd = slapd_binary();
        let mut last_error = String::new();
        // A free port can be taken between choosing it and slapd binding it: try again.
        for _ in 0..3 {
            match Slapd::try_start(&slapd, options) {
                Ok(s) => return s,
                Err(e) => last_error = e,
            }
        }
        panic!("slapd did not start: {last_error}");
    }

    fn try_start(slapd: &Path, options: &SlapdOptions) -> Result<Slapd, String> {
        let dir = tempfile::Builder::new()
            .prefix("slapd")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let ldap_port = free_port();
        let ldaps_port = free_port();
        let ca_pem = write_certificates(dir.path());
        std::fs::create_dir(dir.path().join("data")).map_err(|e| e.to_string())?;
        let conf = dir.path().join("slapd.conf");
        std::fs::write(&conf, slapd_conf(dir.path(), options)).map_err(|e| e.to_string())?;

        let ldif = dir.path().join("users.ldif");
        std::fs::write(&ldif, users_ldif(ldap_port, options.generated_users))
            .map_err(|e| e.to_string())?;
        let out = Command::new(slapd.with_file_name("slapadd"))
            .arg("-q")
            .arg("-f")
            .arg(&conf)
            .arg("-l")
            .arg(&ldif)
            .output()
            .map_err(|e| format!("slapadd: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "slapadd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }

        let urls = format!(
            "ldap://127.0.0.1:{ldap_port}/ ldaps://127.0.0.1:{ldaps_port}/ \
             ldap://[::1]:{ldap_port}/ ldaps://[::1]:{ldaps_port}/ {}",
            ldapi_url(dir.path())
        );
        let mut child = Command::new(slapd)
            .arg("-f")
            .arg(&conf)
            .arg("-h")
            .arg(&urls)
            // Foreground, logging only what is always logged (start, stop, fatal errors).
            .arg("-d")
            .arg("none")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", slapd.display()))?;

        // slapd says "slapd starting" once its listeners are bound; it exits on failure.
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let started = line.contains("slapd starting");
                if let Ok(mut log) = sink.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
                if started {
                    let _ = tx.send(());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(()) => {}
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = log.lock().map(|l| l.clone()).unwrap_or_default();
                return Err(format!("slapd did not start:\n{log}"));
            }
        }
        let slapd = Slapd {
            dir,
            child,
            ldap_port,
            ldaps_port,
            ca_pem,
            log,
        };
        // The sockets are bound before "slapd starting" but listen a moment later, in the
        // daemon thread: try connecting until both accept (a refused connect returns at once,
        // so this is bounded by a deadline rather than a count).
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let mut ready = false;
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", ldap_port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", ldaps_port)).is_ok()
            {
                ready = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if !ready {
            return Err(format!("slapd's ports do not answer:\n{}", slapd.log()));
        }
        slapd.add_ldif(&groups_ldif(options.generated_users));
        Ok(slapd)
    }

    /// The CA certificate (PEM) that signed the server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Adds entries as the root DN (over the ldapi socket, so it works whatever the bind
    /// rules).
    pub fn add_ldif(&self, ldif: &str) {
        self.ldap_tool("ldapadd", ldif);
    }

    /// Applies an LDIF of changes (`changetype: modify` …) as the root DN.
    pub fn modify_ldif(&self, ldif: &str) {
        self.ldap_tool("ldapmodify", ldif);
    }

    fn ldap_tool(&self, tool: &str, ldif: &str) {
        if ldif.trim().is_empty() {
            return;
        }
        let mut child = Command::new(tool)
            .args(["-x", "-H", &ldapi_url(self.dir.path()), "-D", ROOT_DN, "-w"])
            .arg(ROOT_PASSWORD)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{tool} (from ldap-utils) runs: {e}"));
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(ldif.as_bytes())
            .expect("ldif written");
        let out = child.wait_with_output().expect("tool finishes");
        assert!(
            out.status.success(),
            "{tool} failed: {}\n{ldif}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Freezes the directory (SIGSTOP): connections stay open but nothing answers. Returns
    /// once every thread of it has stopped: the signal is delivered asynchronously, and a
    /// thread still running could answer one more request.
    pub fn pause(&self) {
        signal(self.pid(), "-STOP");
        self.wait_for_threads(true);
    }

    /// Thaws the directory (SIGCONT) and returns once every thread of it runs again.
    pub fn resume(&self) {
        signal(self.pid(), "-CONT");
        self.wait_for_threads(false);
    }

    /// Waits until every thread of slapd is stopped (`stopped`) or none is, read from
    /// `/proc/PID/task/*/stat`.
    fn wait_for_threads(&self, stopped: bool) {
        let tasks = PathBuf::from(format!("/proc/{}/task", self.pid()));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let states: Vec<char> = std::fs::read_dir(&tasks)
                .expect("slapd's /proc entry")
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("stat")).ok())
                // The state follows the command name, which is in parentheses.
                .filter_map(|stat| stat.rsplit_once(") ")?.1.chars().next())
                .collect();
            let all =
                !states.is_empty() && states.iter().all(|s| matches!(s, 'T' | 't') == stopped);
            if all {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "slapd's threads did not {}: {states:?}",
                if stopped { "stop" } else { "run again" }
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// An authentication server pointing at this directory with `security`, verifying TLS
    /// against the fixture's CA.
    pub fn auth_server(&self, security: Security) -> AuthServer {
        let port = match security {
            Security::Ldaps => self.ldaps_port,
            Security::StartTls | Security::Plain => self.ldap_port,
        };
        AuthServer {
            id: "slapd".into(),
            name: "Test OpenLDAP".into(),
            domain: "EXAMPLE".into(),
            aliases: vec!["example.com".into()],
            hosts: vec![HostPort::new("127.0.0.1", port)],
            security,
            verify_tls: true,
            ca_cert_pem: Some(self.ca_pem.clone()),
            bind_dn: SEARCH_DN.into(),
            bind_password: SEARCH_PASSWORD.into(),
            base_dn: BASE.into(),
            connect_timeout_secs: 2,
            search_timeout_secs: 5,
            ..AuthServer::defaults_for(DirectoryKind::OpenLdap)
        }
    }

    /// An Active Directory server for the entries under [`AD_BASE`] (logins by
    /// `sAMAccountName`, groups from `memberOf`), otherwise as [`Slapd::auth_server`].
    pub fn ad_auth_server(&self, security: Security) -> AuthServer {
        AuthServer {
            id: "slapd-ad".into(),
            name: "Test Active Directory".into(),
            kind: DirectoryKind::ActiveDirectory,
            base_dn: AD_BASE.into(),
            login_attribute: "sAMAccountName".into(),
            group_attribute: "memberOf".into(),
            ..self.auth_server(security)
        }
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        signal(self.pid(), "-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(sig).arg(pid.to_string()).status();
}

/// Debian installs slapd in /usr/sbin, which is not on every PATH.
fn slapd_binary() -> PathBuf {
    for candidate in [
        "/usr/sbin/slapd",
        "/usr/local/sbin/slapd",
        "/usr/local/libexec/slapd",
    ] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!("slapd is not installed: run tests/run.sh (it installs slapd and ldap-utils)");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn ldapi_url(dir: &Path) -> String {
    let path = dir.join("ldapi").display().to_string();
    format!("ldapi://{}", path.replace('%', "%25").replace('/', "%2F"))
}

/// A CA that signed nothing this fixture serves: "the wrong CA".
pub fn other_ca_pem() -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Some Other CA");
    params.self_signed(&key).expect("cert").pem()
}

/// Makes a CA and a server certificate for localhost / 127.0.0.1 / ::1 signed by it (rustls refuses
/// a CA certificate used as a server's own); returns the CA's PEM.
fn write_certificates(dir: &Path) -> String {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Gatehouse Test LDAP CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
        .expect("ca certificate");

    let mut params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .expect("server params");
    params.is_ca = IsCa::ExplicitNoCa;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("server key");
    let cert = params.signed_by(&key, &ca).expect("server certificate");

    std::fs::write(dir.join("server.pem"), cert.pem()).expect("cert written");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("key written");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("ca written");
    ca.pem()
}

fn slapd_conf(dir: &Path, options: &SlapdOptions) -> String {
    let d = dir.display();
    let security = if options.require_tls_for_binds {
        // TLS gives a strength factor of 128 or more; ldapi counts as 71.
        "security simple_bind=71\n"
    } else {
        ""
    };
    format!(
        "include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
attributetype ( 1.2.840.113556.1.4.656 NAME 'userPrincipalName'
    DESC 'Active Directory user principal name, for userPrincipalName logins'
    EQUALITY caseIgnoreMatch
    SUBSTR caseIgnoreSubstringsMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.221 NAME 'sAMAccountName'
    DESC 'Active Directory logon name'
    EQUALITY caseIgnoreMatch
    SUBSTR caseIgnoreSubstringsMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.146 NAME 'objectSid'
    DESC 'Active Directory security identifier, binary'
    EQUALITY octetStringMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.98 NAME 'primaryGroupID'
    DESC 'Active Directory: RID of the primary group, which memberOf leaves out'
    EQUALITY integerMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.8 NAME 'userAccountControl'
    DESC 'Active Directory account flags (0x2: disabled)'
    EQUALITY integerMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
# In Active Directory objectCategory holds a DN (CN=Person,CN=Schema,CN=Configuration,...) and
# the server expands (objectCategory=person) to it. Here it is a plain string holding person,
# so the same filter matches the value stored.
attributetype ( 1.2.840.113556.1.4.782 NAME 'objectCategory'
    DESC 'Active Directory object category; here the short name, not the schema DN'
    EQUALITY caseIgnoreMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
objectclass ( 1.2.840.113556.1.5.9 NAME 'user'
    DESC 'Active Directory user'
    SUP organizationalPerson STRUCTURAL
    MUST sAMAccountName
    MAY ( objectSid $ primaryGroupID $ userAccountControl $ objectCategory $
          displayName $ mail $ userPrincipalName ) )
objectclass ( 1.2.840.113556.1.5.8 NAME 'group'
    DESC 'Active Directory group'
    SUP top STRUCTURAL
    MUST cn
    MAY ( member $ objectSid $ description ) )
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
moduleload refint
moduleload ppolicy
pidfile {d}/slapd.pid
argsfile {d}/slapd.args
TLSCACertificateFile {d}/ca.pem
TLSCertificateFile {d}/server.pem
TLSCertificateKeyFile {d}/server.key
{security}
database mdb
maxsize 268435456
suffix \"{BASE}\"
rootdn \"{ROOT_DN}\"
rootpw {ROOT_PASSWORD}
directory {d}/data
index objectClass eq
index uid eq
index cn eq
index member eq
index uniqueMember eq
index memberUid eq
index memberOf eq
access to attrs=userPassword
    by self write
    by anonymous auth
    by * none
access to *
    by * read
overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE
overlay ppolicy
"
    )
}

fn person(out: &mut String, uid: &str, ou_dn: &str, name: &str, extra: &str) {
    let _ = write!(
        out,
        "dn: uid={uid},{ou_dn}
objectClass: inetOrgPerson
objectClass: posixAccount
objectClass: shadowAccount
uid: {uid}
cn: {name}
sn: {name}
displayName: {name}
mail: {uid}@example.com
uidNumber: 1000
gidNumber: 1000
homeDirectory: /home/user
userPassword: {pw}
{extra}
",
        pw = password_of(uid)
    );
}

fn users_ldif(ldap_port: u16, generated: usize) -> String {
    let mut out = format!(
        "dn: {BASE}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=people,{BASE}
objectClass: organizationalUnit
ou: people

dn: ou=groups,{BASE}
objectClass: organizationalUnit
ou: groups

dn: ou=services,{BASE}
objectClass: organizationalUnit
ou: services

dn: {SEARCH_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: search
userPassword: {SEARCH_PASSWORD}

dn: ou=branch,{BASE}
objectClass: organizationalUnit
ou: branch

dn: ou=remote,ou=branch,{BASE}
objectClass: referral
objectClass: extensibleObject
ou: remote
ref: ldap://127.0.0.1:{ldap_port}/ou=hidden,{BASE}

dn: ou=hidden,{BASE}
objectClass: organizationalUnit
ou: hidden

"
    );
    let people = format!("ou=people,{BASE}");
    person(&mut out, "alice", &people, "Alice Liddell", "");
    person(&mut out, "bob", &people, "Bob Builder", "");
    person(&mut out, "carol", &people, "Carol Noguest", "");
    person(
        &mut out,
        "dave",
        &people,
        "Dave Expired",
        "shadowExpire: 1\n",
    );
    person(
        &mut out,
        "erin",
        &people,
        "Erin Locked",
        "pwdAccountLockedTime: 000001010000Z\n",
    );
    person(&mut out, "o*brien", &people, "Pat O Brien", "");
    person(
        &mut out,
        "bea",
        &format!("ou=branch,{BASE}"),
        "Bea Branch",
        "",
    );
    person(
        &mut out,
        "zed",
        &format!("ou=hidden,{BASE}"),
        "Zed Remote",
        "",
    );
    ad_ldif(&mut out);
    for i in 1..=generated {
        let _ = write!(
            out,
            "dn: uid=user{i:05},{people}
objectClass: inetOrgPerson
uid: user{i:05}
cn: User {i}
sn: {i}
userPassword: {GENERATED_PASSWORD}

"
        );
    }
    out
}

/// A SID of [`AD_DOMAIN_SID`] with `rid`, base64 for LDIF: revision 1, the number of
/// sub-authorities, authority 5 in 6 big-endian bytes, then 21, 111, 222, 333 and `rid` as
/// little-endian u32s.
fn ad_sid_base64(rid: u32) -> String {
    use base64::Engine as _;
    let mut sid = vec![1, 5, 0, 0, 0, 0, 0, 5];
    for sub in [21, 111, 222, 333, rid] {
        sid.extend_from_slice(&u32::to_le_bytes(sub));
    }
    base64::engine::general_purpose::STANDARD.encode(sid)
}

/// The Active Directory-like entries under [`AD_BASE`] (see the module documentation).
fn ad_ldif(out: &mut String) {
    let _ = write!(
        out,
        "dn: {AD_BASE}
objectClass: organizationalUnit
ou: ad

dn: cn=Ada Lovelace,{AD_BASE}
objectClass: user
cn: Ada Lovelace
sn: Lovelace
displayName: Ada Lovelace
sAMAccountName: ada
objectCategory: person
userAccountControl: 512
objectSid:: {ada_sid}
primaryGroupID: 513
memberOf: cn=Engineers,{AD_BASE}
userPassword: {ada_pw}

dn: cn=Ned Nosid,{AD_BASE}
objectClass: user
cn: Ned Nosid
sn: Nosid
sAMAccountName: ned
objectCategory: person
userAccountControl: 512
memberOf: cn=Engineers,{AD_BASE}
userPassword: {ned_pw}

dn: cn=Domain Users,{AD_BASE}
objectClass: group
cn: Domain Users
objectSid:: {domain_users_sid}

dn: cn=Engineers,{AD_BASE}
objectClass: group
cn: Engineers
objectSid:: {engineers_sid}
member: cn=Ada Lovelace,{AD_BASE}
member: cn=Ned Nosid,{AD_BASE}

",
        ada_sid = ad_sid_base64(1105),
        ada_pw = password_of("ada"),
        ned_pw = password_of("ned"),
        domain_users_sid = ad_sid_base64(513),
        engineers_sid = ad_sid_base64(1200),
    );
}

fn groups_ldif(generated: usize) -> String {
    let people = format!("ou=people,{BASE}");
    let mut out = format!(
        "dn: cn=staff,ou=groups,{BASE}
objectClass: groupOfNames
cn: staff
member: uid=alice,{people}
member: uid=bob,{people}

dn: cn=admins,ou=groups,{BASE}
objectClass: groupOfNames
cn: admins
member: uid=alice,{people}

dn: cn=all-staff,ou=groups,{BASE}
objectClass: groupOfNames
cn: all-staff
member: cn=staff,ou=groups,{BASE}

dn: cn=former,ou=groups,{BASE}
objectClass: groupOfNames
cn: former
member: uid=dave,{people}
member: uid=erin,{people}

"
    );
    if generated > 0 {
        let _ = writeln!(
            out,
            "dn: cn=generated,ou=groups,{BASE}\nobjectClass: groupOfNames\ncn: generated"
        );
        for i in 1..=generated {
            let _ = writeln!(out, "member: uid=user{i:05},{people}");
        }
        out.push('\n');
    }
    out
}
