//! The handlers the binary ships, by name. The core builds each configuration generation from
//! it and knows none of them.

use std::{collections::BTreeMap, sync::Arc};

use outpost_api::{App, RouteFactory};

/// Route factories by name, applications by section, and sections the binary reads itself.
#[derive(Clone, Default)]
pub struct Registry {
    pub(crate) routes: BTreeMap<&'static str, Arc<dyn RouteFactory>>,
    pub(crate) apps: Vec<Arc<dyn App>>,
    pub(crate) sections: Vec<&'static str>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Routes may name `factory` in `handler = "..."`.
    pub fn route(mut self, factory: impl RouteFactory) -> Registry {
        self.routes.insert(factory.name(), Arc::new(factory));
        self
    }

    /// `app` reads its top-level section and contributes routes, filters, admin endpoints
    /// and background work. Filters run in the order applications were registered.
    pub fn app(mut self, app: impl App) -> Registry {
        self.apps.push(Arc::new(app));
        self
    }

    /// A top-level section the binary reads itself (so the core does not refuse it).
    pub fn section(mut self, name: &'static str) -> Registry {
        self.sections.push(name);
        self
    }

    /// Whether some registered party reads the top-level section `name`.
    pub(crate) fn owns_section(&self, name: &str) -> bool {
        self.sections.contains(&name) || self.apps.iter().any(|a| a.section() == name)
    }

    /// The names routes can use, for error messages.
    pub(crate) fn route_names(&self) -> String {
        let names: Vec<_> = self.routes.keys().copied().collect();
        names.join(", ")
    }
}
