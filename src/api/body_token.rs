//! A gateway token in the JSON body's top-level `api_key` field, as the FastAPI auth proxy
//! took it, and that field kept from upstream.
//!
//! With `allow_body_token = true`, a request whose head carries no token (no
//! `Authorization`, `x-api-key` or accepted `?api_key=`) is screened without one, and
//! checked on its body's `api_key` once `server` has read the body (bounded by
//! `max_body_bytes` like any other); [`may_carry`] says when. Whatever the setting, the field
//! is taken out of every authenticated request's body before it goes upstream ([`take`]):
//! the gateway's token is no business of the upstream's, and whoever runs it would see it.
//! Only that member goes; every other byte of the body stays as it was.
//!
//! In scope: finding, reading and removing the field. Out of scope: checking the token
//! (`auth`, through `api::admit`'s one path, lock-out included) and bodies that are not
//! one JSON object, which carry no body token and go on unchanged.

use crate::api::access::body;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::http::Req;

/// The field, as the FastAPI auth proxy named it.
pub const FIELD: &str = "api_key";

/// Whether `req`, whose head carries no token, may carry one in its body: the config allows
/// it, and the method sends a body.
pub fn may_carry(req: &Req, gateway: &Gateway) -> bool {
    gateway.config.raw.allow_body_token && !matches!(req.method.as_str(), "GET" | "HEAD")
}

/// Takes every top-level `api_key` out of `body`, and reads the token it held: `None` when
/// there is no such field (or `body` is no JSON object); the text when there is one and it
/// is a string; a 400 when it is something else, or there are several (which would be
/// ambiguous). The field is gone from `body` in every case but `None`.
///
/// Only a key written `"api_key"` is found: a body is parsed only when it holds those bytes,
/// so the bodies of other requests cost a scan for them, not a parse. A key spelt with
/// escapes (`"api\u005fkey"`) is neither a token nor removed.
pub fn take(body: &mut Vec<u8>) -> Option<Result<String, ApiError>> {
    const KEY_BYTES: &[u8] = b"\"api_key\"";
    body.windows(KEY_BYTES.len()).position(|window| window == KEY_BYTES)?;
    let removed = body::remove(body, FIELD).ok()??;
    let token = match removed.values.as_slice() {
        // Trimmed, as a header's token is.
        [one] => {
            serde_json::from_str::<String>(one.get()).map(|text| text.trim().to_string()).map_err(|_| {
                ApiError::bad_request("the body's api_key must be a string: your gateway token", Some(FIELD))
            })
        }
        several => Err(ApiError::bad_request(
            format!("the body names api_key {} times; send your gateway token once", several.len()),
            Some(FIELD),
        )),
    };
    *body = removed.body;
    Some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(body: &str) -> (Option<Result<String, u16>>, String) {
        let mut bytes = body.as_bytes().to_vec();
        let token = take(&mut bytes).map(|result| result.map_err(|error| error.status));
        (token, String::from_utf8(bytes).expect("UTF-8"))
    }

    #[test]
    fn the_token_is_read_and_the_field_removed() {
        let cases = [
            (r#"{"model":"m","api_key":"sk-1"}"#, Some(Ok("sk-1".to_string())), r#"{"model":"m"}"#),
            (r#"{"api_key":"sk-\u0031"}"#, Some(Ok("sk-1".to_string())), "{}"),
            (r#"{"api_key":" "}"#, Some(Ok(String::new())), "{}"),
            (r#"{"api_key":" sk-1\n"}"#, Some(Ok("sk-1".to_string())), "{}"),
            (r#"{"api_key":null,"m":1}"#, Some(Err(400)), r#"{"m":1}"#),
            (r#"{"api_key":"a","api_key":"b"}"#, Some(Err(400)), "{}"),
            (r#"{"model":"m"}"#, None, r#"{"model":"m"}"#),
            (r#"{"options":{"api_key":"x"}}"#, None, r#"{"options":{"api_key":"x"}}"#),
            (r#"{"api\u005fkey":"x"}"#, None, r#"{"api\u005fkey":"x"}"#),
            (r#"not json "api_key""#, None, r#"not json "api_key""#),
            (r#"["api_key"]"#, None, r#"["api_key"]"#),
        ];
        for (body, token, rest) in cases {
            assert_eq!(taken(body), (token, rest.to_string()), "{body}");
        }
    }
}
