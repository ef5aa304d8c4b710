//! [`ReserveApp`]: the `[reserve]` section made into routes, admin endpoints, the mail sender
//! and the expiry sweep.

use std::{
    sync::{Arc, Mutex, RwLock, Weak},
    time::Duration,
};

use anyhow::Result;
use outpost_api::{erase, App, AppParts, AppRoute, Audit, BuildEnv};
use outpost_store::{spawn_outbox_worker, Backend, Store};
use tokio::sync::watch;

use crate::{
    admin,
    config::ReserveConfig,
    handlers::{Availability, Confirm, Page, Reserve, Shared},
    mail::Mailer,
    model::{Reservations, MAIL_TOPIC},
    secret::Secret,
};

/// The reservation application. Registered once by the binary; builds each configuration
/// generation from `[reserve]`.
pub struct ReserveApp {
    store: Store,
    sender: Mutex<Option<Sender>>,
}

/// The outbox workers, started with the first generation that has `[reserve]` and kept across
/// reloads (their number too); each generation swaps in its own mailer (SMTP settings may
/// change on reload).
struct Sender {
    mailer: Arc<RwLock<Option<Arc<Mailer>>>>,
    _stop: watch::Sender<bool>,
}

impl ReserveApp {
    pub fn new(store: Store) -> ReserveApp {
        ReserveApp { store, sender: Mutex::new(None) }
    }

    fn start_sender(&self, node: &str, mailer: Arc<Mailer>, senders: usize) {
        let mut sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sender.as_ref() {
            *s.mailer.write().unwrap_or_else(|e| e.into_inner()) = Some(mailer);
            return;
        }
        let slot = Arc::new(RwLock::new(Some(mailer)));
        let (stop, stopped) = watch::channel(false);
        for i in 0..senders.max(1) {
            let deliver_slot = slot.clone();
            let owner = format!("{node}/reserve-mail/{}/{i}", std::process::id());
            spawn_outbox_worker(
                &self.store,
                MAIL_TOPIC,
                owner,
                move |item| {
                    let mailer = deliver_slot.read().unwrap_or_else(|e| e.into_inner()).clone();
                    async move {
                        match mailer {
                            Some(m) => m.deliver(&item).await,
                            None => Err("no mailer configured".into()),
                        }
                    }
                },
                stopped.clone(),
            );
        }
        *sender = Some(Sender { mailer: slot, _stop: stop });
    }
}

impl App for ReserveApp {
    fn section(&self) -> &'static str {
        "reserve"
    }

    fn build(&self, section: Option<&toml::Value>, env: &BuildEnv) -> Result<AppParts> {
        let Some(section) = section else { return Ok(AppParts::default()) };
        let cfg = ReserveConfig::from_section(Some(section))?;
        if self.store.backend() == Backend::Postgres && cfg.secret_file.is_none() {
            // A node-local secret would seal mail tokens that other nodes' senders cannot open.
            anyhow::bail!(
                "[reserve] secret_file is required with a shared (PostgreSQL) store: every node \
                 needs the same secret to send the mails another node queued"
            );
        }
        let secret = Arc::new(Secret::load(cfg.secret_file.as_deref(), &env.data_dir)?);
        let mailer = Arc::new(Mailer::new(&cfg, secret.clone())?);
        self.start_sender(&env.node, mailer, cfg.smtp.senders);
        let res = Reservations {
            store: self.store.clone(),
            hold: cfg.hold(),
            mails_per_hour: cfg.mails_per_hour,
        };
        let host = cfg.host.clone();
        let sweep_every = Duration::from_millis(cfg.expiry_sweep_ms.max(100));
        let shared = Arc::new(Shared::new(cfg, res, secret, env.audit.clone()));
        let route = |path: &str, h| AppRoute { host: host.clone(), path: path.into(), handler: h };
        let routes = vec![
            route("/", erase("reserve-page", Page(shared.clone()))),
            route("/reserve", erase("reserve", Reserve(shared.clone()))),
            route("/confirm", erase("reserve-confirm", Confirm(shared.clone()))),
            route("/api/availability", erase("reserve-availability", Availability(shared.clone()))),
        ];
        Ok(AppParts {
            routes,
            filters: Vec::new(),
            admin: admin::endpoints(&shared.res, &env.audit),
            background: vec![
                Box::pin(expiry_sweep(Arc::downgrade(&shared), sweep_every)),
                Box::pin(shrink_limits(Arc::downgrade(&shared))),
            ],
            ..AppParts::default()
        })
    }
}

/// Reports holds that ended unconfirmed (audit `reserve.expiry`), until its generation is
/// replaced. The store frees the rows by itself; this only makes each expiry visible, once,
/// whichever node sees it first.
async fn expiry_sweep(shared: Weak<Shared>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(sh) = shared.upgrade() else { return };
        sweep_once(&sh.res, &sh.audit).await;
    }
}

/// One sweep; returns how many expiries it reported.
pub async fn sweep_once(res: &Reservations, audit: &Audit) -> usize {
    let mut n = 0;
    loop {
        match res.sweep_expired(200).await {
            Ok(expired) => {
                for row in &expired {
                    let ev = audit
                        .event("reserve.expiry", "success")
                        .user(row.email.clone())
                        .reason(format!("{} not confirmed in time", row.name));
                    audit.write(ev).await;
                }
                n += expired.len();
                if expired.len() < 200 {
                    return n;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reserve: expiry sweep failed; next round retries");
                return n;
            }
        }
    }
}

async fn shrink_limits(shared: Weak<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let Some(sh) = shared.upgrade() else { return };
        sh.limits.shrink();
    }
}
