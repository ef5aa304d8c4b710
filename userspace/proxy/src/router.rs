//! Picks the handler for a request by host and path prefix.
//!
//! Ranking: the most specific host pattern that matches (exact name, then the longest
//! `*.suffix`, then `*`), then the longest path prefix matching on whole segments. Only
//! routes matching both the host and the path compete.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Result;

use crate::{
    config::{Config, HandlerKind},
    handler::{DynHandler, Named},
    origin::{OriginHandler, Servers},
};

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostMatch {
    Exact(String),
    /// `.example.com` for `*.example.com`.
    Suffix(String),
    Any,
}

impl HostMatch {
    fn parse(pattern: &str) -> HostMatch {
        let p = pattern.trim().to_ascii_lowercase();
        if p == "*" {
            HostMatch::Any
        } else if let Some(suffix) = p.strip_prefix('*') {
            HostMatch::Suffix(suffix.to_owned())
        } else {
            HostMatch::Exact(p)
        }
    }

    /// How specific a match is (higher wins), or None.
    fn rank(&self, host: Option<&str>) -> Option<usize> {
        match (self, host) {
            (HostMatch::Any, _) => Some(0),
            (HostMatch::Exact(h), Some(host)) if h.eq_ignore_ascii_case(host) => Some(usize::MAX),
            (HostMatch::Suffix(s), Some(host)) => {
                let host = host.to_ascii_lowercase();
                (host.len() > s.len() && host.ends_with(s.as_str())).then_some(s.len())
            }
            _ => None,
        }
    }
}

/// One route: a host pattern, a path prefix and the handler.
pub struct Route {
    host: HostMatch,
    path: String,
    pub(crate) handler: Arc<dyn DynHandler>,
}

impl Route {
    /// `host path`, for logs.
    pub fn describe(&self) -> String {
        let host = match &self.host {
            HostMatch::Exact(h) => h.clone(),
            HostMatch::Suffix(s) => format!("*{s}"),
            HostMatch::Any => "*".into(),
        };
        format!("{host}{}", self.path)
    }
}

/// The routes of one configuration generation.
pub struct Router {
    routes: Vec<Route>,
    /// Every origin set, for the health checker.
    origins: Vec<Arc<Servers>>,
}

impl Router {
    /// Builds the routes of `config`. `builtin` is the address of the built-in page;
    /// `previous` lends its origins' health state to origins that stay.
    pub fn build(
        config: &Config,
        builtin: Option<SocketAddr>,
        previous: Option<&Router>,
    ) -> Result<Router> {
        let mut routes = Vec::new();
        let mut origins = Vec::new();
        for r in &config.routes {
            let handler: Arc<dyn DynHandler> = match r.handler {
                HandlerKind::Origin => {
                    let servers = Servers::new(&r.origin, builtin)?;
                    if let Some(prev) = previous {
                        for old in &prev.origins {
                            servers.inherit_health(old);
                        }
                    }
                    let servers = Arc::new(servers);
                    origins.push(servers.clone());
                    Arc::new(Named("origin", OriginHandler::new(servers)))
                }
            };
            routes.push(Route {
                host: HostMatch::parse(&r.host),
                path: normalize_prefix(&r.path),
                handler,
            });
        }
        Ok(Router { routes, origins })
    }

    /// The route for a request, if any.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .filter_map(|r| {
                let host_rank = r.host.rank(host)?;
                prefix_matches(&r.path, path).then_some(((host_rank, r.path.len()), r))
            })
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, r)| r)
    }

    pub fn origins(&self) -> &[Arc<Servers>] {
        &self.origins
    }
}

/// `/api/` and `/api` both mean the segment prefix `/api`; `/` stays `/`.
fn normalize_prefix(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/".into()
    } else {
        t.into()
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &str) -> Router {
        let c = Config::parse(routes).unwrap();
        Router::build(&c, None, None).unwrap()
    }

    #[test]
    fn host_then_longest_prefix() {
        let r = router(
            r#"
            [[routes]]
            host = "*"
            [routes.origin]
            servers = ["127.0.0.1:1"]
            [[routes]]
            host = "*"
            path = "/api/"
            [routes.origin]
            servers = ["127.0.0.1:2"]
            [[routes]]
            host = "*.example.com"
            [routes.origin]
            servers = ["127.0.0.1:3"]
            [[routes]]
            host = "app.example.com"
            path = "/app"
            [routes.origin]
            servers = ["127.0.0.1:4"]
            "#,
        );
        let pick = |h: Option<&str>, p: &str| r.route(h, p).map(|r| r.describe());
        assert_eq!(pick(Some("other.org"), "/"), Some("*/".into()));
        assert_eq!(pick(Some("other.org"), "/api"), Some("*/api".into()));
        assert_eq!(pick(Some("other.org"), "/api/v1"), Some("*/api".into()));
        assert_eq!(pick(Some("other.org"), "/apix"), Some("*/".into()));
        assert_eq!(pick(Some("x.example.com"), "/api"), Some("*.example.com/".into()));
        assert_eq!(pick(Some("example.com"), "/"), Some("*/".into()));
        assert_eq!(pick(Some("APP.example.com"), "/app/1"), Some("app.example.com/app".into()));
        assert_eq!(pick(Some("app.example.com"), "/"), Some("*.example.com/".into()));
        assert_eq!(pick(None, "/api"), Some("*/api".into()));
    }

    #[test]
    fn no_match() {
        let r = router(
            r#"
            [[routes]]
            host = "a.test"
            [routes.origin]
            servers = ["127.0.0.1:1"]
            "#,
        );
        assert!(r.route(Some("b.test"), "/").is_none());
        assert!(r.route(Some("a.test"), "/x").is_some());
    }
}
