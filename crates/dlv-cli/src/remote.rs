//! The hub client: `dlv remote`, `dlv login`, `dlv publish`, `dlv search`, `dlv pull`.
//!
//! Remotes and tokens live in `remotes.toml` in the user's config folder (`$DLV_CONFIG_DIR`,
//! else `$XDG_CONFIG_HOME/dlv`, else `~/.config/dlv`), written with mode 0600. `DLV_TOKEN`
//! overrides a stored token. Transfers negotiate by id (only what the other side lacks
//! crosses the wire) and stream object by object; every downloaded object is verified
//! against its id before it is stored, and a version is recorded only once all its objects are.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use dlv_store::{is_valid_id, short, ObjectStore, Progress, Repository, VersionRecord};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::output::bytes;
use crate::progress::Bars;
use crate::Cli;

#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Add a hub (the first one added becomes the default).
    Add { name: String, url: String },
    /// List configured hubs.
    List,
    /// Forget a hub and its token.
    Remove { name: String },
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Hub to log in to (default: the default remote).
    #[arg(long)]
    pub remote: Option<String>,
    /// API token (else $DLV_TOKEN, else prompted on the terminal).
    #[arg(long)]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Version: NAME, NAME~N, NAME@PREFIX or an id prefix; published as OWNER/NAME.
    pub rev: String,
    #[arg(long)]
    pub remote: Option<String>,
    /// Make the model private (visible only to its owner).
    #[arg(long)]
    pub private: bool,
    /// Model description shown on the hub.
    #[arg(long)]
    pub description: Option<String>,
    /// Tags (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Words to find in names, descriptions and tags (all must match).
    pub text: Vec<String>,
    #[arg(long)]
    pub remote: Option<String>,
    /// Metadata filter such as `accuracy>0.9` (repeatable; all must hold).
    #[arg(long = "filter", value_name = "EXPR")]
    pub filters: Vec<String>,
    /// Sort by updated, created, name, params or a metadata key.
    #[arg(long)]
    pub sort: Option<String>,
    /// asc or desc.
    #[arg(long)]
    pub order: Option<String>,
    /// Results per page.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    #[arg(long, default_value_t = 1)]
    pub page: usize,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// OWNER/NAME or OWNER/NAME@ID (an id prefix); default the model's latest version.
    pub model: String,
    #[arg(long)]
    pub remote: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Configuration

#[derive(Debug, Default, Serialize, Deserialize)]
struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default: Option<String>,
    #[serde(default)]
    remotes: BTreeMap<String, RemoteEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RemoteEntry {
    url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
}

fn config_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("DLV_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("dlv"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".config").join("dlv")),
        None => bail!("cannot find a config folder: set DLV_CONFIG_DIR or HOME"),
    }
}

fn config_path() -> Result<PathBuf> {
    Ok(config_dir()?.join("remotes.toml"))
}

fn load_config() -> Result<Config> {
    let path = config_path()?;
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            toml::from_str(&text).with_context(|| format!("cannot read {}", path.display()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Config::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes the config through a temporary file created with mode 0600 (it holds tokens).
fn save_config(cfg: &Config) -> Result<()> {
    let path = config_path()?;
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let text = toml::to_string(cfg).context("cannot write the configuration")?;
    let tmp = dir.join(format!(".remotes.toml.{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The remote to use: `--remote`, else the default, else the only one.
fn pick<'c>(cfg: &'c Config, name: Option<&str>) -> Result<(String, &'c RemoteEntry)> {
    let name = match name.map(str::to_string).or_else(|| cfg.default.clone()) {
        Some(n) => n,
        None if cfg.remotes.len() == 1 => cfg.remotes.keys().next().cloned().unwrap_or_default(),
        None => bail!("no hub configured; add one with `dlv remote add NAME URL`"),
    };
    let r = cfg.remotes.get(&name).ok_or_else(|| {
        anyhow!("no remote named '{name}'; see `dlv remote list`, or `dlv remote add {name} URL`")
    })?;
    Ok((name, r))
}

fn token_for(r: &RemoteEntry) -> Option<String> {
    std::env::var("DLV_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().to_string())
        .or_else(|| r.token.clone())
}

// ---------------------------------------------------------------------------------------------
// HTTP

struct Hub {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// Largest JSON answer read (lineage of many versions).
const JSON_LIMIT: u64 = 256 << 20;

impl Hub {
    fn new(url: &str, token: Option<String>) -> Hub {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Hub {
            base: url.trim_end_matches('/').to_string(),
            token,
            agent,
        }
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    fn need_token(&self) -> Result<()> {
        if self.token.is_none() {
            bail!(
                "not logged in to {}; run `dlv login` (or set DLV_TOKEN)",
                self.base
            );
        }
        Ok(())
    }

    fn check(
        &self,
        what: &str,
        resp: ureq::http::Response<ureq::Body>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let mut resp = resp;
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 10)
            .read_to_string()
            .unwrap_or_default();
        let msg = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(text);
        let hint = match status.as_u16() {
            401 => " (hint: run `dlv login` with a valid token)",
            _ => "",
        };
        bail!("{what}: hub answered {status}: {}{hint}", msg.trim())
    }

    fn get_json(&self, path: &str) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .auth(self.agent.get(&url))
            .call()
            .with_context(|| format!("cannot reach {url}"))?;
        let mut resp = self.check(&format!("GET {path}"), resp)?;
        Ok(resp
            .body_mut()
            .with_config()
            .limit(JSON_LIMIT)
            .read_json()?)
    }

    fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .auth(self.agent.post(&url))
            .send_json(body)
            .with_context(|| format!("cannot reach {url}"))?;
        let mut resp = self.check(&format!("POST {path}"), resp)?;
        Ok(resp
            .body_mut()
            .with_config()
            .limit(JSON_LIMIT)
            .read_json()?)
    }
}

fn missing(v: &Value) -> Vec<String> {
    v.get("missing")
        .and_then(|m| m.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Commands

pub fn remote(cli: &Cli, cmd: &RemoteCommand, out: &mut dyn Write) -> Result<()> {
    let mut cfg = load_config()?;
    match cmd {
        RemoteCommand::Add { name, url } => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("'{url}' is not an http:// or https:// URL");
            }
            if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '/') {
                bail!("'{name}' is not a usable remote name");
            }
            let entry = cfg.remotes.entry(name.clone()).or_insert(RemoteEntry {
                url: url.clone(),
                token: None,
                user: None,
            });
            if entry.url != *url {
                // A different hub: the old token is not for it.
                *entry = RemoteEntry {
                    url: url.clone(),
                    token: None,
                    user: None,
                };
            }
            if cfg.default.is_none() {
                cfg.default = Some(name.clone());
            }
            save_config(&cfg)?;
            if cli.json {
                writeln!(out, "{}", json!({ "remote": name, "url": url }))?;
            } else if !cli.quiet {
                writeln!(out, "added remote {name} -> {url}")?;
            }
        }
        RemoteCommand::List => {
            if cli.json {
                let v: Vec<Value> = cfg
                    .remotes
                    .iter()
                    .map(|(n, r)| json!({ "name": n, "url": r.url, "user": r.user, "default": cfg.default.as_deref() == Some(n) }))
                    .collect();
                writeln!(out, "{}", json!(v))?;
            } else {
                for (n, r) in &cfg.remotes {
                    let mark = if cfg.default.as_deref() == Some(n) {
                        "*"
                    } else {
                        " "
                    };
                    let who = r
                        .user
                        .as_deref()
                        .map(|u| format!(" (as {u})"))
                        .unwrap_or_default();
                    writeln!(out, "{mark} {n}\t{}{who}", r.url)?;
                }
            }
        }
        RemoteCommand::Remove { name } => {
            if cfg.remotes.remove(name).is_none() {
                bail!("no remote named '{name}'");
            }
            if cfg.default.as_deref() == Some(name) {
                cfg.default = cfg.remotes.keys().next().cloned();
            }
            save_config(&cfg)?;
        }
    }
    Ok(())
}

pub fn login(cli: &Cli, args: &LoginArgs, out: &mut dyn Write) -> Result<()> {
    let mut cfg = load_config()?;
    let (name, entry) = pick(&cfg, args.remote.as_deref())?;
    let url = entry.url.clone();
    let token = match args
        .token
        .clone()
        .or_else(|| std::env::var("DLV_TOKEN").ok())
    {
        Some(t) => t,
        None => {
            if !io::stdin().is_terminal() {
                bail!(
                    "no token given: pass --token, set DLV_TOKEN, or run on a terminal to be asked"
                );
            }
            eprint!("token for {url}: ");
            let _ = io::stderr().flush();
            let mut line = String::new();
            io::stdin().lock().read_line(&mut line)?;
            line
        }
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("empty token");
    }
    let hub = Hub::new(&url, Some(token.clone()));
    let who = hub
        .get_json("/api/v1/whoami")
        .context("the hub refused the token")?;
    let user = who
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_string();
    if let Some(e) = cfg.remotes.get_mut(&name) {
        e.token = Some(token);
        e.user = Some(user.clone());
    }
    save_config(&cfg)?;
    if cli.json {
        writeln!(
            out,
            "{}",
            json!({ "remote": name, "url": url, "user": user })
        )?;
    } else if !cli.quiet {
        writeln!(out, "logged in to {name} ({url}) as {user}")?;
    }
    Ok(())
}

/// Streams an object's decoded bytes from a worker thread, as a `Read` for the request body.
struct ObjectReader<'p> {
    rx: mpsc::Receiver<Result<Vec<u8>, String>>,
    buf: Vec<u8>,
    pos: usize,
    progress: &'p dyn Progress,
    sent: u64,
}

struct ChanWriter(mpsc::SyncSender<Result<Vec<u8>, String>>);

impl Write for ChanWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .send(Ok(buf.to_vec()))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "upload stopped"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'p> ObjectReader<'p> {
    fn spawn(store: &ObjectStore, id: &str, progress: &'p dyn Progress) -> ObjectReader<'p> {
        let (tx, rx) = mpsc::sync_channel(4);
        let store = store.clone();
        let id = id.to_string();
        std::thread::spawn(move || {
            let mut w = ChanWriter(tx.clone());
            if let Err(e) = store.get_into(&id, &mut w) {
                let _ = tx.send(Err(e.to_string()));
            }
        });
        ObjectReader {
            rx,
            buf: Vec::new(),
            pos: 0,
            progress,
            sent: 0,
        }
    }
}

impl Read for ObjectReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.buf.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(io::Error::other(e)),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        self.sent += n as u64;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

pub fn publish(cli: &Cli, start: &Path, args: &PublishArgs, out: &mut dyn Write) -> Result<()> {
    let cfg = load_config()?;
    let (rname, entry) = pick(&cfg, args.remote.as_deref())?;
    let hub = Hub::new(&entry.url, token_for(entry));
    hub.need_token()?;
    let repo = Repository::open(start)?;
    let head = repo.resolve(&args.rev)?;
    let lineage = repo.lineage(&head, usize::MAX)?;
    let ids: Vec<&str> = lineage.iter().map(|(id, _)| id.as_str()).collect();
    let lacking: HashSet<String> =
        missing(&hub.post_json("/api/v1/versions/missing", &json!({ "ids": ids }))?)
            .into_iter()
            .collect();
    let to_send: Vec<&(String, VersionRecord)> = lineage
        .iter()
        .filter(|(id, _)| lacking.contains(id))
        .collect();

    let mut objects: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for (_, r) in &to_send {
        for o in r.objects() {
            if seen.insert(o.to_string()) {
                objects.push(o.to_string());
            }
        }
    }
    let need = if objects.is_empty() {
        Vec::new()
    } else {
        missing(&hub.post_json("/api/v1/objects/missing", &json!({ "ids": objects }))?)
    };
    let store = repo.objects();
    let mut total_send = 0u64;
    let mut sizes = Vec::with_capacity(need.len());
    for id in &need {
        let n = store.decoded_len(id)?;
        sizes.push(n);
        total_send += n;
    }
    let full: u64 = {
        let mut s = HashSet::new();
        let mut t = 0u64;
        if let Some((_, r)) = lineage.last() {
            for o in r.objects() {
                if s.insert(o) {
                    t += store.decoded_len(o)?;
                }
            }
        }
        t
    };
    let bars = Bars::new(cli.quiet || cli.json);
    bars.begin(&format!("publishing to {rname}"), total_send);
    let mut sent = 0u64;
    for (id, len) in need.iter().zip(&sizes) {
        let url = format!("{}/api/v1/objects/{id}", hub.base);
        let mut reader = ObjectReader::spawn(store, id, &bars);
        let resp = hub
            .auth(hub.agent.put(&url))
            .header("Content-Length", len.to_string())
            .header("Content-Type", "application/octet-stream")
            .send(ureq::SendBody::from_reader(&mut reader));
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                bars.end();
                return Err(anyhow!(e).context(format!("uploading object {}", short(id))));
            }
        };
        if let Err(e) = hub.check(&format!("uploading object {}", short(id)), resp) {
            bars.end();
            return Err(e);
        }
        sent += reader.sent;
    }
    bars.end();
    let records: Vec<&VersionRecord> = to_send.iter().map(|(_, r)| r).collect();
    let mut req = json!({ "head": head, "records": records });
    if args.private {
        req["private"] = json!(true);
    }
    if let Some(d) = &args.description {
        req["description"] = json!(d);
    }
    if !args.tags.is_empty() {
        req["tags"] = json!(args.tags);
    }
    let res = hub.post_json("/api/v1/publish", &req)?;
    let model = res
        .get("model")
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_string();
    if cli.json {
        writeln!(
            out,
            "{}",
            json!({
                "model": model, "id": head, "remote": rname, "url": res.get("url"),
                "versions_sent": to_send.len(), "objects_sent": need.len(),
                "bytes_sent": sent, "full_bytes": full, "private": res.get("private"),
            })
        )?;
    } else if !cli.quiet {
        writeln!(
            out,
            "published {model}@{} to {rname} ({} version(s), {} object(s) uploaded, {} sent of {})",
            short(&head),
            to_send.len(),
            need.len(),
            bytes(sent),
            bytes(full)
        )?;
    }
    Ok(())
}

pub fn search(cli: &Cli, args: &SearchArgs, out: &mut dyn Write) -> Result<()> {
    let cfg = load_config()?;
    let (_, entry) = pick(&cfg, args.remote.as_deref())?;
    let hub = Hub::new(&entry.url, token_for(entry));
    let mut q = vec![("q".to_string(), args.text.join(" "))];
    for f in &args.filters {
        q.push(("filter".into(), f.clone()));
    }
    if let Some(s) = &args.sort {
        q.push(("sort".into(), s.clone()));
    }
    if let Some(o) = &args.order {
        q.push(("order".into(), o.clone()));
    }
    q.push(("per_page".into(), args.limit.to_string()));
    q.push(("page".into(), args.page.to_string()));
    let qs: Vec<String> = q
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    let res = hub.get_json(&format!("/api/v1/search?{}", qs.join("&")))?;
    if cli.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&res)?)?;
        return Ok(());
    }
    let results = res
        .get("results")
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    let total = res.get("total").and_then(|t| t.as_u64()).unwrap_or(0);
    if results.is_empty() {
        writeln!(out, "no models found")?;
        return Ok(());
    }
    for m in &results {
        let s = |v: &Value, k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let latest = m.get("latest").cloned().unwrap_or(Value::Null);
        let metrics: Vec<String> = latest
            .get("metadata")
            .and_then(|x| x.as_object())
            .map(|o| {
                o.iter()
                    .filter(|(k, _)| k.contains("accuracy") || k.contains("loss"))
                    .take(3)
                    .map(|(k, v)| format!("{k}={:.4}", v.as_f64().unwrap_or(f64::NAN)))
                    .collect()
            })
            .unwrap_or_default();
        let private = if m.get("private").and_then(|p| p.as_bool()) == Some(true) {
            " [private]"
        } else {
            ""
        };
        writeln!(
            out,
            "{}@{}{private}  {}  {} params  {}  {}",
            s(m, "id"),
            s(&latest, "short"),
            s(m, "updated").get(..10).unwrap_or_default(),
            latest
                .get("parameters")
                .and_then(|p| p.as_u64())
                .unwrap_or(0),
            metrics.join(" "),
            s(m, "description")
        )?;
    }
    if total as usize > results.len() {
        writeln!(
            out,
            "({} of {total} shown; --page N for more)",
            results.len()
        )?;
    }
    Ok(())
}

fn encode(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

pub fn pull(cli: &Cli, start: &Path, args: &PullArgs, out: &mut dyn Write) -> Result<()> {
    let (model, rev) = match args.model.split_once('@') {
        Some((m, r)) => (m, r),
        None => (args.model.as_str(), "main"),
    };
    let Some((owner, name)) = model.split_once('/') else {
        bail!("'{}' is not OWNER/NAME[@ID]", args.model);
    };
    let cfg = load_config()?;
    let (rname, entry) = pick(&cfg, args.remote.as_deref())?;
    let hub = Hub::new(&entry.url, token_for(entry));
    let repo = Repository::open_writer(start)?;
    let lin = hub.get_json(&format!(
        "/api/v1/models/{}/{}/lineage/{}",
        encode(owner),
        encode(name),
        encode(rev)
    ))?;
    let head = lin
        .get("head")
        .and_then(|h| h.as_str())
        .unwrap_or_default()
        .to_string();
    let versions = lin
        .get("versions")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    let mut records: Vec<(String, VersionRecord)> = Vec::new();
    for v in versions {
        let id = v
            .get("id")
            .and_then(|i| i.as_str())
            .unwrap_or_default()
            .to_string();
        if !is_valid_id(&id) {
            bail!("the hub sent a malformed version id");
        }
        let record: VersionRecord =
            serde_json::from_value(v.get("record").cloned().unwrap_or(Value::Null))
                .with_context(|| format!("the hub sent an unreadable record for {}", short(&id)))?;
        if record.id() != id {
            bail!(
                "the hub sent a record that does not match its id {}",
                short(&id)
            );
        }
        records.push((id, record));
    }
    if !is_valid_id(&head) || !records.iter().any(|(id, _)| *id == head) {
        bail!("the hub's lineage answer lacks its head version");
    }
    let mut todo: Vec<(String, VersionRecord)> = Vec::new();
    for (id, r) in records {
        if !repo.contains(&id)? {
            todo.push((id, r));
        }
    }
    // Each object is fetched once, through a version that references it.
    let mut fetch: Vec<(String, String)> = Vec::new();
    let mut seen = HashSet::new();
    for (vid, r) in &todo {
        for o in r.objects() {
            if !is_valid_id(o) {
                bail!("version {} references a malformed object id", short(vid));
            }
            if seen.insert(o.to_string()) && !repo.objects().contains(o) {
                fetch.push((vid.clone(), o.to_string()));
            }
        }
    }
    let bars = Bars::new(cli.quiet || cli.json);
    let total: u64 = todo
        .iter()
        .flat_map(|(_, r)| r.tensors.iter().map(|t| t.bytes))
        .sum();
    bars.begin(&format!("pulling {model}"), total);
    let mut received = 0u64;
    let result = (|| -> Result<()> {
        for (vid, oid) in &fetch {
            received += download(&hub, owner, name, vid, oid, repo.objects(), &bars)?;
        }
        Ok(())
    })();
    bars.end();
    result?;
    for (_, r) in &todo {
        repo.insert_version(r)?;
    }
    let head_name = todo
        .last()
        .map(|(_, r)| r.name.clone())
        .unwrap_or_else(|| name.to_string());
    if cli.json {
        writeln!(
            out,
            "{}",
            json!({ "model": model, "id": head, "remote": rname, "versions_added": todo.len(), "objects_fetched": fetch.len(), "bytes_received": received, "name": head_name })
        )?;
    } else if !cli.quiet {
        writeln!(
            out,
            "pulled {model}@{} ({} new version(s), {} object(s), {} received); `dlv checkout {head_name}` writes it out",
            short(&head),
            todo.len(),
            fetch.len(),
            bytes(received)
        )?;
    }
    Ok(())
}

/// Downloads one object into the store, verifying its length and hash before it is kept.
fn download(
    hub: &Hub,
    owner: &str,
    name: &str,
    vid: &str,
    oid: &str,
    store: &ObjectStore,
    progress: &dyn Progress,
) -> Result<u64> {
    let path = format!(
        "/api/v1/models/{}/{}/objects/{vid}/{oid}",
        encode(owner),
        encode(name)
    );
    let url = format!("{}{path}", hub.base);
    let resp = hub
        .auth(hub.agent.get(&url))
        .call()
        .with_context(|| format!("cannot reach {url}"))?;
    let resp = hub.check(&format!("downloading object {}", short(oid)), resp)?;
    let declared: Option<u64> = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut body = resp.into_body().into_reader();
    let mut w = store.writer()?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = body
            .read(&mut buf)
            .with_context(|| format!("downloading object {} (connection lost?)", short(oid)))?;
        if k == 0 {
            break;
        }
        hasher.update(&buf[..k]);
        w.write_all(&buf[..k])?;
        n += k as u64;
        progress.advance(k as u64);
    }
    if declared.is_some_and(|d| d != n) {
        bail!("object {} arrived truncated ({n} bytes)", short(oid));
    }
    let got = hasher.finalize().to_hex().to_string();
    if got != oid {
        bail!(
            "object {} arrived corrupted (content hashes to {})",
            short(oid),
            short(&got)
        );
    }
    w.finish()?;
    Ok(n)
}
