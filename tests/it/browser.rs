//! A real browser walks the console: Debian's chromium, driven by chromedriver through
//! fantoccini, signs in with the factory password, goes through the first-run wizard (a refused
//! weak password first), looks at the dashboard (and saves a screenshot of it to
//! `tests/artifacts/dashboard.png`), signs out, signs in with the new password and sees the
//! factory password refused. The browser itself is `chrome::Chrome`'s; this module
//! must not touch the server's data folder other than through the console (and
//! `gatehouse setup` before the start).
//!
//! A second walk edits nested lists as row groups, with no script on the page: a pool with two
//! rules, and a policy with two pool entries put in another order with "Move up" / "Move
//! down"; Enter in a field saves rather than pressing a row's button (a screenshot is kept as
//! `tests/artifacts/policy_rows.png`).

use std::path::PathBuf;

use fantoccini::elements::Element;
use fantoccini::{Client, Locator};

use crate::chrome::{
    Chrome, choose, click, find, full_page_screenshot, link, path, text_of, type_into, where_am_i,
};
use crate::common;

const NEW_PASSWORD: &str = "Browser-Test-Pass-42!";

/// Fills the sign-in form (the console's or the portal's: the same ids) and submits it.
pub(crate) async fn sign_in(c: &Client, user: &str, password: &str) {
    type_into(c, "#username", user).await;
    type_into(c, "#password", password).await;
    click(c, "#sign-in").await;
}

/// Signs out of the console and lands on its sign-in page.
pub(crate) async fn sign_out(c: &Client) {
    click(c, "header form[action='/admin/logout'] button").await;
    // Only the sign-in page has the user name field.
    find(c, "#username").await;
    assert_eq!(path(c).await, "/admin/login", "{}", where_am_i(c).await);
}

/// The whole walk through the console, in a browser.
async fn walk(c: Client, base: String) {
    // Not signed in: the console sends the browser to the sign-in page.
    c.goto(&format!("{base}/admin"))
        .await
        .expect("open the console");
    find(&c, "#username").await;
    assert!(
        c.current_url()
            .await
            .expect("url")
            .as_str()
            .ends_with("/admin/login"),
        "{}",
        where_am_i(&c).await
    );

    // The factory password opens the wizard at step 1.
    sign_in(&c, "admin", "leo").await;
    find(&c, "#new-password").await;
    assert_eq!(path(&c).await, "/admin/wizard", "{}", where_am_i(&c).await);

    // A weak password is refused, with the reason shown.
    type_into(&c, "#new-password", "short").await;
    type_into(&c, "#confirm-password", "short").await;
    click(&c, "#save-password").await;
    let error = text_of(&c, "#error").await;
    assert!(
        error.contains("at least") && error.contains("characters"),
        "the refusal explains the length rule: {error:?}"
    );
    // Still on step 1.
    find(&c, "#new-password").await;

    type_into(&c, "#new-password", NEW_PASSWORD).await;
    type_into(&c, "#confirm-password", NEW_PASSWORD).await;
    click(&c, "#save-password").await;

    // Step 2: the licence; take the evaluation.
    let agree = find(&c, "#agree").await;
    agree.click().await.expect("tick the agreement");
    assert!(
        agree.is_selected().await.expect("checkbox state"),
        "the agreement is ticked"
    );
    click(&c, "#evaluate").await;

    // Step 3: keep the self-signed certificate.
    click(&c, "#keep-certificate").await;

    // Step 4: done.
    click(&c, "#finish").await;

    // The dashboard.
    find(&c, "#dashboard-facts").await;
    assert_eq!(path(&c).await, "/admin", "{}", where_am_i(&c).await);
    assert!(
        c.current_url()
            .await
            .expect("url")
            .as_str()
            .ends_with("/admin"),
        "{}",
        where_am_i(&c).await
    );
    let who = text_of(&c, "#signed-in-as").await;
    assert!(who.contains("admin"), "signed in as admin: {who:?}");
    let banner = text_of(&c, "#licence-banner").await;
    assert!(
        banner.contains("Evaluation"),
        "the evaluation banner: {banner:?}"
    );
    let facts = text_of(&c, "#dashboard-facts").await;
    assert!(!facts.trim().is_empty(), "the dashboard lists some facts");

    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/artifacts/dashboard.png");
    full_page_screenshot(&c, &shot).await;

    // Sign out, and back in with the new password.
    sign_out(&c).await;
    sign_in(&c, "admin", NEW_PASSWORD).await;
    find(&c, "#dashboard-facts").await;
    assert_eq!(path(&c).await, "/admin", "{}", where_am_i(&c).await);
    let who = text_of(&c, "#signed-in-as").await;
    assert!(who.contains("admin"), "signed in as admin again: {who:?}");

    // The factory password no longer opens the console.
    sign_out(&c).await;
    sign_in(&c, "admin", "leo").await;
    let error = text_of(&c, "#error").await;
    assert!(!error.trim().is_empty(), "the refusal is shown");
    assert_eq!(path(&c).await, "/admin/login", "{}", where_am_i(&c).await);
    assert!(
        c.find(Locator::Css("#signed-in-as")).await.is_err(),
        "not signed in after the factory password: {}",
        where_am_i(&c).await
    );
}

#[tokio::test]
async fn console_in_a_real_browser() {
    let (_dir, data) = common::fresh_data();
    let server = common::Server::start(&data, None);

    let health = common::client()
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(health.status().as_u16(), 200, "/healthz answers");

    let chrome = Chrome::start(None).await;
    let base = server.base.clone();
    chrome
        .with_session(
            || format!("server log:\n{}", server.logs()),
            |c| walk(c, base),
        )
        .await;
}

/// Clicks a button that submits a form and waits for the answer's page.
async fn click_and_wait(c: &Client, css: &str) {
    let old = find(c, "html").await;
    click(c, css).await;
    wait_for_new_page(c, old, css).await;
}

/// Waits (a bounded number of looks) until the page whose root element is `old` is gone: the
/// element goes stale once the next page has replaced it, so what is read next is the new
/// page's.
async fn wait_for_new_page(c: &Client, old: Element, what: &str) {
    for _ in 0..500 {
        if old.tag_name().await.is_err() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{what} did not lead to a new page {}", where_am_i(c).await);
}

/// The label of the option chosen in a `<select>`.
async fn chosen(c: &Client, select: &str) -> String {
    text_of(c, &format!("{select} option:checked")).await
}

async fn value_of(c: &Client, css: &str) -> String {
    find(c, css)
        .await
        .prop("value")
        .await
        .expect("value")
        .unwrap_or_default()
}

/// A pool with two rules and a policy with two entries, reordered, through the row buttons.
async fn edit_rows(c: Client, base: String) {
    c.goto(&format!("{base}/admin/login"))
        .await
        .expect("open the console");
    sign_in(&c, "admin", NEW_PASSWORD).await;
    find(&c, "#dashboard-facts").await;

    // A pool matching any of two rules; each "Add rule" shows the form again, as typed.
    c.goto(&format!("{base}/admin/configuration/pools/new"))
        .await
        .expect("new pool");
    type_into(&c, "input[name=name]", "Lab").await;
    choose(&c, "select[name=match_all]", "at least one rule (any)").await;
    click_and_wait(&c, "button[name=add_row][value=rules]").await;
    assert!(
        text_of(&c, "main p.notice").await.contains("Not saved yet"),
        "{}",
        where_am_i(&c).await
    );
    assert_eq!(value_of(&c, "input[name=name]").await, "Lab");
    choose(&c, "select[name='rules[0].attribute']", "Name").await;
    choose(&c, "select[name='rules[0].condition']", "begins with").await;
    type_into(&c, "input[name='rules[0].value']", "lab-").await;
    click_and_wait(&c, "button[name=add_row][value=rules]").await;
    assert_eq!(value_of(&c, "input[name='rules[0].value']").await, "lab-");
    choose(&c, "select[name='rules[1].attribute']", "Metadata key…").await;
    type_into(&c, "input[name='rules[1].metadata_key']", "dept").await;
    choose(&c, "select[name='rules[1].condition']", "equals").await;
    type_into(&c, "input[name='rules[1].value']", "eng").await;
    click_and_wait(&c, "form.resource button.save").await;
    assert_eq!(text_of(&c, "main p.notice").await, "Created.");
    c.goto(&format!("{base}/admin/configuration/pools/new"))
        .await
        .expect("new pool");
    type_into(&c, "input[name=name]", "Spare").await;
    click_and_wait(&c, "form.resource button.save").await;
    assert_eq!(text_of(&c, "main p.notice").await, "Created.");
    link(&c, "Lab").await.click().await.expect("open the pool");
    assert_eq!(
        chosen(&c, "select[name='rules[1].attribute']").await,
        "Metadata key…"
    );
    assert_eq!(
        value_of(&c, "input[name='rules[1].metadata_key']").await,
        "dept"
    );
    assert_eq!(
        chosen(&c, "select[name='rules[0].condition']").await,
        "begins with"
    );
    assert_eq!(
        chosen(&c, "select[name=match_all]").await,
        "at least one rule (any)"
    );

    // A policy offering Lab, then Spare; moved up, Spare comes first.
    c.goto(&format!("{base}/admin/configuration/policies/new"))
        .await
        .expect("new policy");
    type_into(&c, "input[name=name]", "Staff").await;
    click_and_wait(&c, "button[name=add_row][value=entries]").await;
    choose(&c, "select[name='entries[0].pool_id']", "Lab").await;
    click_and_wait(&c, "button[name=add_row][value=entries]").await;
    choose(&c, "select[name='entries[1].pool_id']", "Spare").await;
    type_into(&c, "input[name='entries[1].offer']", "2").await;
    click(&c, "input[name='entries[1].running_only']").await;
    click_and_wait(&c, "button[name=move_up][value='entries[1]']").await;
    assert_eq!(
        chosen(&c, "select[name='entries[0].pool_id']").await,
        "Spare"
    );
    assert_eq!(chosen(&c, "select[name='entries[1].pool_id']").await, "Lab");
    assert_eq!(value_of(&c, "input[name='entries[0].offer']").await, "2");
    assert!(
        find(&c, "input[name='entries[0].running_only']")
            .await
            .is_selected()
            .await
            .expect("checkbox state"),
        "the box ticked moves with its row"
    );
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/artifacts/policy_rows.png");
    full_page_screenshot(&c, &shot).await;
    click_and_wait(&c, "form.resource button.save").await;
    assert_eq!(text_of(&c, "main p.notice").await, "Created.");

    // Stored in that order; moved back down and saved with Enter in the name field.
    link(&c, "Staff")
        .await
        .click()
        .await
        .expect("open the policy");
    assert_eq!(
        chosen(&c, "select[name='entries[0].pool_id']").await,
        "Spare"
    );
    assert_eq!(chosen(&c, "select[name='entries[1].pool_id']").await, "Lab");
    click_and_wait(&c, "button[name=move_down][value='entries[0]']").await;
    assert_eq!(chosen(&c, "select[name='entries[0].pool_id']").await, "Lab");
    let old = find(&c, "html").await;
    find(&c, "input[name=name]")
        .await
        .send_keys("\u{E007}")
        .await
        .expect("press Enter");
    wait_for_new_page(&c, old, "Enter in the name field").await;
    assert_eq!(
        text_of(&c, "main p.notice").await,
        "Saved.",
        "{}",
        where_am_i(&c).await
    );
    link(&c, "Staff")
        .await
        .click()
        .await
        .expect("open the policy");
    assert_eq!(chosen(&c, "select[name='entries[0].pool_id']").await, "Lab");
    assert_eq!(
        chosen(&c, "select[name='entries[1].pool_id']").await,
        "Spare"
    );
    assert_eq!(value_of(&c, "input[name='entries[1].offer']").await, "2");
}

#[tokio::test]
async fn row_groups_in_a_real_browser() {
    let (_dir, data) = common::fresh_data();
    common::finish_setup(&data, NEW_PASSWORD);
    let server = common::Server::start(&data, None);
    let chrome = Chrome::start(None).await;
    let base = server.base.clone();
    chrome
        .with_session(
            || format!("server log:\n{}", server.logs()),
            |c| edit_rows(c, base),
        )
        .await;
}
