//! The operator dashboard: one self-contained HTML page (inline CSS and JS,
//! no external resources) served on every node's admin port at `GET /` and
//! `GET /dashboard`. The page polls the node's own `/v1/status`,
//! `/v1/clients` and `/v1/topics` every second, sending the admin bearer
//! token the operator entered (or gave as `#token=...` in the URL).

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::get;

/// The page, `crates/net/assets/dashboard.html`.
pub const DASHBOARD_HTML: &str = include_str!("../assets/dashboard.html");

/// The page's content security policy: its own inline script and style, and
/// requests to its own origin only.
pub const DASHBOARD_CSP: &str = "default-src 'self'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; \
     frame-ancestors 'none'";

/// Adds `GET /` and `GET /dashboard`, answering the dashboard page.
pub fn with_dashboard(router: Router) -> Router {
    router
        .route("/", get(dashboard))
        .route("/dashboard", get(dashboard))
}

/// The page with its headers.
async fn dashboard() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
            (CONTENT_SECURITY_POLICY, DASHBOARD_CSP),
        ],
        DASHBOARD_HTML,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn get_page(path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        let request = Request::get(path)
            .body(Body::empty())
            .expect("a valid request");
        let response = with_dashboard(Router::new())
            .oneshot(request)
            .await
            .expect("the router answers");
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20)
            .await
            .expect("the body is read");
        let body = String::from_utf8(body.to_vec()).expect("the body is UTF-8");
        (parts.status, parts.headers, body)
    }

    #[tokio::test]
    async fn dashboard_serves_the_page() {
        let (status, headers, body) = get_page("/dashboard").await;
        assert_eq!(status, StatusCode::OK);
        let header = |name| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
        };
        assert!(header(CONTENT_TYPE).starts_with("text/html"));
        assert_eq!(header(CACHE_CONTROL), "no-cache");
        assert_eq!(header(CONTENT_SECURITY_POLICY), DASHBOARD_CSP);
        for id in ["nodes", "topics", "clients", "node-id"] {
            assert!(
                body.contains(&format!("id=\"{id}\"")),
                "the page has an element with id {id}"
            );
        }
    }

    #[tokio::test]
    async fn dashboard_is_also_the_root() {
        let (status, _, body) = get_page("/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, DASHBOARD_HTML);
    }
}
