//! One function per command.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use dlv_store::{short, CommitOptions, ListFilter, Precision, Repository, Version};
use serde_json::json;

use crate::output::{bytes, time, FsckFailed};
use crate::progress::Bars;
use crate::{CheckoutArgs, Cli, Command, CommitArgs, DescArgs, ListArgs};

pub fn run(cli: &Cli) -> Result<()> {
    let start = cli.repo.clone().unwrap_or_else(|| PathBuf::from("."));
    let out = &mut io::stdout().lock();
    match &cli.command {
        Command::Init => init(cli, &start, out),
        Command::Add { files } => add(cli, &start, files, out),
        Command::Reset { files } => {
            let repo = Repository::open_writer(&start)?;
            let n = repo.unstage(files)?;
            if cli.json {
                writeln!(out, "{}", json!({ "unstaged": n }))?;
            } else if !cli.quiet {
                writeln!(out, "unstaged {n} file(s)")?;
            }
            Ok(())
        }
        Command::Status => status(cli, &start, out),
        Command::Commit(args) => commit(cli, &start, args, out),
        Command::List(args) => list(cli, &start, args, out),
        Command::Desc(args) => desc(cli, &start, args, out),
        Command::Diff(args) => crate::diff::run(cli, &start, args, out),
        Command::Checkout(args) => checkout(cli, &start, args, out),
        Command::Query(args) => crate::query::query(cli, &start, args, out),
        Command::Train(args) => crate::train::train(cli, &start, args, out),
        Command::Eval(args) => crate::train::eval(cli, &start, args, out),
        Command::Fsck => fsck(cli, &start, out),
        Command::Gc { dry_run, repack, recode } => gc(cli, &start, *dry_run, *repack, *recode, out),
        Command::Remote(c) => crate::remote::remote(cli, c, out),
        Command::Login(args) => crate::remote::login(cli, args, out),
        Command::Publish(args) => crate::remote::publish(cli, &start, args, out),
        Command::Search(args) => crate::remote::search(cli, args, out),
        Command::Pull(args) => crate::remote::pull(cli, &start, args, out),
    }
}

fn init(cli: &Cli, start: &Path, out: &mut dyn Write) -> Result<()> {
    std::fs::create_dir_all(start).with_context(|| format!("cannot create {}", start.display()))?;
    let repo = Repository::init(start)?;
    if cli.json {
        writeln!(out, "{}", json!({ "repository": repo.dot_dir() }))?;
    } else if !cli.quiet {
        writeln!(out, "initialised empty dlv repository in {}", repo.dot_dir().display())?;
    }
    Ok(())
}

fn add(cli: &Cli, start: &Path, files: &[PathBuf], out: &mut dyn Write) -> Result<()> {
    let repo = Repository::open_writer(start)?;
    let staged = repo.add(files)?;
    if cli.json {
        writeln!(out, "{}", serde_json::to_string(&staged)?)?;
    } else if !cli.quiet {
        for s in staged {
            writeln!(out, "staged {:8} {} ({})", s.role.as_str(), s.path, bytes(s.size))?;
        }
    }
    Ok(())
}

fn status(cli: &Cli, start: &Path, out: &mut dyn Write) -> Result<()> {
    let repo = Repository::open(start)?;
    let staged = repo.staged()?;
    if cli.json {
        writeln!(out, "{}", json!({ "staged": staged, "versions": repo.len() }))?;
        return Ok(());
    }
    if staged.is_empty() {
        writeln!(out, "nothing staged ({} version(s) in the repository)", repo.len())?;
    } else {
        writeln!(out, "staged for the next commit:")?;
        for s in staged {
            writeln!(out, "  {:8} {} ({})", s.role.as_str(), s.path, bytes(s.size))?;
        }
    }
    Ok(())
}

fn parse_date(s: &str) -> Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc().timestamp_millis());
        }
    }
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S") {
        return Ok(t.and_utc().timestamp_millis());
    }
    bail!("cannot read date '{s}': use RFC 3339 (2015-11-22T10:00:00Z) or YYYY-MM-DD")
}

fn author(args: &CommitArgs) -> String {
    args.author
        .clone()
        .or_else(|| std::env::var("DLV_AUTHOR").ok())
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .unwrap_or_else(|| "unknown".to_string())
}

fn commit(cli: &Cli, start: &Path, args: &CommitArgs, out: &mut dyn Write) -> Result<()> {
    let repo = Repository::open_writer(start)?;
    let created_ms = match &args.date {
        Some(d) => Some(parse_date(d)?),
        None => match std::env::var("DLV_COMMIT_DATE") {
            Ok(d) => Some(parse_date(&d)?),
            Err(_) => None,
        },
    };
    let opts = CommitOptions {
        name: args.name.clone(),
        message: args.message.clone(),
        author: author(args),
        parents: args.parents.clone(),
        created_ms,
    };
    let bars = Bars::new(cli.quiet || cli.json);
    let outcome = repo.commit(&opts, &bars)?;
    let r = &outcome.record;
    if let Some(report) = &outcome.matching {
        let problems = report.unmatched_tensors.len() + report.missing_blobs.len() + report.wrong_shape.len();
        if problems > 0 && !cli.quiet {
            eprintln!("warning: weights do not fully match the network:\n{report}");
        }
    }
    if cli.json {
        let matching = outcome.matching.as_ref().map(|m| {
            json!({
                "matched": m.matched.len(),
                "unmatched_tensors": m.unmatched_tensors,
                "missing_blobs": m.missing_blobs,
                "wrong_shape": m.wrong_shape.iter().map(|w| json!({"layer": w.layer, "blob": w.blob, "expected": w.expected, "found": w.found})).collect::<Vec<_>>(),
            })
        });
        writeln!(
            out,
            "{}",
            json!({
                "id": outcome.id, "name": r.name, "parents": r.parents, "tensors": r.tensors.len(),
                "objects_written": outcome.objects_written, "bytes_written": outcome.bytes_written,
                "matching": matching,
            })
        )?;
    } else if !cli.quiet {
        writeln!(
            out,
            "committed {}@{} ({} tensor(s), {} parameter(s); {} new object(s), {} written)",
            r.name,
            short(&outcome.id),
            r.tensors.len(),
            r.param_count(),
            outcome.objects_written,
            bytes(outcome.bytes_written)
        )?;
        for p in &r.parents {
            writeln!(out, "  parent {}", short(p))?;
        }
    }
    Ok(())
}

fn version_json(v: &Version) -> serde_json::Value {
    let r = &v.record;
    json!({
        "id": v.id,
        "short": short(&v.id),
        "name": r.name,
        "parents": r.parents,
        "message": r.message,
        "author": r.author,
        "created": time(r.created_ms),
        "created_ms": r.created_ms,
        "tensors": r.tensors.len(),
        "parameters": r.param_count(),
        "weight_bytes": r.weight_bytes(),
        "network": r.network.as_ref().map(|n| json!({"name": n.name, "layers": n.layers})),
    })
}

fn list(cli: &Cli, start: &Path, args: &ListArgs, out: &mut dyn Write) -> Result<()> {
    let repo = Repository::open(start)?;
    let filter = ListFilter {
        model_name: args.model_name.clone(),
        commit_msg: args.commit_msg.clone(),
        last: args.last,
    };
    let versions = repo.list(&filter)?;
    if cli.json {
        let arr: Vec<_> = versions.iter().map(version_json).collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&arr)?)?;
        return Ok(());
    }
    if versions.is_empty() {
        writeln!(out, "no versions")?;
        return Ok(());
    }
    // Lineage as a forest: a version hangs under its first parent when that parent is listed.
    let shown: HashSet<&str> = versions.iter().map(|v| v.id.as_str()).collect();
    let mut kids: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut roots = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        match v.record.parents.first().filter(|p| shown.contains(p.as_str())) {
            Some(p) => kids.entry(p.as_str()).or_default().push(i),
            None => roots.push(i),
        }
    }
    fn walk(
        out: &mut dyn Write,
        versions: &[Version],
        kids: &BTreeMap<&str, Vec<usize>>,
        i: usize,
        prefix: &str,
        last: bool,
        root: bool,
    ) -> io::Result<()> {
        let v = &versions[i];
        let r = &v.record;
        let branch = if root { "" } else if last { "└─ " } else { "├─ " };
        let extra_parents = if r.parents.len() > 1 {
            format!("  (merge of {})", r.parents.iter().map(|p| short(p)).collect::<Vec<_>>().join(", "))
        } else {
            String::new()
        };
        writeln!(
            out,
            "{prefix}{branch}{}@{}  {}  {}  {}{}",
            r.name,
            short(&v.id),
            time(r.created_ms),
            r.author,
            r.message,
            extra_parents
        )?;
        let child_prefix = if root { prefix.to_string() } else { format!("{prefix}{}", if last { "   " } else { "│  " }) };
        if let Some(children) = kids.get(v.id.as_str()) {
            for (k, &c) in children.iter().enumerate() {
                walk(out, versions, kids, c, &child_prefix, k + 1 == children.len(), false)?;
            }
        }
        Ok(())
    }
    for &r in &roots {
        walk(out, &versions, &kids, r, "", true, true)?;
    }
    Ok(())
}

fn desc(cli: &Cli, start: &Path, args: &DescArgs, out: &mut dyn Write) -> Result<()> {
    crate::desc::run(cli, start, args, out)
}

fn checkout(cli: &Cli, start: &Path, args: &CheckoutArgs, out: &mut dyn Write) -> Result<()> {
    let precision = Precision::parse(&args.precision)
        .with_context(|| format!("unknown precision '{}' (expected fp32, bf16 or fp16)", args.precision))?;
    let repo = Repository::open(start)?;
    let id = repo.resolve(&args.rev)?;
    let dir = args.to.clone().unwrap_or_else(|| PathBuf::from("."));
    let bars = Bars::new(cli.quiet || cli.json);
    let outcome = repo.checkout(&id, &dir, precision, args.force, &bars)?;
    if cli.json {
        let read = repo.objects().bytes_read();
        writeln!(out, "{}", json!({ "id": id, "files": outcome.files, "bytes": outcome.bytes, "object_bytes_read": read }))?;
    } else if !cli.quiet {
        for f in &outcome.files {
            writeln!(out, "wrote {}", f.display())?;
        }
    }
    Ok(())
}

fn fsck(cli: &Cli, start: &Path, out: &mut dyn Write) -> Result<()> {
    let repo = Repository::open(start)?;
    let report = repo.fsck()?;
    if cli.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        for p in &report.problems {
            let what = match (&p.version, &p.object) {
                (Some(v), Some(o)) => format!("version {v}, object {o}"),
                (Some(v), None) => format!("version {v}"),
                (None, Some(o)) => format!("object {o}"),
                (None, None) => String::new(),
            };
            writeln!(out, "{what}: {}", p.msg)?;
        }
        writeln!(
            out,
            "checked {} version(s), {} object(s) ({}); {} unreferenced object(s); {} problem(s)",
            report.versions,
            report.objects_checked,
            bytes(report.bytes_checked),
            report.unreferenced,
            report.problems.len()
        )?;
    }
    if !report.is_ok() {
        return Err(FsckFailed(report.problems.len()).into());
    }
    Ok(())
}

fn gc(cli: &Cli, start: &Path, dry_run: bool, repack: bool, recode: bool, out: &mut dyn Write) -> Result<()> {
    let repo = Repository::open_writer(start)?;
    let repacked = if repack {
        let bars = Bars::new(cli.quiet || cli.json);
        Some(repo.repack(recode, &bars)?)
    } else {
        None
    };
    let report = repo.gc(dry_run)?;
    if cli.json {
        let mut v = serde_json::to_value(&report)?;
        if let (Some(r), Some(map)) = (&repacked, v.as_object_mut()) {
            map.insert("repack".into(), serde_json::to_value(r)?);
        }
        writeln!(out, "{v}")?;
    } else if !cli.quiet {
        if let Some(r) = &repacked {
            writeln!(
                out,
                "repacked {} tensor object(s): rewrote {}, {} keyframe(s), longest chain {}, {} -> {}",
                r.tensors,
                r.rewritten,
                r.keyframes,
                r.longest_chain,
                bytes(r.bytes_before),
                bytes(r.bytes_after)
            )?;
        }
        let verb = if dry_run { "would remove" } else { "removed" };
        writeln!(
            out,
            "{verb} {} object(s) ({}), kept {}",
            report.removed,
            bytes(report.bytes_freed),
            report.kept
        )?;
    }
    Ok(())
}
