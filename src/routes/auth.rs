//! Access to the query API: HTTP Basic credentials compared in constant time, or loopback
//! clients only when no credentials are configured.

use super::error::ApiError;
use crate::metrics::Metrics;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::web;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The query API's credentials, kept as SHA-256 digests of `user:password` so that every
/// comparison has the same length and takes the same time.
pub struct ApiAuth {
    digests: Vec<[u8; 32]>,
}

impl ApiAuth {
    pub fn new<S: AsRef<str>>(credentials: &[S]) -> ApiAuth {
        ApiAuth {
            digests: credentials
                .iter()
                .map(|c| Sha256::digest(c.as_ref().as_bytes()).into())
                .collect(),
        }
    }

    pub fn is_open_to_loopback_only(&self) -> bool {
        self.digests.is_empty()
    }

    /// Check an `Authorization` header value; every credential is compared, match or not.
    fn accepts(&self, authorization: Option<&[u8]>) -> Result<(), &'static str> {
        let value = authorization.ok_or("missing")?;
        let encoded = value
            .strip_prefix(b"Basic ")
            .or_else(|| value.strip_prefix(b"basic "))
            .ok_or("malformed")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim_ascii())
            .map_err(|_| "malformed")?;
        let presented: [u8; 32] = Sha256::digest(&decoded).into();
        let mut ok = subtle::Choice::from(0);
        for d in &self.digests {
            ok |= d.ct_eq(&presented);
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err("wrong")
        }
    }
}

/// Middleware guarding `/v1`.
pub async fn require_api_access(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let verdict = match req.app_data::<web::Data<ApiAuth>>() {
        None => Err(("unconfigured", ApiError::Unauthorized)),
        Some(auth) if auth.is_open_to_loopback_only() => {
            let loopback = req.peer_addr().is_some_and(|a| a.ip().is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(("not_loopback", ApiError::LoopbackOnly))
            }
        }
        Some(auth) => auth
            .accepts(
                req.headers()
                    .get(header::AUTHORIZATION)
                    .map(|v| v.as_bytes()),
            )
            .map_err(|reason| (reason, ApiError::Unauthorized)),
    };
    if let Err((reason, err)) = verdict {
        if let Some(m) = req.app_data::<web::Data<Metrics>>() {
            m.api_auth_failures.with_label_values(&[reason]).inc();
        }
        return Err(err.into());
    }
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(s: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
        .into_bytes()
    }

    #[test]
    fn only_a_configured_pair_is_accepted() {
        let auth = ApiAuth::new(&["ops:s3cret", "grafana:other"]);
        assert_eq!(auth.accepts(Some(&basic("ops:s3cret"))), Ok(()));
        assert_eq!(auth.accepts(Some(&basic("grafana:other"))), Ok(()));
        assert_eq!(auth.accepts(Some(&basic("ops:s3cre"))), Err("wrong"));
        assert_eq!(auth.accepts(Some(b"Bearer x")), Err("malformed"));
        assert_eq!(auth.accepts(Some(b"Basic !!!")), Err("malformed"));
        assert_eq!(auth.accepts(None), Err("missing"));
    }
}
