//! `dlv query`: run DQL (text or `-f FILE`), save queries, commit new versions, print a table
//! or JSON.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use dlv_store::{short, Repository};
use dql_exec::{ExecError, ExecOptions, Executor, Output, ResultRow, StoreCatalog};
use serde_json::json;

use crate::output::time;
use crate::Cli;

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The query, e.g. 'select m where m.name like "alexnet%"' (see `docs/DQL.md`).
    #[arg(value_name = "DQL", required_unless_present_any = ["file", "reindex"])]
    pub text: Option<String>,
    /// Read the query from a file.
    #[arg(short = 'f', long = "file", value_name = "FILE", conflicts_with = "text")]
    pub file: Option<PathBuf>,
    /// Record the new versions that slice, construct and evaluate make.
    #[arg(long)]
    pub commit: bool,
    /// Save the query under NAME (usable as `from "NAME"`) instead of running it.
    #[arg(long, value_name = "NAME")]
    pub save: Option<String>,
    /// Name of the new versions (default: SOURCE-slice, SOURCE-construct).
    #[arg(long = "as", value_name = "NAME")]
    pub result_name: Option<String>,
    /// Rebuild the query indexes first (for repositories made before they existed).
    #[arg(long)]
    pub reindex: bool,
    /// Also print the plan: pushed-down predicates, candidates, records and graphs read.
    #[arg(long)]
    pub explain: bool,
    /// Data folder (MNIST IDX or CIFAR-10 binary) for `evaluate` runs whose config and grid name
    /// none; with it, `evaluate` trains with the candle backend.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Test each rung of `evaluate` on the first N test examples only (default: all).
    #[arg(long = "test-limit", value_name = "N", requires = "data")]
    pub test_limit: Option<usize>,
}

pub fn query(cli: &Cli, start: &Path, args: &QueryArgs, out: &mut dyn Write) -> Result<()> {
    let text = match (&args.text, &args.file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => Some(std::fs::read_to_string(f).with_context(|| format!("cannot read query file {}", f.display()))?),
        (None, None) => None,
    };
    let write = args.commit || args.save.is_some() || args.reindex;
    let repo = if write { Repository::open_writer(start)? } else { Repository::open(start)? };
    if args.reindex {
        let n = repo.rebuild_index()?;
        if !cli.quiet && !cli.json {
            writeln!(out, "indexed {n} version(s)")?;
        }
    }
    let Some(text) = text else { return Ok(()) };
    let catalog = StoreCatalog::new(&repo);
    let opts = ExecOptions {
        commit: args.commit,
        author: std::env::var("DLV_AUTHOR").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| "unknown".into()),
        now_ms: chrono::Utc::now().timestamp_millis(),
        result_name: args.result_name.clone(),
        naive: false,
    };
    // Without --data no trainer is attached, and `evaluate` says it needs one.
    let trainer = args.data.as_ref().map(|d| {
        let mut t = trainer_candle::CandleTrainer::new(Some(d.clone()));
        t.test_limit = args.test_limit;
        t
    });
    let mut exec = Executor::new(&catalog, opts);
    if let Some(t) = &trainer {
        exec = exec.with_trainer(t);
    }
    if let Some(name) = &args.save {
        exec.save(name, &text).map_err(user)?;
        if cli.json {
            writeln!(out, "{}", json!({ "saved": name }))?;
        } else if !cli.quiet {
            writeln!(out, "saved query \"{name}\" (use it as: from \"{name}\")")?;
        }
        return Ok(());
    }
    let output = exec.run_text(&text).map_err(user)?;
    if cli.json {
        writeln!(out, "{}", to_json(&output))?;
    } else {
        print_table(&output, args, out)?;
    }
    Ok(())
}

/// Store errors keep their type so that the exit code says "repository damage" or "locked".
fn user(e: ExecError) -> anyhow::Error {
    match e {
        ExecError::Store(s) => anyhow::Error::from(s),
        ExecError::NoTrainer => anyhow::anyhow!("evaluate needs a trainer: give --data DIR (the training data) to run it with the candle backend"),
        other => anyhow::Error::from(other),
    }
}

fn label(r: &ResultRow) -> String {
    match &r.id {
        Some(id) => format!("{}@{}", r.name, short(id)),
        None => format!("{} (new)", r.name),
    }
}

fn to_json(o: &Output) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = o
        .rows
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "name": r.name,
                "created": time(r.created_ms),
                "created_ms": r.created_ms,
                "message": r.message,
                "matched": r.matched,
                "new": r.new,
                "committed": r.committed,
                "source": r.source,
                "layers": r.layers,
                "tensors": r.tensors,
                "changes": r.changes,
                "params": r.params.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
                "metrics": r.metrics.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "statement": o.statement,
        "rows": rows,
        "plan": {
            "pushed_down": o.stats.pushed_down,
            "candidates": o.stats.candidates,
            "records_read": o.stats.records_read,
            "graphs_loaded": o.stats.graphs_loaded,
            "runs": o.stats.runs,
        }
    })
}

fn clip(s: &str, n: usize) -> String {
    let first = s.lines().next().unwrap_or("");
    if first.chars().count() <= n {
        first.to_string()
    } else {
        let mut t: String = first.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Prints rows as columns padded to their widest cell (the last column is not padded).
fn table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| if i + 1 == n { c.to_string() } else { format!("{c:<width$}", width = w[i]) })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for r in rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

fn print_table(o: &Output, args: &QueryArgs, out: &mut dyn Write) -> Result<()> {
    match o.statement {
        "select" => {
            let rows: Vec<Vec<String>> = o
                .rows
                .iter()
                .map(|r| vec![label(r), time(r.created_ms), clip(&r.message, 48), r.matched.join(", ")])
                .collect();
            table(out, &["VERSION", "CREATED", "MESSAGE", "MATCHED"], &rows)?;
            writeln!(out, "{} version(s)", o.rows.len())?;
        }
        "evaluate" => {
            let rows: Vec<Vec<String>> = o
                .rows
                .iter()
                .map(|r| {
                    vec![
                        label(r),
                        r.source_label.clone().or_else(|| r.source.as_deref().map(|s| short(s).to_string())).unwrap_or_default(),
                        r.params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
                        r.metrics.iter().map(|(k, v)| format!("{k}={v:.4}")).collect::<Vec<_>>().join(" "),
                    ]
                })
                .collect();
            table(out, &["VERSION", "FROM", "PARAMS", "METRICS"], &rows)?;
            footer(o, out)?;
        }
        _ => {
            let rows: Vec<Vec<String>> = o
                .rows
                .iter()
                .map(|r| {
                    vec![
                        label(r),
                        r.source_label.clone().or_else(|| r.source.as_deref().map(|s| short(s).to_string())).unwrap_or_default(),
                        r.layers.map(|l| l.to_string()).unwrap_or_default(),
                        r.tensors.to_string(),
                        if r.changes.is_empty() { "no change".to_string() } else { r.changes.join("; ") },
                    ]
                })
                .collect();
            table(out, &["NEW VERSION", "FROM", "LAYERS", "TENSORS", "CHANGES"], &rows)?;
            footer(o, out)?;
        }
    }
    if args.explain {
        let s = &o.stats;
        writeln!(out, "plan: {}", if s.pushed_down.is_empty() { "full scan".to_string() } else { s.pushed_down.join("; ") })?;
        writeln!(
            out,
            "      {} candidate(s), {} record(s) read, {} graph(s) loaded{}",
            s.candidates,
            s.records_read,
            s.graphs_loaded,
            if s.runs > 0 { format!(", {} training run(s)", s.runs) } else { String::new() }
        )?;
    }
    Ok(())
}

fn footer(o: &Output, out: &mut dyn Write) -> Result<()> {
    let new = o.rows.iter().filter(|r| r.new && !r.changes.is_empty() && !r.changes.iter().all(|c| c == "no change")).count();
    let committed = o.rows.iter().filter(|r| r.committed).count();
    if committed > 0 {
        writeln!(out, "committed {committed} new version(s)")?;
    } else if new > 0 {
        writeln!(out, "{new} new version(s), not committed: run again with --commit to record them")?;
    } else if o.rows.is_empty() {
        writeln!(out, "no version matched")?;
    }
    Ok(())
}
