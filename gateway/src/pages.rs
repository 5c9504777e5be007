//! The gateway's own responses (unknown host, suspended tenant, …): small
//! HTML or JSON pages chosen by the client's `Accept`, built once at start-up
//! (optionally from files named in `[pages.custom]`) and never touching a backend.

use std::collections::HashMap;

use bytes::Bytes;

use serde::{Deserialize, Serialize};

use crate::config::PagesConfig;

/// The gateway's pages; in the config (`[pages.custom.<kind>]`) by their
/// [`PageKind::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PageKind {
    BadRequest,
    NotFound,
    Suspended,
    Deleted,
    Unavailable,
    Misdirected,
    BadGateway,
    GatewayTimeout,
    /// The database holds a row for this host the gateway refuses.
    Misconfigured,
    /// The tenant (or this client of it) is over its request rate.
    RateLimited,
    /// The tenant's requests in flight stayed at its cap.
    Busy,
    /// A custom hostname whose ownership is not verified (yet).
    Unverified,
    /// A request body the gateway reads first did not arrive in time.
    RequestTimeout,
    /// A request body larger than `limits.max_request_body_bytes`.
    PayloadTooLarge,
}

impl PageKind {
    pub fn name(self) -> &'static str {
        match self {
            PageKind::BadRequest => "bad_request",
            PageKind::NotFound => "not_found",
            PageKind::Suspended => "suspended",
            PageKind::Deleted => "deleted",
            PageKind::Unavailable => "unavailable",
            PageKind::Misdirected => "misdirected",
            PageKind::BadGateway => "bad_gateway",
            PageKind::GatewayTimeout => "gateway_timeout",
            PageKind::Misconfigured => "misconfigured",
            PageKind::RateLimited => "rate_limited",
            PageKind::Busy => "busy",
            PageKind::Unverified => "unverified",
            PageKind::RequestTimeout => "request_timeout",
            PageKind::PayloadTooLarge => "payload_too_large",
        }
    }

    fn all() -> [PageKind; 14] {
        [
            PageKind::BadRequest,
            PageKind::NotFound,
            PageKind::Suspended,
            PageKind::Deleted,
            PageKind::Unavailable,
            PageKind::Misdirected,
            PageKind::BadGateway,
            PageKind::GatewayTimeout,
            PageKind::Misconfigured,
            PageKind::RateLimited,
            PageKind::Busy,
            PageKind::Unverified,
            PageKind::RequestTimeout,
            PageKind::PayloadTooLarge,
        ]
    }

    fn default_text(self) -> (&'static str, &'static str) {
        match self {
            PageKind::BadRequest => ("Bad request", "The request's host is missing or malformed."),
            PageKind::NotFound => ("Not found", "No site is configured for this host."),
            PageKind::Suspended => ("Suspended", "This site is suspended."),
            PageKind::Deleted => ("Gone", "This site no longer exists."),
            PageKind::Unavailable => ("Service unavailable", "Please try again in a moment."),
            PageKind::Misdirected => ("Misdirected request", "This connection cannot serve this host."),
            PageKind::BadGateway => ("Bad gateway", "The site's servers could not be reached."),
            PageKind::GatewayTimeout => ("Gateway timeout", "The site's servers did not answer in time."),
            PageKind::Misconfigured => (
                "Service unavailable",
                "This site is not configured correctly; its operator can see why in the gateway's log.",
            ),
            PageKind::RateLimited => (
                "Too many requests",
                "This site is receiving too many requests; please retry shortly.",
            ),
            PageKind::Busy => (
                "Service busy",
                "This site is handling too many requests at once; please retry shortly.",
            ),
            PageKind::Unverified => ("Not found", "No site is served for this host yet."),
            PageKind::RequestTimeout => ("Request timeout", "The request's body did not arrive in time."),
            PageKind::PayloadTooLarge => (
                "Payload too large",
                "The request's body is larger than this site accepts.",
            ),
        }
    }
}

pub struct Page {
    pub status: u16,
    pub html: Bytes,
    pub json: Bytes,
}

pub struct Pages {
    pages: HashMap<PageKind, Page>,
}

#[derive(Debug, thiserror::Error)]
#[error("config key `pages.custom.{kind}.{field}`: cannot read {path}: {source}")]
pub struct PageError {
    kind: &'static str,
    field: &'static str,
    path: String,
    source: std::io::Error,
}

impl Pages {
    pub fn load(cfg: &PagesConfig) -> Result<Pages, PageError> {
        let mut pages = HashMap::new();
        for kind in PageKind::all() {
            let status = match kind {
                PageKind::BadRequest => 400,
                PageKind::NotFound => 404,
                PageKind::Suspended => 403,
                PageKind::Deleted => cfg.deleted_status,
                PageKind::Unavailable => 503,
                PageKind::Misdirected => 421,
                PageKind::BadGateway => 502,
                PageKind::GatewayTimeout => 504,
                PageKind::Misconfigured => 503,
                PageKind::RateLimited => 429,
                PageKind::Busy => 503,
                PageKind::Unverified => 404,
                PageKind::RequestTimeout => 408,
                PageKind::PayloadTooLarge => 413,
            };
            let (title, text) = kind.default_text();
            let mut html = Bytes::from(format!(
                "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{status} {title}</title></head>\
                 <body><h1>{title}</h1><p>{text}</p></body></html>\n"
            ));
            let mut json = Bytes::from(format!(
                "{{\"error\":\"{}\",\"status\":{status},\"message\":\"{text}\"}}\n",
                kind.name()
            ));
            if let Some(files) = cfg.custom.get(&kind) {
                let read = |field: &'static str, p: &std::path::Path| {
                    std::fs::read(p).map(Bytes::from).map_err(|source| PageError {
                        kind: kind.name(),
                        field,
                        path: p.display().to_string(),
                        source,
                    })
                };
                if let Some(p) = &files.html_file {
                    html = read("html_file", p)?;
                }
                if let Some(p) = &files.json_file {
                    json = read("json_file", p)?;
                }
            }
            pages.insert(kind, Page { status, html, json });
        }
        Ok(Pages { pages })
    }

    pub fn get(&self, kind: PageKind) -> &Page {
        // Every kind is inserted by `load`.
        &self.pages[&kind]
    }
}

/// Whether the client prefers JSON: `Accept` names application/json (or
/// `+json`) and does not name text/html before it.
pub fn wants_json(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    let json = accept.find("json");
    let html = accept.find("text/html");
    match (json, html) {
        (Some(j), Some(h)) => j < h,
        (Some(_), None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_are_the_page_names() {
        for kind in PageKind::all() {
            let toml = format!("{} = 1", kind.name());
            let parsed: std::collections::BTreeMap<PageKind, u8> = toml::from_str(&toml).unwrap();
            assert_eq!(parsed.keys().next(), Some(&kind));
        }
    }

    #[test]
    fn accept_negotiation() {
        assert!(wants_json(Some("application/json")));
        assert!(wants_json(Some("application/problem+json, text/html")));
        assert!(!wants_json(Some("text/html,application/json")));
        assert!(!wants_json(Some("*/*")));
        assert!(!wants_json(None));
    }

    #[test]
    fn statuses() {
        let p = Pages::load(&PagesConfig {
            deleted_status: 410,
            ..PagesConfig::default()
        })
        .unwrap();
        assert_eq!(p.get(PageKind::Deleted).status, 410);
        assert_eq!(p.get(PageKind::Suspended).status, 403);
        assert!(std::str::from_utf8(&p.get(PageKind::NotFound).json)
            .unwrap()
            .contains("\"not_found\""));
    }
}
