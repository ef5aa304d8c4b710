//! Picks the handler for a request by host and path prefix.
//!
//! Ranking: the most specific host pattern that matches (exact name, then the longest
//! `*.suffix`, then `*`), then the longest path prefix matching on whole segments. Only
//! routes matching both the host and the path compete.

use std::{collections::BTreeMap, sync::Arc};

use anyhow::{bail, Context as _, Result};
use outpost_api::{AdminEndpoint, Background, BuildEnv, ErasedHandler, RouteSpec};

use crate::{config::Config, registry::Registry};

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostMatch {
    Exact(String),
    /// `.example.com` for `*.example.com`.
    Suffix(String),
    Any,
}

impl HostMatch {
    fn parse(pattern: &str) -> HostMatch {
        // Requests' hosts lose one trailing dot (see `http::normalise`); patterns do too.
        let p = pattern.trim();
        let p = p.strip_suffix('.').unwrap_or(p).to_ascii_lowercase();
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
    pub(crate) handler: Arc<dyn ErasedHandler>,
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

/// The routes of one configuration generation, the filters in front of them, and the admin
/// endpoints applications added.
pub struct Router {
    routes: Vec<Route>,
    pub(crate) filters: Vec<Arc<dyn ErasedHandler>>,
    pub(crate) admin: BTreeMap<String, AdminEndpoint>,
    /// Fields the edge asserts to origins: the core's own and every application's.
    pub(crate) asserted: Vec<String>,
}

/// Fields the core and the `origin` handler assert to origins.
const CORE_ASSERTED: [&str; 1] = ["X-Outpost-TLS-Version"];

impl Router {
    /// Builds the routes of `config` with the handlers in `registry`. Returns the background
    /// work the handlers asked for, for the control thread.
    pub fn build(
        config: &Config,
        registry: &Registry,
        env: &BuildEnv,
    ) -> Result<(Router, Vec<Background>)> {
        if let Some(name) = config.sections.keys().find(|k| !registry.owns_section(k)) {
            bail!("unknown section [{name}]: no handler of this build reads it");
        }
        let mut routes = Vec::new();
        let mut background = Vec::new();
        for r in &config.routes {
            let Some(factory) = registry.routes.get(r.handler.as_str()) else {
                bail!(
                    "route {} {}: unknown handler {:?} (this build has: {})",
                    r.host,
                    r.path,
                    r.handler,
                    registry.route_names()
                );
            };
            let settings = r.handler_settings();
            let spec = RouteSpec { host: &r.host, path: &r.path, settings: &settings };
            let built = factory
                .build(&spec, env)
                .with_context(|| format!("route {} {} ({})", r.host, r.path, r.handler))?;
            background.extend(built.background);
            routes.push(Route::new(&r.host, &r.path, built.handler));
        }
        let mut filters = Vec::new();
        let mut admin = BTreeMap::new();
        let mut asserted: Vec<String> = CORE_ASSERTED.iter().map(|&h| h.to_owned()).collect();
        for app in &registry.apps {
            let parts = app
                .build(config.section(app.section()), env)
                .with_context(|| format!("[{}]", app.section()))?;
            for r in parts.routes {
                routes.push(Route::new(&r.host, &r.path, r.handler));
            }
            filters.extend(parts.filters);
            admin.extend(parts.admin);
            background.extend(parts.background);
            asserted.extend(parts.asserted_headers);
        }
        Ok((Router { routes, filters, admin, asserted }, background))
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

    /// Every route, for logs.
    pub fn describe(&self) -> Vec<String> {
        self.routes.iter().map(|r| format!("{} -> {}", r.describe(), r.handler.name())).collect()
    }
}

impl Route {
    fn new(host: &str, path: &str, handler: Arc<dyn ErasedHandler>) -> Route {
        Route { host: HostMatch::parse(host), path: normalize_prefix(path), handler }
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
    use outpost_api::{erase, Built, Handler, RouteFactory};

    use super::*;

    /// A handler named after its settings' `tag`, to see which route was picked.
    struct Tagged;
    struct Nothing;

    impl Handler for Nothing {
        type Ctx = ();
        fn new_ctx(&self) {}
    }

    impl RouteFactory for Tagged {
        fn name(&self) -> &'static str {
            "tagged"
        }
        fn build(&self, r: &RouteSpec<'_>, _env: &BuildEnv) -> Result<Built> {
            if r.settings.get("fail").is_some() {
                bail!("asked to fail");
            }
            Ok(Built { handler: erase("tagged", Nothing), background: Vec::new() })
        }
    }

    fn env() -> BuildEnv {
        BuildEnv {
            node: "test".into(),
            audit: outpost_api::Audit::new("test", None),
            builtin: None,
            data_dir: ".".into(),
        }
    }

    fn router(routes: &str) -> Result<Router> {
        let c = Config::parse(routes)?;
        Router::build(&c, &Registry::new().route(Tagged), &env()).map(|(r, _)| r)
    }

    #[test]
    fn host_then_longest_prefix() {
        let r = router(
            r#"
            [[routes]]
            host = "*"
            handler = "tagged"
            [[routes]]
            host = "*"
            path = "/api/"
            handler = "tagged"
            [[routes]]
            host = "*.example.com"
            handler = "tagged"
            [[routes]]
            host = "app.example.com"
            path = "/app"
            handler = "tagged"
            "#,
        )
        .unwrap();
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
        let r = router("[[routes]]\nhost = \"a.test\"\nhandler = \"tagged\"").unwrap();
        assert!(r.route(Some("b.test"), "/").is_none());
        assert!(r.route(Some("a.test"), "/x").is_some());
    }

    #[test]
    fn unknown_names_are_errors() {
        for (bad, says) in [
            ("[[routes]]\nhandler = \"nope\"", "unknown handler \"nope\""),
            ("[[routes]]\nhandler = \"tagged\"\n[routes.tagged]\nfail = 1", "asked to fail"),
            ("[nope]\nx = 1", "unknown section [nope]"),
        ] {
            let e = format!("{:#}", router(bad).err().unwrap_or_else(|| panic!("accepted {bad}")));
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
