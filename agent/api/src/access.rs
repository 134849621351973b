//! Which token scope each route needs (`[auth]`; the check itself is `agent_http::auth`).
//!
//! - none: `/health`, so that a probe (systemd, Kubernetes, a load balancer) needs no secret;
//! - `read`: every `GET`, and the routes that evaluate without changing anything (`/evaluate`,
//!   `/evaluate/batch`, OPA's `POST /v1/data...`, `/v1/validate`, `/v1/query`, `/v1/compile[/...]`,
//!   `/v1/batch/data/...`, OPA's default decision `POST /`,
//!   `/policies/.../replay`);
//! - `admin`: every other write (policies, Rego modules, data documents, bundles).
//!
//! The table goes by method and path, not by the router's routes: a `GET` added later is `read`,
//! any other method `admin` unless it is said here to be less.

use axum::http::Method;

use agent_http::Scope;

/// The scope `method path` needs, or `None` when anyone may call it.
pub(crate) fn scope(method: &Method, path: &str) -> Option<Scope> {
    if path == "/health" || path.starts_with("/health/") {
        return None;
    }
    if method == Method::GET || method == Method::HEAD {
        return Some(Scope::Read);
    }
    let evaluates = method == Method::POST
        && (path == "/evaluate"
            || path == "/evaluate/batch"
            || path == "/v1/data"
            || path.starts_with("/v1/data/")
            || path == "/v1/validate"
            || path == "/v1/query"
            || path == "/v1/compile"
            || path.starts_with("/v1/compile/")
            || path.starts_with("/v1/batch/data/")
            || path == "/"
            // A replay evaluates recorded incidents again; it changes nothing.
            || (path.starts_with("/policies/") && path.ends_with("/replay")));
    Some(if evaluates { Scope::Read } else { Scope::Admin })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_evaluations_are_read_and_writes_admin() {
        let cases = [
            (Method::GET, "/health", None),
            (Method::GET, "/metrics", Some(Scope::Read)),
            (Method::GET, "/policies", Some(Scope::Read)),
            (Method::POST, "/evaluate", Some(Scope::Read)),
            (Method::POST, "/evaluate/batch", Some(Scope::Read)),
            (Method::POST, "/v1/data/authz/allow", Some(Scope::Read)),
            (Method::POST, "/v1/validate", Some(Scope::Read)),
            (Method::POST, "/policies", Some(Scope::Admin)),
            (Method::PUT, "/policies/3", Some(Scope::Admin)),
            (Method::DELETE, "/policies/3", Some(Scope::Admin)),
            (Method::PUT, "/v1/policies/a", Some(Scope::Admin)),
            (Method::PUT, "/v1/data/x", Some(Scope::Admin)),
            (Method::PATCH, "/v1/data", Some(Scope::Admin)),
            (Method::POST, "/something/new", Some(Scope::Admin)),
            (Method::POST, "/policies/3/rollback", Some(Scope::Admin)),
            (Method::POST, "/rego/rollback", Some(Scope::Admin)),
            (Method::PATCH, "/v1/data/x", Some(Scope::Admin)),
            (Method::POST, "/policies/3/replay", Some(Scope::Read)),
            (Method::POST, "/policies/replay", Some(Scope::Read)),
            (Method::POST, "/v1/query", Some(Scope::Read)),
            (Method::GET, "/v1/query", Some(Scope::Read)),
            (Method::POST, "/", Some(Scope::Read)),
            (Method::POST, "/v1/batch/data/a/b", Some(Scope::Read)),
            (Method::POST, "/v1/compile/a", Some(Scope::Read)),
            (Method::PUT, "/v1/bundles/authz", Some(Scope::Admin)),
            (Method::DELETE, "/v1/bundles/authz", Some(Scope::Admin)),
            (Method::GET, "/v1/bundles/authz", Some(Scope::Read)),
        ];
        for (method, path, expected) in cases {
            assert_eq!(scope(&method, path), expected, "{method} {path}");
        }
    }
}
