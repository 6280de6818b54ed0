//! The web UI, rendered on the server: `/` (model list and search) and `/{owner}/{name}` (a
//! model: versions, lineage, the network drawn, metrics, weights, files with download links).
//! Plain HTML and inline SVG; no JavaScript, nothing loaded from elsewhere.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use dlv_store::{short, VersionRecord};

use crate::api::resolve_rev;
use crate::auth::{check_repo_id, Caller};
use crate::catalog::ModelView;
use crate::error::{HubError, Result};
use crate::hf::sha;
use crate::search::{percent_encode, query_pairs, Search};
use crate::svg::{esc, network, series};
use crate::Hub;

pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/", get(index))
        .route("/{owner}/{name}", get(model_page))
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#222}header{background:#1f2d3d;color:#fff;padding:10px 24px}header a{color:#fff;text-decoration:none;font-weight:bold}main{padding:16px 24px;max-width:1200px}table{border-collapse:collapse;margin:8px 0}td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left;font-size:14px}code{font-size:13px}.tag{background:#eef;border-radius:4px;padding:1px 6px;margin-right:4px;font-size:12px}.muted{color:#777}.private{background:#fdd;border-radius:4px;padding:1px 6px;font-size:12px}form input{padding:4px;margin-right:6px}.charts svg{margin-right:12px}.net{overflow:auto;border:1px solid #eee;padding:6px}";

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · ModelHub</title><style>{STYLE}</style></head><body><header><a href=\"/\">ModelHub</a></header><main>{body}</main></body></html>",
        esc(title)
    ))
}

fn error_page(e: HubError) -> Response {
    let status = e.status();
    let mut r = page(
        "error",
        &format!("<h1>{}</h1><p>{}</p>", status.as_u16(), esc(&e.to_string())),
    )
    .into_response();
    *r.status_mut() = status;
    r
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut u) = (n as f64, 0);
    while v >= 1024.0 && u + 1 < U.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[u])
    }
}

async fn index(State(hub): State<Arc<Hub>>, caller: Caller, RawQuery(raw): RawQuery) -> Response {
    match render_index(&hub, &caller, raw.as_deref()) {
        Ok(h) => h.into_response(),
        Err(e) => error_page(e),
    }
}

fn render_index(hub: &Hub, caller: &Caller, raw: Option<&str>) -> Result<Html<String>> {
    let pairs = query_pairs(raw);
    let s = Search::from_pairs(&pairs)?;
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (total, models) = s.run(hub.catalog.list_visible(caller.user()));
    let mut b = String::new();
    let _ = write!(
        b,
        "<h1>Models</h1><form method=\"get\" action=\"/\" id=\"search\"><input name=\"q\" placeholder=\"search names, descriptions, tags\" value=\"{}\" size=\"34\"><input name=\"filter\" placeholder=\"accuracy&gt;0.9\" value=\"{}\" size=\"18\"><select name=\"sort\">",
        esc(&get("q")),
        esc(&get("filter"))
    );
    for (v, label) in [
        ("updated", "recently updated"),
        ("created", "newest"),
        ("name", "name"),
        ("params", "parameters"),
        ("accuracy", "accuracy"),
    ] {
        let sel = if s.sort == v { " selected" } else { "" };
        let _ = write!(b, "<option value=\"{v}\"{sel}>{label}</option>");
    }
    let _ = write!(b, "</select><button type=\"submit\">Search</button></form><p class=\"muted\" id=\"count\">{total} model(s)</p>");
    b.push_str("<table id=\"models\"><tr><th>model</th><th>latest</th><th>updated</th><th>parameters</th><th>metrics</th><th>description</th></tr>");
    for m in &models {
        let latest = m.latest.as_ref();
        let metrics: Vec<String> = latest
            .map(|l| {
                l.numbers
                    .iter()
                    .filter(|(k, _)| k.contains("accuracy") || k.contains("loss"))
                    .take(3)
                    .map(|(k, v)| format!("{}={v:.4}", esc(k)))
                    .collect()
            })
            .unwrap_or_default();
        let tags: String = m
            .entry
            .tags
            .iter()
            .map(|t| format!("<span class=\"tag\">{}</span>", esc(t)))
            .collect();
        let private = if m.entry.private {
            " <span class=\"private\">private</span>"
        } else {
            ""
        };
        let _ = write!(
            b,
            "<tr class=\"model\"><td><a href=\"/{key}\">{key}</a>{private}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{} {tags}</td></tr>",
            latest.map(|l| short(&l.id)).unwrap_or_default(),
            time(m.entry.updated_ms),
            latest.map(|l| l.params).unwrap_or_default(),
            metrics.join(" "),
            esc(&m.entry.description),
            key = esc(&m.key()),
        );
    }
    b.push_str("</table>");
    let pages = total.div_ceil(s.per_page).max(1);
    if pages > 1 {
        let keep: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| k != "page")
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
            .collect();
        let base = keep.join("&");
        b.push_str("<p id=\"pages\">");
        if s.page > 1 {
            let _ = write!(
                b,
                "<a rel=\"prev\" href=\"/?{base}&amp;page={}\">previous</a> ",
                s.page - 1
            );
        }
        let _ = write!(b, "page {} of {pages}", s.page);
        if s.page < pages {
            let _ = write!(
                b,
                " <a rel=\"next\" href=\"/?{base}&amp;page={}\">next</a>",
                s.page + 1
            );
        }
        b.push_str("</p>");
    }
    Ok(page("Models", &b))
}

async fn model_page(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path((owner, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    let hub2 = hub.clone();
    let user = caller.0.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        check_repo_id(&owner, &name)
            .map_err(|_| HubError::not_found(format!("model {owner}/{name}")))?;
        let m = hub2.catalog.visible(&owner, &name, user.as_deref())?;
        let pairs = query_pairs(raw.as_deref());
        let rev = pairs
            .iter()
            .find(|(k, _)| k == "v")
            .map(|(_, v)| v.as_str())
            .unwrap_or("main");
        render_model(&hub2, &m, rev)
    })
    .await;
    match rendered {
        Ok(Ok(h)) => {
            let mut r = h.into_response();
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-cache"),
            );
            r
        }
        Ok(Err(e)) => error_page(e),
        Err(e) => error_page(e.into()),
    }
}

/// The file names `dlv checkout` (and so the download API) gives a version's files.
fn file_names(r: &VersionRecord) -> Vec<(String, u64)> {
    let base = |p: &str, fallback: String| -> String {
        p.rsplit('/')
            .next()
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .map(str::to_string)
            .unwrap_or(fallback)
    };
    let mut v = Vec::new();
    if let Some(n) = &r.network {
        match &n.source {
            Some(src) => v.push((base(&src.path, format!("{}.prototxt", r.name)), src.size)),
            None => v.push((format!("{}.prototxt", r.name), 0)),
        }
    }
    for f in &r.files {
        v.push((f.path.clone(), f.size));
    }
    if let Some(w) = &r.weights_file {
        v.push((base(w, format!("{}.safetensors", r.name)), r.weight_bytes()));
    }
    v
}

fn render_model(hub: &Hub, m: &ModelView, rev: &str) -> Result<Html<String>> {
    let id = resolve_rev(m, rev)?;
    let r = hub.repo.get(&id)?;
    let key = esc(&m.key());
    let mut b = String::new();
    let private = if m.entry.private {
        " <span class=\"private\">private</span>"
    } else {
        ""
    };
    let _ = write!(b, "<h1 id=\"model-name\">{key}{private}</h1>");
    if !m.entry.description.is_empty() {
        let _ = write!(b, "<p id=\"description\">{}</p>", esc(&m.entry.description));
    }
    if !m.entry.tags.is_empty() {
        b.push_str("<p>");
        for t in &m.entry.tags {
            let _ = write!(
                b,
                "<a class=\"tag\" href=\"/?filter=tag%3D{}\">{}</a>",
                percent_encode(t),
                esc(t)
            );
        }
        b.push_str("</p>");
    }
    let _ = write!(
        b,
        "<h2>Version <code id=\"version\">{}</code></h2><table id=\"summary\"><tr><th>id</th><td><code>{}</code></td></tr><tr><th>message</th><td>{}</td></tr><tr><th>author</th><td>{}</td></tr><tr><th>created</th><td>{}</td></tr><tr><th>parameters</th><td>{} ({})</td></tr></table>",
        short(&id),
        esc(&id),
        esc(&r.message),
        esc(&r.author),
        time(r.created_ms),
        r.param_count(),
        human(r.weight_bytes())
    );

    // Files and download links (the Hugging Face compatible resolve URLs).
    b.push_str("<h2>Files</h2><table id=\"files\"><tr><th>file</th><th>size</th></tr>");
    for (f, size) in file_names(&r) {
        let _ = write!(
            b,
            "<tr><td><a class=\"download\" href=\"/{key}/resolve/{}/{}\">{}</a></td><td>{}</td></tr>",
            sha(&id),
            f.split('/').map(percent_encode).collect::<Vec<_>>().join("/"),
            esc(&f),
            human(size)
        );
    }
    b.push_str("</table>");

    // Lineage: ancestors up the first-parent chain and every parent of this version.
    b.push_str("<h2>Lineage</h2><ul id=\"lineage\">");
    let link = |vid: &str, rec: Option<&VersionRecord>| -> String {
        let label = format!(
            "{}@{}",
            rec.map(|x| x.name.as_str()).unwrap_or("?"),
            short(vid)
        );
        if m.entry.versions.iter().any(|v| v == vid) {
            format!("<a href=\"/{key}?v={}\">{}</a>", short(vid), esc(&label))
        } else {
            esc(&label)
        }
    };
    let mut cur = r.clone();
    let mut depth = 0;
    if cur.parents.is_empty() {
        b.push_str("<li class=\"muted\">no parents (a root version)</li>");
    }
    while let Some(p) = cur.parents.first().cloned() {
        let pr = hub.repo.get(&p).ok();
        let extra = if cur.parents.len() > 1 {
            format!(" (and {} more parent(s))", cur.parents.len() - 1)
        } else {
            String::new()
        };
        let _ = write!(
            b,
            "<li class=\"parent\">{}{} <span class=\"muted\">{}</span></li>",
            link(&p, pr.as_ref()),
            extra,
            esc(pr.as_ref().map(|x| x.message.as_str()).unwrap_or(""))
        );
        depth += 1;
        match pr {
            Some(x) if depth < 50 => cur = x,
            _ => break,
        }
    }
    b.push_str("</ul>");
    let children: Vec<String> = hub.repo.children_of(&id)?;
    if !children.is_empty() {
        b.push_str("<p>children: ");
        for c in &children {
            let cr = hub.repo.get(c).ok();
            let _ = write!(b, "{} ", link(c, cr.as_ref()));
        }
        b.push_str("</p>");
    }

    // The network.
    if let Some(net) = hub.repo.network(&r)? {
        let _ = write!(b, "<h2>Network <span class=\"muted\">{} ({} layers)</span></h2><div class=\"net\" id=\"network\">{}</div>", esc(&net.name), net.len(), network(&net));
    }

    // Metrics and hyper-parameters.
    if !r.series.is_empty() {
        b.push_str("<h2>Metrics</h2><div class=\"charts\" id=\"metrics\">");
        for s in &r.series {
            b.push_str(&series(s));
        }
        b.push_str("</div><table><tr><th>series</th><th>points</th><th>last</th></tr>");
        for s in &r.series {
            let last = s
                .values
                .last()
                .map(|v| format!("{v:.4}"))
                .unwrap_or_default();
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{last}</td></tr>",
                esc(&s.name),
                s.values.len()
            );
        }
        b.push_str("</table>");
    }
    if !r.hyper.is_empty() || !r.extra.is_empty() {
        b.push_str("<h2>Hyper-parameters and metadata</h2><table id=\"hyper\">");
        for h in r.hyper.iter().chain(&r.extra) {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td></tr>",
                esc(&h.key),
                esc(&h.text)
            );
        }
        b.push_str("</table>");
    }
    if !r.tensors.is_empty() {
        b.push_str("<h2>Weights</h2><table id=\"weights\"><tr><th>tensor</th><th>layer</th><th>dtype</th><th>shape</th><th>size</th></tr>");
        for t in &r.tensors {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td></tr>",
                esc(&t.name),
                esc(t.layer.as_deref().unwrap_or("")),
                esc(&t.dtype),
                t.shape,
                human(t.bytes)
            );
        }
        b.push_str("</table>");
    }

    // Every version of the model.
    b.push_str("<h2>Versions</h2><table id=\"versions\"><tr><th>version</th><th>created</th><th>author</th><th>message</th></tr>");
    for vid in m.entry.versions.iter().rev() {
        let Ok(vr) = hub.repo.get(vid) else { continue };
        let cur = if *vid == id { " <b>(shown)</b>" } else { "" };
        let _ = write!(
            b,
            "<tr class=\"version\"><td><a href=\"/{key}?v={s}\"><code>{s}</code></a>{cur}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            time(vr.created_ms),
            esc(&vr.author),
            esc(&vr.message),
            s = short(vid),
        );
    }
    b.push_str("</table>");
    let _ = write!(
        b,
        "<p class=\"muted\">pull with <code>dlv pull {key}@{}</code></p>",
        short(&id)
    );
    Ok(page(&m.key(), &b))
}
