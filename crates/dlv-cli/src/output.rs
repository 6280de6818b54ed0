//! Errors and hints as the user sees them, exit codes, and small formatting helpers.

use std::io::{self, Write};

use dlv_store::StoreError;

/// Exit codes: 1 user error (bad input, unknown ref, nothing staged), 2 usage (clap),
/// 3 repository damage found (corrupt objects or records), 4 busy (locked).
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<StoreError>() {
        Some(StoreError::CorruptObject { .. } | StoreError::MissingObject { .. } | StoreError::CorruptMeta { .. }) => 3,
        Some(StoreError::Locked { .. }) => 4,
        _ => {
            if e.downcast_ref::<FsckFailed>().is_some() {
                3
            } else {
                1
            }
        }
    }
}

/// fsck found problems (already printed).
#[derive(Debug)]
pub struct FsckFailed(pub usize);


impl std::fmt::Display for FsckFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fsck found {} problem(s)", self.0)
    }
}

impl std::error::Error for FsckFailed {}

pub fn hint(e: &anyhow::Error) -> Option<&'static str> {
    Some(match e.downcast_ref::<StoreError>()? {
        StoreError::NotARepository(_) => "run `dlv init` to create a repository here, or pass --repo DIR",
        StoreError::NothingStaged => "stage files first with `dlv add FILE…`",
        StoreError::Locked { .. } => "wait for that command to finish (the lock goes away with its process)",
        StoreError::UnknownRef(_) => "see `dlv list` for the versions in this repository",
        StoreError::AmbiguousRef { .. } => "give more digits of the id",
        StoreError::CorruptObject { .. } | StoreError::MissingObject { .. } => {
            "run `dlv fsck` to see every damaged object and the versions that use them"
        }
        StoreError::AlreadyExists(_) => "use the existing repository, or remove its .dlv folder",
        _ => return None,
    })
}

pub fn report_error(e: &anyhow::Error) {
    let mut stderr = io::stderr().lock();
    let _ = write!(stderr, "error: {e}");
    for cause in e.chain().skip(1) {
        let _ = write!(stderr, ": {cause}");
    }
    let _ = writeln!(stderr);
    if let Some(h) = hint(e) {
        let _ = writeln!(stderr, "hint: {h}");
    }
}

pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe))
}

/// Formats milliseconds since the epoch as `YYYY-MM-DD HH:MM` UTC.
pub fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// Human-readable byte count.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
