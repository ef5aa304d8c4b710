//! How handlers come to be: factories the binary registers, built from configuration on start
//! and on every reload.
//!
//! Two kinds, because applications come in two shapes:
//! - a [`RouteFactory`] builds the handler of a `[[routes]]` entry that names it
//!   (`handler = "origin"`), from that route's own table (`[routes.origin]`);
//! - an [`App`] owns a top-level section (`[access]`, `[reserve]`) and contributes whole
//!   routes (its endpoints), filters (handlers that run before every route's own handler, so
//!   protection attaches to any route without that handler knowing), admin endpoints and
//!   background tasks.
//!
//! The core reads neither section: it passes each one, unread, to the factory that registered
//! its name, and refuses a section no factory claims.

use std::{future::Future, net::SocketAddr, path::PathBuf, pin::Pin, sync::Arc};

use crate::{audit::Audit, handler::ErasedHandler, handler::Reply, http::Request};

/// A future for the control thread: health checks, senders, sweepers. Spawned after every
/// build; one that belongs to a replaced generation should end by itself (hold a `Weak` to
/// what it works for).
pub type Background = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// An admin endpoint's answer to one request (admin listener, plain HTTP, control thread).
pub type AdminFuture = Pin<Box<dyn Future<Output = Reply> + 'static>>;

/// An endpoint on the admin listener.
pub type AdminEndpoint = Arc<dyn Fn(Request<'static>) -> AdminFuture + Send + Sync>;

/// Facts the core gives every factory.
#[derive(Clone)]
pub struct BuildEnv {
    /// This edge node's name (config `node`, default the hostname).
    pub node: String,
    /// The audit log.
    pub audit: Audit,
    /// The in-process built-in page, when running.
    pub builtin: Option<SocketAddr>,
    /// The data directory.
    pub data_dir: PathBuf,
}

/// One `[[routes]]` entry, as its factory sees it.
pub struct RouteSpec<'a> {
    /// Host pattern, as configured.
    pub host: &'a str,
    /// Path prefix, as configured.
    pub path: &'a str,
    /// The route's table for this handler (`[routes.<name>]`); an empty table when absent.
    pub settings: &'a toml::Value,
}

/// A handler built for one route, and what should run beside it.
pub struct Built {
    pub handler: Arc<dyn ErasedHandler>,
    pub background: Vec<Background>,
}

/// Builds the handler of routes that name it.
pub trait RouteFactory: Send + Sync + 'static {
    /// The name in `handler = "..."` and of the route's settings table.
    fn name(&self) -> &'static str;
    /// Builds one route's handler. Called on start and on every reload, for every route that
    /// names this factory; an error fails the (re)load with the route named.
    fn build(&self, route: &RouteSpec<'_>, env: &BuildEnv) -> anyhow::Result<Built>;
}

/// A route an [`App`] serves itself.
pub struct AppRoute {
    /// Host pattern: exact, `*.suffix` or `*`.
    pub host: String,
    /// Path prefix, matched on whole segments.
    pub path: String,
    pub handler: Arc<dyn ErasedHandler>,
}

/// What an [`App`] contributes to one configuration generation.
#[derive(Default)]
pub struct AppParts {
    pub routes: Vec<AppRoute>,
    /// Run before the route's own handler on every request, in order.
    pub filters: Vec<Arc<dyn ErasedHandler>>,
    /// Endpoints on the admin listener, by exact path.
    pub admin: Vec<(String, AdminEndpoint)>,
    pub background: Vec<Background>,
    /// Request fields this application asserts to origins (identity headers). The core removes
    /// client copies in every spelling (case, `_` for `-`) before any filter runs.
    pub asserted_headers: Vec<String>,
}

/// An application with a top-level config section of its own.
pub trait App: Send + Sync + 'static {
    /// The top-level section this application reads (`"access"` for `[access]`).
    fn section(&self) -> &'static str;
    /// Builds this generation's parts from the section (`None` when the file has none).
    fn build(&self, section: Option<&toml::Value>, env: &BuildEnv) -> anyhow::Result<AppParts>;
}
