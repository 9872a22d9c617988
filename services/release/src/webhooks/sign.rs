//! `Convox-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`: HMAC-SHA256 of
//! `"<t>.<body>"` under each active key (at most four during a rotation);
//! a receiver accepts the delivery when any one verifies. The key is the
//! text `webhooks keys add` printed, used as bytes, as Convox uses its
//! `webhook_signing_key`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The signature header's name.
pub const HEADER: &str = "Convox-Signature";

/// The header value for `body` sent at unix time `t`, one `v1=` per key in
/// the order given.
pub fn signature(t: i64, body: &[u8], keys: &[Vec<u8>]) -> String {
    let mut value = format!("t={t}");
    for key in keys {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        value.push_str(",v1=");
        value.push_str(&super::hex(&mac.finalize().into_bytes()));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_independent_hmac() {
        // Computed with Python's hmac module.
        let body = br#"{"action":"app:create"}"#;
        let value = signature(
            1714233600,
            body,
            &[b"whk_test_key".to_vec(), b"second".to_vec()],
        );
        assert_eq!(
            value,
            "t=1714233600,\
             v1=4124b5aa46805876ebcfa863c31b1fdafd95e6bb3dbfe04fbd74bcf543f11905,\
             v1=142282c96274306dfbfeeb9c9b5ca167954f1a99b05824b8761216eed8471ebd"
        );
        assert_eq!(signature(5, body, &[]), "t=5");
    }
}
