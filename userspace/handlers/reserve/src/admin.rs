//! Operator views of the reservations, shared by the admin API and `outpost reservations`.
//!
//! Admin listener (plain HTTP, the operator's side; emails are shown there):
//! - `GET /reservations?after=NAME&limit=N`: JSON list, in name order (paged by `after`).
//! - `GET /reservations/show?name=NAME`: one reservation, or 404.
//! - `POST /reservations/release?name=NAME`: frees the name and its email (audit
//!   `reserve.release`), or 404.
//! - `GET /reservations/export`: every reservation as CSV.

use std::sync::Arc;

use outpost_api::{AdminEndpoint, Audit, Reply};
use outpost_store::StoreError;
use serde::Serialize;

use crate::{
    model::{NameRow, Reservations, State},
    pages::utc,
};

/// One reservation as operators see it.
#[derive(Clone, Debug, Serialize)]
pub struct View {
    pub name: String,
    pub email: String,
    pub state: &'static str,
    pub created: String,
    /// When a pending hold ends; none once confirmed.
    pub expires: Option<String>,
    pub confirmed: Option<String>,
}

impl View {
    pub fn new(name: &str, row: &NameRow) -> View {
        View {
            name: name.to_owned(),
            email: row.email.clone(),
            state: row.state.as_str(),
            created: utc(row.created_ms),
            expires: (row.state == State::Pending).then(|| utc(row.hold_until_ms)),
            confirmed: row.confirmed_ms.map(utc),
        }
    }

    pub const CSV_HEADER: &'static str = "name,email,state,created_utc,expires_utc,confirmed_utc";

    pub fn csv_line(&self) -> String {
        [
            csv(&self.name),
            csv(&self.email),
            self.state.to_owned(),
            csv(&self.created),
            csv(self.expires.as_deref().unwrap_or("")),
            csv(self.confirmed.as_deref().unwrap_or("")),
        ]
        .join(",")
    }
}

/// RFC 4180 quoting; a leading `=+-@` is prefixed with `'` so a spreadsheet opening the export
/// does not run an email like `=cmd|...@x.test` as a formula.
fn csv(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) { format!("'{s}") } else { s.to_owned() };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// Every reservation, in name order.
pub async fn all(res: &Reservations) -> Result<Vec<View>, StoreError> {
    let mut out = Vec::new();
    pages(res, |page| {
        out.extend(page);
        Ok::<_, StoreError>(())
    })
    .await?;
    Ok(out)
}

/// Every reservation in name order, handed to `each` a page (at most [`PAGE`]) at a time: a
/// caller that writes each page out holds one page, however many there are.
pub async fn pages<E: From<StoreError>>(
    res: &Reservations,
    mut each: impl FnMut(Vec<View>) -> Result<(), E>,
) -> Result<(), E> {
    let mut after: Option<String> = None;
    loop {
        let page = res.list(after.as_deref(), PAGE).await?;
        let full = page.len() == PAGE;
        after = page.last().map(|(n, _, _)| n.clone());
        each(page.iter().map(|(name, row, _)| View::new(name, row)).collect())?;
        if !full {
            return Ok(());
        }
    }
}

/// Reservations per page of [`pages`].
pub const PAGE: usize = 1000;

pub async fn show(res: &Reservations, name: &str) -> Result<Option<View>, StoreError> {
    Ok(res.holder(name).await?.map(|row| View::new(name, &row)))
}

fn query_param(target: &str, key: &str) -> Option<String> {
    let q = target.split_once('?')?.1;
    serde_urlencoded::from_str::<Vec<(String, String)>>(q)
        .ok()?
        .into_iter()
        .find_map(|(k, v)| (k == key).then_some(v))
}

fn json_reply(status: u16, v: &impl Serialize) -> Reply {
    let mut body = serde_json::to_string_pretty(v).unwrap_or_default();
    body.push('\n');
    Reply::new(status, "application/json", body)
}

fn store_error(e: &StoreError) -> Reply {
    Reply::json_error(503, &format!("{e}")).header("Retry-After", "5")
}

/// The admin endpoints.
pub fn endpoints(res: &Reservations, audit: &Audit) -> Vec<(String, AdminEndpoint)> {
    let mut v: Vec<(String, AdminEndpoint)> = Vec::new();
    let r = res.clone();
    v.push((
        "/reservations".into(),
        Arc::new(move |req| {
            let r = r.clone();
            Box::pin(async move {
                if req.method != "GET" {
                    return Reply::json_error(405, "use GET").header("Allow", "GET");
                }
                let after = query_param(&req.target, "after");
                let limit = query_param(&req.target, "limit")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(100usize)
                    .clamp(1, 10_000);
                match r.list(after.as_deref(), limit).await {
                    Ok(page) => {
                        let views: Vec<View> =
                            page.iter().map(|(n, row, _)| View::new(n, row)).collect();
                        json_reply(200, &views)
                    }
                    Err(e) => store_error(&e),
                }
            })
        }),
    ));
    let r = res.clone();
    v.push((
        "/reservations/show".into(),
        Arc::new(move |req| {
            let r = r.clone();
            Box::pin(async move {
                let Some(name) = query_param(&req.target, "name") else {
                    return Reply::json_error(400, "give ?name=");
                };
                match show(&r, &name).await {
                    Ok(Some(view)) => json_reply(200, &view),
                    Ok(None) => Reply::json_error(404, &format!("{name} is not reserved")),
                    Err(e) => store_error(&e),
                }
            })
        }),
    ));
    let (r, a) = (res.clone(), audit.clone());
    v.push((
        "/reservations/release".into(),
        Arc::new(move |req| {
            let (r, a) = (r.clone(), a.clone());
            Box::pin(async move {
                if req.method != "POST" {
                    return Reply::json_error(405, "use POST").header("Allow", "POST");
                }
                let Some(name) = query_param(&req.target, "name") else {
                    return Reply::json_error(400, "give ?name=");
                };
                match r.release(&name).await {
                    Ok(Some(row)) => {
                        let ev = a
                            .event("reserve.release", "success")
                            .user(row.email.clone())
                            .reason(format!("{name} released by the operator (admin API)"));
                        a.write(ev).await;
                        json_reply(
                            200,
                            &serde_json::json!({ "released": name, "state": row.state.as_str() }),
                        )
                    }
                    Ok(None) => Reply::json_error(404, &format!("{name} is not reserved")),
                    Err(e) => store_error(&e),
                }
            })
        }),
    ));
    let r = res.clone();
    v.push((
        "/reservations/export".into(),
        Arc::new(move |_req| {
            let r = r.clone();
            Box::pin(async move {
                match all(&r).await {
                    Ok(views) => Reply::new(200, "text/csv; charset=utf-8", export_csv(&views)),
                    Err(e) => store_error(&e),
                }
            })
        }),
    ));
    v
}

pub fn export_csv(views: &[View]) -> String {
    let mut out = String::from(View::CSV_HEADER);
    out.push('\n');
    for v in views {
        out.push_str(&v.csv_line());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells() {
        assert_eq!(csv("plain"), "plain");
        assert_eq!(csv("a,b"), "\"a,b\"");
        assert_eq!(csv("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv("=1+1@x.test"), "'=1+1@x.test");
    }
}
