//! CORS: which browser origins may call the API, and the headers that say so.
//!
//! Off unless `[cors] allow_origins` lists origins (or `"*"`). When on, preflight
//! `OPTIONS` requests are answered without a token, and every response, errors included,
//! carries `Access-Control-Allow-Origin` for an allowed origin. Pure: headers in, headers out.

/// Request headers a browser client may send: what the OpenAI JS SDK and GUI clients use.
fn header_allowed(name: &str) -> bool {
    let name = name.trim().to_ascii_lowercase();
    matches!(name.as_str(), "authorization" | "content-type" | "x-api-key" | "accept" | "x-requested-with")
        || name.starts_with("x-stainless-")
        || name.starts_with("openai-")
        || name.starts_with("anthropic-")
}

/// The CORS headers for a response to a request from `origin`; `preflight` holds the
/// `Access-Control-Request-Headers` of an `OPTIONS` preflight (`Some("")` when it has none).
pub fn headers(
    allow_origins: &[String],
    origin: Option<&str>,
    preflight: Option<&str>,
) -> Vec<(&'static str, String)> {
    let Some(origin) = origin else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if allow_origins.iter().any(|o| o == "*") {
        out.push(("Access-Control-Allow-Origin", "*".to_string()));
    } else if allow_origins.iter().any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin)) {
        out.push(("Access-Control-Allow-Origin", origin.to_string()));
        out.push(("Vary", "Origin".to_string()));
    } else {
        return Vec::new();
    }
    out.push(("Access-Control-Expose-Headers", "X-Request-Id, Retry-After".to_string()));
    if let Some(requested) = preflight {
        let mut allowed: Vec<&str> =
            requested.split(',').map(str::trim).filter(|h| header_allowed(h)).collect();
        if allowed.is_empty() {
            allowed = vec!["authorization", "content-type"];
        }
        out.push(("Access-Control-Allow-Methods", "GET, POST, OPTIONS".to_string()));
        out.push(("Access-Control-Allow-Headers", allowed.join(", ")));
        out.push(("Access-Control-Max-Age", "86400".to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn off_by_default_and_for_unlisted_origins() {
        assert!(headers(&[], Some("https://a.example"), None).is_empty());
        let listed = vec!["https://a.example".to_string()];
        assert!(headers(&listed, Some("https://evil.example"), Some("authorization")).is_empty());
        assert!(headers(&listed, None, None).is_empty(), "no Origin, not a browser");
    }

    #[test]
    fn a_listed_origin_is_echoed_with_vary() {
        let listed = vec!["https://a.example/".to_string()];
        let out = headers(&listed, Some("https://a.example"), None);
        assert_eq!(get(&out, "Access-Control-Allow-Origin"), Some("https://a.example"));
        assert_eq!(get(&out, "Vary"), Some("Origin"));
        assert_eq!(get(&out, "Access-Control-Allow-Methods"), None, "only preflights get methods");
    }

    #[test]
    fn preflights_allow_the_sdk_headers_and_nothing_else() {
        let any = vec!["*".to_string()];
        let requested = "Authorization, Content-Type, X-Stainless-OS, x-stainless-retry-count, cookie";
        let out = headers(&any, Some("http://localhost:3000"), Some(requested));
        assert_eq!(get(&out, "Access-Control-Allow-Origin"), Some("*"));
        assert_eq!(
            get(&out, "Access-Control-Allow-Headers"),
            Some("Authorization, Content-Type, X-Stainless-OS, x-stainless-retry-count")
        );
        assert!(get(&out, "Access-Control-Allow-Methods").is_some_and(|m| m.contains("POST")));
        assert_eq!(get(&out, "Access-Control-Max-Age"), Some("86400"));
    }

    #[test]
    fn preflights_allow_the_anthropic_sdk_headers() {
        let any = vec!["*".to_string()];
        let requested = "x-api-key,anthropic-version,anthropic-dangerous-direct-browser-access,content-type";
        let out = headers(&any, Some("http://localhost:3000"), Some(requested));
        assert_eq!(
            get(&out, "Access-Control-Allow-Headers"),
            Some("x-api-key, anthropic-version, anthropic-dangerous-direct-browser-access, content-type")
        );
    }
}
