//! The lists of the simulated REST API (`api.rs`): their query parameters (`pageSize`,
//! `pageToken`, `status`, `startDate`/`endDate`), pages, and the `pagination` object of each
//! kind (a `next` URL for Messages and PushNotifications, a `nextPageToken` for Emails).

use super::api::MAX_PAGE_SIZE;
use crate::comms_api::Pagination;
use crate::event::Kind;
use actix_web::HttpRequest;
use std::time::UNIX_EPOCH;

/// The query parameters of a list request.
pub(super) struct ListQuery {
    pairs: Vec<(String, String)>,
    page_size: usize,
    offset: usize,
    statuses: Option<Vec<String>>,
}

impl ListQuery {
    pub(super) fn parse(
        req: &HttpRequest,
        default_size: usize,
        allowed: &[&str],
    ) -> Result<Self, String> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(req.query_string().as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let page_size = match get("pageSize") {
            None => default_size,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
                _ => return Err(format!("pageSize must be 1 to {MAX_PAGE_SIZE}, not {v:?}")),
            },
        };
        let offset = match get("pageToken").filter(|t| !t.is_empty()) {
            None => 0,
            Some(t) => t
                .strip_prefix("p")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| format!("pageToken {t:?} is not one this API gave"))?,
        };
        let statuses = match get("status").filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(parse_statuses(s, allowed)?),
        };
        Ok(ListQuery {
            pairs,
            page_size,
            offset,
            statuses,
        })
    }

    pub(super) fn get(&self, k: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn admits(&self, status: &str) -> bool {
        self.statuses
            .as_ref()
            .is_none_or(|s| s.iter().any(|x| x == status))
    }

    /// The page of `items` asked for, and the token of the next page when there is one.
    pub(super) fn page<T: Clone>(&self, items: &[T]) -> (Vec<T>, Option<String>) {
        let start = self.offset.min(items.len());
        let end = (start + self.page_size).min(items.len());
        let next = (end < items.len()).then(|| format!("p{end}"));
        (items[start..end].to_vec(), next)
    }

    /// This request's URL with `pageToken` set to `token` (absolute, from the Host it came to).
    fn url_with(&self, req: &HttpRequest, token: Option<&str>) -> String {
        let info = req.connection_info();
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in self.pairs.iter().filter(|(k, _)| k != "pageToken") {
            q.append_pair(k, v);
        }
        if let Some(t) = token {
            q.append_pair("pageToken", t);
        }
        let q = q.finish();
        let sep = if q.is_empty() { "" } else { "?" };
        format!("{}://{}{}{sep}{q}", info.scheme(), info.host(), req.path())
    }

    /// The `pagination` object: a `next` URL, or for Emails a `nextPageToken`.
    pub(super) fn pagination(
        &self,
        req: &HttpRequest,
        kind: Kind,
        next: Option<String>,
    ) -> Pagination {
        match kind {
            Kind::Emails => Pagination::token(next, self.page_size as u64),
            _ => Pagination::urls(
                next.map(|t| self.url_with(req, Some(&t))),
                self.url_with(req, None),
            ),
        }
    }
}

/// `status=DELIVERED,READ`: one or more statuses, comma separated, any case.
fn parse_statuses(s: &str, allowed: &[&str]) -> Result<Vec<String>, String> {
    s.split(',')
        .map(|w| w.trim().to_ascii_uppercase())
        .filter(|w| !w.is_empty())
        .map(|w| {
            if allowed.contains(&w.as_str()) {
                Ok(w)
            } else {
                Err(format!("unknown status {w:?}: use {}", allowed.join(", ")))
            }
        })
        .collect()
}

/// Parse an RFC 3339 time (`2026-01-01T00:00:00Z`, fraction allowed) to Unix ms.
pub(super) fn parse_time(name: &str, v: &str) -> Result<u64, String> {
    let t = humantime::parse_rfc3339_weak(v.trim_end_matches('Z'))
        .map_err(|e| format!("{name} {v:?} is not an RFC 3339 UTC time: {e}"))?;
    Ok(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    const ALLOWED: [&str; 3] = ["QUEUED", "SENT", "CANCELED"];

    fn query(uri: &str) -> (HttpRequest, Result<ListQuery, String>) {
        let req = TestRequest::with_uri(uri)
            .insert_header(("host", "127.0.0.1:9"))
            .to_http_request();
        let q = ListQuery::parse(&req, 2, &ALLOWED);
        (req, q)
    }

    #[test]
    fn pages_follow_their_tokens_to_the_end_in_both_styles() {
        let items: Vec<u32> = (0..5).collect();
        let (req, q) = query("/v1/Messages?operationId=x&pageToken=p2");
        let q = q.unwrap();
        let (page, next) = q.page(&items);
        assert_eq!((page, next.as_deref()), (vec![2, 3], Some("p4")));
        let urls = q.pagination(&req, Kind::Messages, next.clone());
        assert_eq!(
            urls.next,
            Some(Some(
                "http://127.0.0.1:9/v1/Messages?operationId=x&pageToken=p4".into()
            ))
        );
        let token = q.pagination(&req, Kind::Emails, next);
        assert_eq!(token.next_page_token, Some(Some("p4".into())));
        let (_, last) = query("/v1/Messages?pageToken=p4");
        assert_eq!(last.unwrap().page(&items), (vec![4], None));
    }

    #[test]
    fn a_bad_parameter_is_refused_naming_it() {
        for (uri, word) in [
            ("/v1/Messages?pageSize=0", "pageSize"),
            ("/v1/Messages?pageSize=1001", "pageSize"),
            ("/v1/Messages?pageToken=xyz", "pageToken"),
            ("/v1/Messages?status=SENT,READ", "READ"),
        ] {
            let err = query(uri)
                .1
                .err()
                .unwrap_or_else(|| panic!("{uri} accepted"));
            assert!(err.contains(word), "{uri}: {err}");
        }
        let (_, q) = query("/v1/Messages?status=sent,%20canceled");
        let q = q.unwrap();
        assert!(q.admits("SENT") && q.admits("CANCELED") && !q.admits("QUEUED"));
        assert!(parse_time("startDate", "2026-01-01T00:00:01.5Z").unwrap() == 1_767_225_601_500);
        assert!(parse_time("endDate", "yesterday").is_err());
    }
}
