//! `GET /admin`: the status page, one self-contained HTML file (`admin_page.html`, its
//! CSS and script inline) that draws what the admin API answers; and the headers every
//! HTML page of the gateway is served with.
//!
//! In scope: the page's bytes and its security headers: a `Content-Security-Policy` that
//! allows the page's own inline style and script by their SHA-256 and nothing else
//! (`default-src 'none'`, `connect-src 'self'`), `X-Frame-Options: DENY`,
//! `Referrer-Policy: no-referrer`, `nosniff`, `no-store`; [`escape`] for pages written on
//! the server (`stats`). Out of scope: the data, which the page fetches from
//! `/admin/api/…` with the token it asks for (so the page itself holds none and is served
//! without a token), and the routes' checks (`api`).

use crate::http::Reply;
use crate::translate::embeddings::base64;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// The page, as built into the binary.
pub const ADMIN_PAGE: &str = include_str!("admin_page.html");

/// The largest the page may grow to: it is fetched every time the page is opened.
pub const MAX_PAGE_BYTES: usize = 40 * 1024;

/// The status page.
pub fn admin() -> Reply {
    static CSP: OnceLock<String> = OnceLock::new();
    let csp = CSP.get_or_init(|| {
        // The page is ours and a unit test holds it to one of each; were either missing,
        // the policy would allow none, and the page would show its login form only.
        let style = inline(ADMIN_PAGE, "<style>", "</style>").unwrap_or_default();
        let script = inline(ADMIN_PAGE, "<script>", "</script>").unwrap_or_default();
        policy(Some(script), Some(style))
    });
    html(200, ADMIN_PAGE.as_bytes().to_vec(), csp)
}

/// An HTML answer with the headers every page of the gateway has, under policy `csp`.
pub fn html(status: u16, body: Vec<u8>, csp: &str) -> Reply {
    Reply::Full {
        status,
        body,
        headers: vec![
            ("Content-Type", "text/html; charset=utf-8".to_string()),
            ("Content-Security-Policy", csp.to_string()),
            ("X-Frame-Options", "DENY".to_string()),
            ("Referrer-Policy", "no-referrer".to_string()),
            ("X-Content-Type-Options", "nosniff".to_string()),
            ("Cache-Control", "no-store".to_string()),
        ],
    }
}

/// A policy that allows nothing but `script` and `style` (each inline, by its hash) and
/// requests back to the page's own origin.
pub fn policy(script: Option<&str>, style: Option<&str>) -> String {
    let source = |text: Option<&str>| text.map_or_else(|| "'none'".to_string(), hash_source);
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'",
        source(script),
        source(style)
    )
}

/// `text`'s CSP hash source, `'sha256-…'`: what a browser computes over an inline
/// element's content, byte for byte, to decide whether it may run.
fn hash_source(text: &str) -> String {
    format!("'sha256-{}'", base64(&Sha256::digest(text.as_bytes())))
}

/// The text between the first `open` tag and the `close` after it.
fn inline<'a>(page: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = page.find(open)? + open.len();
    let length = page[start..].find(close)?;
    Some(&page[start..start + length])
}

/// `text` with the five characters that mean something in HTML, text or attribute
/// values, written as entities.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csp_hashes_are_base64_of_sha256() {
        // The example of CSP Level 3, §8.3: `alert('Hello, world.');`.
        assert_eq!(
            hash_source("alert('Hello, world.');"),
            "'sha256-qznLcsROx4GACP2dm0UCKCzCG+HiZ1guq6ZZDob/Tng='"
        );
    }

    /// The page's rules: small, one inline style and one inline script (the policy allows
    /// exactly those), no inline handlers or style attributes (the policy would refuse
    /// them), nothing loaded from elsewhere, and data put in as text, never as markup.
    #[test]
    fn the_page_is_small_self_contained_and_writes_text_only() {
        let page = ADMIN_PAGE;
        assert!(page.len() < MAX_PAGE_BYTES, "{} bytes", page.len());
        assert_eq!((page.matches("<script").count(), page.matches("<style").count()), (1, 1));
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            " onclick=",
            " onload=",
            " style=",
            "http://",
            "https://",
            "//cdn",
            "src=",
            "localStorage",
        ] {
            // The SVG namespace is a name, not an address anything is fetched from.
            let rest = page.replace("http://www.w3.org/2000/svg", "");
            assert!(!rest.contains(banned), "the page holds {banned:?}");
        }
        let Reply::Full { status, body, headers } = admin() else { panic!("a stream") };
        assert_eq!((status, body.len()), (200, page.len()));
        let header = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
        let csp = header("Content-Security-Policy").expect("a policy");
        let script = inline(page, "<script>", "</script>").expect("the script");
        let style = inline(page, "<style>", "</style>").expect("the style");
        assert!(csp.starts_with("default-src 'none'; "), "{csp}");
        assert!(csp.contains(&format!("script-src {};", hash_source(script))), "{csp}");
        assert!(csp.contains(&format!("style-src {};", hash_source(style))), "{csp}");
        assert!(csp.contains("connect-src 'self'") && !csp.contains("unsafe"), "{csp}");
        assert_eq!(header("X-Frame-Options").as_deref(), Some("DENY"));
        assert_eq!(header("Referrer-Policy").as_deref(), Some("no-referrer"));
        assert_eq!(header("Content-Type").as_deref(), Some("text/html; charset=utf-8"));
    }

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            escape(r#"<img src=x onerror="alert('1')"> & co"#),
            "&lt;img src=x onerror=&quot;alert(&#39;1&#39;)&quot;&gt; &amp; co"
        );
        assert_eq!(escape("llama3.2:latest"), "llama3.2:latest");
    }

    #[test]
    fn a_page_without_a_script_allows_none() {
        let csp = policy(None, Some("p{}"));
        assert!(csp.contains("script-src 'none';") && csp.contains("style-src 'sha256-"), "{csp}");
    }
}
