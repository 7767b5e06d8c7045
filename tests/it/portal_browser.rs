//! A real browser on the user portal: Debian's chromium, driven by chromedriver through
//! fantoccini (the `chrome` fixture).
//!
//! The first test starts from a library-seeded appliance (slapd, a pool, a policy, an
//! assignment): a directory user signs in, sees the offered desktop, clicks Connect and gets
//! the `.rdp` file downloaded into a folder of the test's, whose content is checked; then
//! releases the desktop and signs out.
//!
//! The second is the whole path through the browser: on an appliance that only went
//! through `gatehouse setup`, the administrator imports desktops from CSV, creates the
//! authentication server (and sees its connection test pass), a pool, a policy and the
//! server's assignment in the console; then a directory user signs in on the portal, sees the
//! desktop (a screenshot is kept as `tests/artifacts/portal.png`) and downloads its `.rdp`
//! file.
//!
//! This module owns the download folders; it changes the appliance only through the console
//! and the portal (and `gatehouse setup` before the start).

use std::path::{Path, PathBuf};

use fantoccini::{Client, Locator};
use gatehouse::model::directory::Security;

use crate::browser::{sign_in, sign_out};
use crate::chrome::{
    Chrome, choose, click, click_to_new_page, downloaded, find, full_page_screenshot, link, path,
    text_of, type_into, where_am_i,
};
use crate::common::{self, Server};
use crate::slapd::{GENERATED_PASSWORD, Slapd, SlapdOptions};

/// The portal walk on the library-seeded appliance.
async fn walk(c: Client, base: String, downloads: PathBuf) {
    c.goto(&format!("{base}/")).await.expect("open the portal");
    find(&c, "#portal-login-form").await;

    // A wrong password is refused with a clear sentence.
    type_into(&c, "#username", "user00001").await;
    type_into(&c, "#password", "not-it").await;
    click_to_new_page(&c, "#sign-in").await;
    let error = text_of(&c, "#error").await;
    assert_eq!(error, "Wrong user name or password.");

    type_into(&c, "#username", "user00001").await;
    type_into(&c, "#password", GENERATED_PASSWORD).await;
    click_to_new_page(&c, "#sign-in").await;
    let table = text_of(&c, "#desktops").await;
    assert!(table.contains("lab-000"), "{}", where_am_i(&c).await);
    let who = text_of(&c, "#signed-in-as").await;
    assert!(who.starts_with("Signed in as"), "{who:?}");

    // Connect: the browser saves the .rdp file.
    click(&c, "#desktops button.connect").await;
    let file = downloaded(&downloads, "lab-000.rdp").await;
    assert!(file.contains("full address:s:10.0.0.10:3389\r\n"), "{file}");
    assert!(file.contains("prompt for credentials:i:1"), "{file}");

    // The download left the page as it was; reloading shows the desktop as the user's, with
    // a Release button.
    c.goto(&format!("{base}/")).await.expect("reload");
    let table = text_of(&c, "#desktops").await;
    assert!(table.contains("(yours)"), "{}", where_am_i(&c).await);
    click_to_new_page(&c, "#desktops button.release").await;
    let notice = text_of(&c, "#notice").await;
    assert_eq!(notice, "lab-000 was released.");

    click_to_new_page(&c, "#sign-out").await;
    let notice = text_of(&c, "#notice").await;
    assert_eq!(notice, "You have signed out.");
    find(&c, "#portal-login-form").await;
}

#[tokio::test]
async fn portal_in_a_real_browser_downloads_the_rdp_file() {
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: 1,
        ..SlapdOptions::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let server = crate::portal::appliance(&slapd, dir.path(), 1);
    let downloads = dir.path().join("downloads");
    std::fs::create_dir(&downloads).expect("downloads folder");

    let chrome = Chrome::start(Some(&downloads)).await;
    let base = server.base.clone();
    chrome
        .with_session(
            || format!("server log:\n{}", server.logs()),
            |c| walk(c, base, downloads),
        )
        .await;
}

const ADMIN_PASSWORD: &str = "Portal-Browser-Pass-42";
/// The desktops imported through the console, as CSV.
const DESKTOPS_CSV: &str =
    "name,address,os\nlab-a,10.0.0.21,Windows 11\nlab-b,10.0.0.22,Windows 11\n";
const POOL: &str = "Lab";
const POLICY: &str = "Lab desktops";
/// The fixture's group of generated users, as the directory names it.
const GENERATED_DN: &str = "cn=generated,ou=groups,dc=example,dc=com";

/// An appliance that went only through `gatehouse setup` (admin password, evaluation,
/// self-signed certificate), started: nothing is configured yet.
fn set_up_appliance(dir: &Path) -> Server {
    let data = dir.join("data");
    let out = common::finish_setup(&data, ADMIN_PASSWORD);
    assert!(out.contains("Setup complete"), "{out}");
    Server::start(&data, None)
}

/// The notice of the page a form post landed on ("Created.", "Saved.", …).
async fn notice(c: &Client) -> String {
    text_of(c, "main p.notice").await
}

/// Presses the submit button of the page's resource form and waits for the next page (the
/// old page's root element goes stale once the browser has navigated).
async fn submit(c: &Client) {
    click_to_new_page(c, "form.resource button[type=submit]").await;
}

/// What the directory fixture says about itself, as typed into the console.
struct Directory {
    name: String,
    domain: String,
    hosts: String,
    ca_pem: String,
    bind_dn: String,
    bind_password: String,
    base_dn: String,
}

/// The administrator's part: desktops, authentication server, pool, policy, assignment.
async fn configure(c: &Client, base: &str, directory: &Directory) {
    c.goto(&format!("{base}/admin"))
        .await
        .expect("open the console");
    sign_in(c, "admin", ADMIN_PASSWORD).await;
    find(c, "#dashboard-facts").await;

    // Resources > Desktops: import two desktops from CSV text.
    c.goto(&format!("{base}/admin/resources/desktops"))
        .await
        .expect("desktops");
    type_into(c, "form.resource textarea[name=csv]", DESKTOPS_CSV).await;
    submit(c).await;
    assert_eq!(notice(c).await, "Imported.", "{}", where_am_i(c).await);
    let list = text_of(c, "table.list").await;
    assert!(
        list.contains("lab-a") && list.contains("10.0.0.21") && list.contains("lab-b"),
        "{list}"
    );

    // Setup > Authentication Servers: a new server for the directory.
    c.goto(&format!("{base}/admin/setup/auth-servers"))
        .await
        .expect("auth servers");
    click(c, "#new").await;
    type_into(c, "input[name=name]", &directory.name).await;
    choose(c, "select[name=kind]", "OpenLDAP").await;
    type_into(c, "input[name=domain]", &directory.domain).await;
    type_into(c, "textarea[name=hosts]", &directory.hosts).await;
    choose(c, "select[name=security]", "LDAPS").await;
    let verify = find(c, "input[name=verify_tls]").await;
    if !verify.is_selected().await.expect("checkbox state") {
        verify.click().await.expect("tick verify");
    }
    type_into(c, "textarea[name=ca_cert_pem]", &directory.ca_pem).await;
    type_into(c, "input[name=bind_dn]", &directory.bind_dn).await;
    type_into(c, "input[name=bind_password]", &directory.bind_password).await;
    type_into(c, "input[name=base_dn]", &directory.base_dn).await;
    submit(c).await;
    assert_eq!(notice(c).await, "Created.", "{}", where_am_i(c).await);

    // Its Test connection button: every step passes.
    link(c, &directory.name).await.click().await.expect("open");
    click(c, "form[action$='/test'] button").await;
    assert_eq!(
        notice(c).await,
        "Every step passed.",
        "{}",
        where_am_i(c).await
    );
    let steps = text_of(c, "table.list").await;
    assert!(
        steps.contains("passed") && !steps.contains("FAILED"),
        "{steps}"
    );

    // Configuration > Pools: a pool without rules holds every desktop.
    c.goto(&format!("{base}/admin/configuration/pools"))
        .await
        .expect("pools");
    click(c, "#new").await;
    type_into(c, "input[name=name]", POOL).await;
    submit(c).await;
    assert_eq!(notice(c).await, "Created.", "{}", where_am_i(c).await);
    let total = c
        .find(Locator::XPath(&format!(
            "//table[contains(@class,'list')]//tr[td/a[text()='{POOL}']]/td[3]"
        )))
        .await
        .expect("the pool's Total cell")
        .text()
        .await
        .expect("text");
    assert_eq!(total, "2", "both imported desktops are in the pool");
    let href = link(c, POOL)
        .await
        .attr("href")
        .await
        .expect("href")
        .expect("the pool's link");
    let pool_id = href
        .rsplit('/')
        .next()
        .expect("an id at the end")
        .to_string();
    assert!(!pool_id.is_empty(), "{href}");

    // Configuration > Policies: offer one desktop of that pool, by name.
    c.goto(&format!("{base}/admin/configuration/policies"))
        .await
        .expect("policies");
    click(c, "#new").await;
    type_into(c, "input[name=name]", POLICY).await;
    click(c, "button[name=add_row][value=entries]").await;
    choose(c, "select[name='entries[0].pool_id']", POOL).await;
    choose(c, "select[name='entries[0].order']", "By name").await;
    submit(c).await;
    assert_eq!(notice(c).await, "Created.", "{}", where_am_i(c).await);
    let list = text_of(c, "table.list").await;
    assert!(list.contains(POLICY) && list.contains(&pool_id), "{list}");

    // Configuration > Assignments: the directory's group `generated` gets role User and the
    // policy. The form offers the directory's groups to pick from, by DN, labelled with their
    // names; the row stores the DN.
    c.goto(&format!("{base}/admin/configuration/assignments"))
        .await
        .expect("assignments");
    link(c, &directory.name).await.click().await.expect("open");
    let help = text_of(c, "form.resource p.help").await;
    assert!(help.contains("group(s) found"), "{help}");
    click(c, "button[name=add_row][value=rows]").await;
    find(
        c,
        &format!("datalist#rows-group-list option[value='{GENERATED_DN}'][label='generated']"),
    )
    .await;
    type_into(c, "input[name='rows[0].group']", GENERATED_DN).await;
    choose(c, "select[name='rows[0].role_id']", "User").await;
    choose(c, "select[name='rows[0].policy_id']", POLICY).await;
    submit(c).await;
    assert_eq!(notice(c).await, "Saved.", "{}", where_am_i(c).await);
    assert_eq!(path(c).await, "/admin/configuration/assignments");
    let list = text_of(c, "table.list").await;
    assert!(list.contains(&directory.name), "{list}");

    sign_out(c).await;
}

/// The user's part on the portal: sign in, see the desktop, download its `.rdp` file.
async fn use_the_portal(c: &Client, base: &str, downloads: &Path) {
    c.goto(&format!("{base}/")).await.expect("open the portal");
    find(c, "#portal-login-form").await;
    sign_in(c, "user00001", GENERATED_PASSWORD).await;
    let table = text_of(c, "#desktops").await;
    assert!(
        table.contains("lab-a") && table.contains(POOL),
        "{}",
        where_am_i(c).await
    );
    assert!(
        !table.contains("lab-b"),
        "the policy offers one desktop: {table}"
    );
    let who = text_of(c, "#signed-in-as").await;
    // The directory's display name (cn) of user00001.
    assert_eq!(who, "Signed in as User 1");

    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/artifacts/portal.png");
    full_page_screenshot(c, &shot).await;

    click(c, "#desktops button.connect").await;
    let file = downloaded(downloads, "lab-a.rdp").await;
    assert!(file.contains("full address:s:10.0.0.21:3389\r\n"), "{file}");
    assert!(file.contains("username:s:user00001\r\n"), "{file}");
}

#[tokio::test]
async fn console_configures_and_portal_user_downloads_the_rdp_file() {
    let slapd = Slapd::start_with(&SlapdOptions {
        generated_users: 3,
        ..SlapdOptions::default()
    });
    let auth = slapd.auth_server(Security::Ldaps);
    let directory = Directory {
        name: auth.name.clone(),
        domain: auth.domain.clone(),
        hosts: auth
            .hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
        ca_pem: auth.ca_cert_pem.clone().expect("the fixture's CA"),
        bind_dn: auth.bind_dn.clone(),
        bind_password: auth.bind_password.clone(),
        base_dn: auth.base_dn.clone(),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = set_up_appliance(dir.path());
    let downloads = dir.path().join("downloads");
    std::fs::create_dir(&downloads).expect("downloads folder");

    let chrome = Chrome::start(Some(&downloads)).await;
    let base = server.base.clone();
    chrome
        .with_session(
            || format!("server log:\n{}", server.logs()),
            |c| async move {
                configure(&c, &base, &directory).await;
                use_the_portal(&c, &base, &downloads).await;
            },
        )
        .await;
}
