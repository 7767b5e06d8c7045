//! A real browser walks the console: Debian's chromium, driven by chromedriver through
//! fantoccini, signs in with the factory password, goes through the first-run wizard (a refused
//! weak password first), looks at the dashboard (and saves a screenshot of it to
//! `tests/artifacts/dashboard.png`), signs out, signs in with the new password and sees the
//! factory password refused. The browser itself is `chrome::Chrome`'s; this module
//! must not touch the server's data folder other than through the console.

use std::path::PathBuf;

use fantoccini::{Client, Locator};

use crate::chrome::{
    Chrome, click, find, full_page_screenshot, path, text_of, type_into, where_am_i,
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
