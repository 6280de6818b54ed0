//! Maintenance: `fsck` (verify every record, reference, object and delta chain), `gc` (remove
//! objects nothing needs: no version references them and no kept delta uses them as a base) and
//! `repack` (re-plan the delta bases of the whole repository).

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::cmp::Reverse;

use serde::Serialize;

use crate::codec::{StorageConfig, TensorLayout};
use crate::commit::Progress;
use crate::record::VersionRecord;
use crate::repo::{short, Repository};
use crate::{DType, Result, StoreError};

/// What a repack did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RepackReport {
    /// Distinct tensor objects planned.
    pub tensors: usize,
    /// Objects rewritten (new base, now materialised, or converted from a legacy codec).
    pub rewritten: usize,
    /// Tensors stored whole in the new plan.
    pub keyframes: usize,
    /// Longest delta chain of the plan.
    pub longest_chain: usize,
    /// Stored bytes of the planned objects before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// One problem fsck found.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    /// The version concerned, if any.
    pub version: Option<String>,
    /// The object concerned, if any.
    pub object: Option<String>,
    pub msg: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct FsckReport {
    pub versions: usize,
    pub objects_checked: usize,
    pub bytes_checked: u64,
    /// Objects present that no version references (gc would remove them).
    pub unreferenced: usize,
    pub problems: Vec<Problem>,
}

impl FsckReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct GcReport {
    pub kept: usize,
    pub removed: usize,
    pub bytes_freed: u64,
    pub temp_files_removed: usize,
}

impl Repository {
    /// Verifies every version record (validation, id), its parents and name index entries, and
    /// every object it references (present, decodes, hashes to its id).
    pub fn fsck(&self) -> Result<FsckReport> {
        let mut report = FsckReport::default();
        let max_chain = StorageConfig::load(self.dot_dir())?.max_chain;
        let mut referenced = BTreeSet::new();
        let mut checked = BTreeSet::new();
        for item in self.versions.iter() {
            let (k, v) = item?;
            let id = String::from_utf8_lossy(&k).to_string();
            report.versions += 1;
            let record = match VersionRecord::decode(&format!("version {id}"), &v) {
                Ok(r) => r,
                Err(e) => {
                    report.problems.push(Problem { version: Some(id), object: None, msg: e.to_string() });
                    continue;
                }
            };
            let vid = Some(id.clone());
            if record.id() != id {
                report.problems.push(Problem {
                    version: vid.clone(),
                    object: None,
                    msg: format!("record hashes to {}, not to its id", short(&record.id())),
                });
            }
            for p in &record.parents {
                if !self.contains(p)? {
                    report.problems.push(Problem { version: vid.clone(), object: None, msg: format!("parent {} is missing", short(p)) });
                }
            }
            for obj in record.objects() {
                referenced.insert(obj.to_string());
                if !checked.insert(obj.to_string()) {
                    continue;
                }
                if let Some(msg) = self.check_chain(obj, max_chain) {
                    report.problems.push(Problem {
                        version: Some(format!("{}@{}", record.name, short(&id))),
                        object: Some(obj.to_string()),
                        msg,
                    });
                    continue;
                }
                match self.objects().verify(obj) {
                    Ok(n) => {
                        report.objects_checked += 1;
                        report.bytes_checked += n;
                    }
                    Err(e) => {
                        let msg = match &e {
                            StoreError::MissingObject { .. } => "object is missing".to_string(),
                            StoreError::CorruptObject { msg, .. } => format!("object is corrupt: {msg}"),
                            other => other.to_string(),
                        };
                        report.problems.push(Problem {
                            version: Some(format!("{}@{}", record.name, short(&id))),
                            object: Some(obj.to_string()),
                            msg,
                        });
                    }
                }
            }
        }
        for item in self.log.iter() {
            let (_, id) = item?;
            let id = String::from_utf8_lossy(&id).to_string();
            if !self.contains(&id)? {
                report.problems.push(Problem { version: Some(id), object: None, msg: "listed in the log but has no record".into() });
            }
        }
        let live = self.with_bases(referenced);
        for obj in self.objects().list()? {
            if !live.contains(&obj) {
                report.unreferenced += 1;
            }
        }
        Ok(report)
    }

    /// Problems of `id`'s delta chain: a missing or unreadable base, a cycle, more links than
    /// `max_chain`. `None` when the chain is sound.
    fn check_chain(&self, id: &str, max_chain: usize) -> Option<String> {
        let objects = self.objects();
        let mut cur = id.to_string();
        let mut seen = vec![cur.clone()];
        loop {
            let base = match objects.base_of(&cur) {
                Ok(b) => b,
                // The object itself (first step) is checked by verify; a base must be readable.
                Err(_) if cur == id => return None,
                Err(StoreError::MissingObject { .. }) => return Some(format!("delta base {cur} is missing")),
                Err(e) => return Some(format!("delta base {cur} is unreadable: {e}")),
            };
            let Some(b) = base else { break };
            if seen.contains(&b) {
                return Some(format!("delta chain has a cycle through {b}"));
            }
            if !objects.contains(&b) {
                return Some(format!("delta base {b} is missing"));
            }
            seen.push(b.clone());
            if seen.len() > crate::objects::MAX_CHAIN_HARD + 1 {
                break;
            }
            cur = b;
        }
        let links = seen.len() - 1;
        (links > max_chain).then(|| format!("delta chain of {links} links exceeds storage.max_chain = {max_chain}"))
    }

    /// `ids` and, transitively, the delta bases they decode through (missing ones skipped).
    fn with_bases(&self, ids: BTreeSet<String>) -> BTreeSet<String> {
        let mut live = ids.clone();
        let mut todo: Vec<String> = ids.into_iter().collect();
        while let Some(id) = todo.pop() {
            if let Ok(Some(b)) = self.objects().base_of(&id) {
                if live.insert(b.clone()) {
                    todo.push(b);
                }
            }
        }
        live
    }

    /// Every object any version references.
    pub fn referenced_objects(&self) -> Result<BTreeSet<String>> {
        let mut set = BTreeSet::new();
        for item in self.versions.iter() {
            let (k, v) = item?;
            let record = VersionRecord::decode(&format!("version {}", String::from_utf8_lossy(&k)), &v)?;
            set.extend(record.objects().into_iter().map(str::to_string));
        }
        Ok(set)
    }

    /// Removes unreferenced objects (and leftovers of interrupted writes). Refuses to run when a
    /// record cannot be read, since its objects could not be told apart from garbage.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport> {
        let referenced = self.referenced_objects()?;
        // A kept delta needs its base: mark bases transitively. An unreadable header of a kept
        // object could hide a base, so gc refuses rather than guess.
        let mut keep = referenced.clone();
        let mut todo: Vec<String> = referenced.into_iter().collect();
        while let Some(id) = todo.pop() {
            match self.objects().base_of(&id) {
                Ok(Some(b)) => {
                    if keep.insert(b.clone()) {
                        todo.push(b);
                    }
                }
                Ok(None) | Err(StoreError::MissingObject { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let mut report = GcReport::default();
        for obj in self.objects().list()? {
            if keep.contains(&obj) {
                report.kept += 1;
                continue;
            }
            report.removed += 1;
            report.bytes_freed += if dry_run { self.objects().stored_size(&obj)? } else { self.objects().remove(&obj)? };
        }
        if !dry_run {
            report.temp_files_removed = self.objects().clean_tmp()?;
        }
        Ok(report)
    }
}

impl Repository {
    /// Re-plans the delta bases of every tensor of the repository and rewrites the objects whose
    /// base changes (with `recode`, every tensor object, so that the current storage settings
    /// such as `compression` apply to all of them); see `docs/STORAGE.md` ("Repacking") for the
    /// algorithm. Object ids and contents never change, so every version stays readable at
    /// every moment; objects that are no longer needed as bases are left for `gc`.
    pub fn repack(&self, recode: bool, progress: &dyn Progress) -> Result<RepackReport> {
        let cfg = StorageConfig::load(self.dot_dir())?;
        let objects = self.objects();
        let mut report = RepackReport::default();

        // Nodes: distinct tensor objects, with their layout. Edges: the same tensor name (same
        // dtype and shape) in a version and its parent, and in two children of one parent.
        let mut layout: BTreeMap<String, (TensorLayout, u64)> = BTreeMap::new();
        let mut pairs: BTreeSet<(String, String)> = BTreeSet::new();
        let mut records: BTreeMap<String, VersionRecord> = BTreeMap::new();
        for id in self.ids()? {
            records.insert(id.clone(), self.get(&id)?);
        }
        let key = |t: &crate::TensorEntry| (t.name.clone(), t.dtype.clone(), t.shape.clone());
        let mut add_pairs = |a: &VersionRecord, b: &VersionRecord| {
            let theirs: BTreeMap<_, _> = b.tensors.iter().map(|t| (key(t), t.object.clone())).collect();
            for t in &a.tensors {
                if let Some(o) = theirs.get(&key(t)) {
                    if *o != t.object {
                        let (x, y) = if t.object < *o { (t.object.clone(), o.clone()) } else { (o.clone(), t.object.clone()) };
                        pairs.insert((x, y));
                    }
                }
            }
        };
        let mut children: BTreeMap<&str, Vec<&VersionRecord>> = BTreeMap::new();
        for r in records.values() {
            for p in &r.parents {
                if let Some(pr) = records.get(p) {
                    add_pairs(r, pr);
                    children.entry(p.as_str()).or_default().push(r);
                }
            }
        }
        for kids in children.values() {
            for w in kids.windows(2) {
                add_pairs(w[0], w[1]);
            }
        }
        for r in records.values() {
            for t in &r.tensors {
                let Some(dtype) = DType::parse(&t.dtype) else { continue };
                let shape: Vec<usize> = t.shape.iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect();
                layout.insert(t.object.clone(), (TensorLayout::for_shape(dtype, &shape), t.bytes));
            }
        }

        // Legacy objects (raw/zstd) become tensor objects first, so that every node can be
        // estimated and read chunk by chunk.
        let nodes: Vec<String> = layout.keys().cloned().collect();
        report.tensors = nodes.len();
        progress.begin("repack: planning", nodes.len() as u64);
        let mut size_before = BTreeMap::new();
        for id in &nodes {
            size_before.insert(id.clone(), objects.stored_size(id)?);
            let info = objects.info(id)?;
            if info.layout.is_none() {
                let (lay, len) = layout[id];
                self.rewrite(id, lay, len, None, cfg)?;
                report.rewritten += 1;
            }
        }
        report.bytes_before = size_before.values().sum();

        // Costs: a keyframe per node, a delta per candidate edge (order-0 estimates).
        let mut root_cost: BTreeMap<&str, u64> = BTreeMap::new();
        for id in &nodes {
            root_cost.insert(id, objects.estimate(id, None, cfg.delta)?);
            progress.advance(1);
        }
        let mut adj: BTreeMap<&str, Vec<(&str, u64)>> = BTreeMap::new();
        for (a, b) in &pairs {
            if !(layout.contains_key(a) && layout.contains_key(b)) || layout[a] != layout[b] {
                continue;
            }
            let w = match objects.estimate(a, Some(b), cfg.delta) {
                Ok(w) => w,
                Err(StoreError::Invalid(_)) => continue,
                Err(e) => return Err(e),
            };
            adj.entry(a).or_default().push((b, w));
            adj.entry(b).or_default().push((a, w));
        }
        progress.end();

        // Prim's algorithm from a virtual root (edge weight = keyframe cost): the minimum
        // spanning forest, whose roots are the nodes no delta makes cheaper than a keyframe.
        let mut mst: BTreeMap<&str, Option<&str>> = BTreeMap::new();
        let mut best: BTreeMap<&str, (u64, Option<&str>)> = root_cost.iter().map(|(&id, &c)| (id, (c, None))).collect();
        let mut heap: BinaryHeap<Reverse<(u64, &str)>> = best.iter().map(|(&id, &(c, _))| Reverse((c, id))).collect();
        while let Some(Reverse((c, v))) = heap.pop() {
            if mst.contains_key(v) || best.get(v).map(|b| b.0) != Some(c) {
                continue;
            }
            mst.insert(v, best[v].1);
            for &(u, w) in adj.get(v).map(Vec::as_slice).unwrap_or(&[]) {
                if !mst.contains_key(u) && best.get(u).is_some_and(|b| w < b.0) {
                    best.insert(u, (w, Some(v)));
                    heap.push(Reverse((w, u)));
                }
            }
        }
        // Then the chain bound: each tree is cut into the fewest connected pieces of radius at
        // most max_chain, each hanging from its centre (a keyframe in the middle of a series
        // serves max_chain snapshots on either side).
        let (plan, order) = bounded_plan(&mst, cfg.max_chain);

        // Rewrite in plan order: a node's new base is always rewritten before it, so the bases
        // at every moment form a forest and every object stays decodable.
        progress.begin("repack: rewriting", order.len() as u64);
        for v in &order {
            let (parent, depth) = plan[v];
            report.longest_chain = report.longest_chain.max(depth);
            if parent.is_none() {
                report.keyframes += 1;
            }
            let current = objects.base_of(v)?;
            if recode || current.as_deref() != parent {
                let (lay, len) = layout[*v];
                self.rewrite(v, lay, len, parent, cfg)?;
                report.rewritten += 1;
            }
            progress.advance(1);
        }
        progress.end();
        for id in &nodes {
            report.bytes_after += objects.stored_size(id)?;
        }
        Ok(report)
    }

    /// Re-encodes object `id` (same content, same id) against `base`.
    fn rewrite(&self, id: &str, layout: TensorLayout, len: u64, base: Option<&str>, cfg: StorageConfig) -> Result<()> {
        self.objects().recode(id, layout, len, base, cfg.encoding()).map(|_| ())
    }
}

/// Cuts a spanning forest (`node -> parent`) into the fewest connected pieces whose radius is at
/// most `radius`, each rooted at its centre: the greedy cover of trees (from the deepest
/// uncovered node, a centre goes exactly `radius` links up), then every node hangs from its
/// nearest centre along tree edges. Returns each node's new parent and depth, and an order in
/// which every parent comes before its children.
#[allow(clippy::type_complexity)]
fn bounded_plan<'a>(forest: &BTreeMap<&'a str, Option<&'a str>>, radius: usize) -> (BTreeMap<&'a str, (Option<&'a str>, usize)>, Vec<&'a str>) {
    let mut kids: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut roots = Vec::new();
    for (&v, &p) in forest {
        match p {
            Some(p) => kids.entry(p).or_default().push(v),
            None => roots.push(v),
        }
    }
    let none: Vec<&str> = Vec::new();
    let mut centre: BTreeSet<&str> = BTreeSet::new();
    let r = radius as i64;
    for &root in &roots {
        // Post-order without recursion (series can be long).
        let mut post = Vec::new();
        let mut stack = vec![root];
        while let Some(v) = stack.pop() {
            post.push(v);
            stack.extend(kids.get(v).unwrap_or(&none));
        }
        // far: distance to the deepest uncovered node below (None: all covered);
        // near: distance to the nearest centre below.
        let mut far: BTreeMap<&str, Option<i64>> = BTreeMap::new();
        let mut near: BTreeMap<&str, i64> = BTreeMap::new();
        for &v in post.iter().rev() {
            let mut f = Some(0i64);
            let mut n = i64::MAX / 2;
            for &c in kids.get(v).unwrap_or(&none) {
                if let Some(fc) = far[c] {
                    f = f.max(Some(fc + 1));
                }
                n = n.min(near[c] + 1);
            }
            let f = match f {
                Some(fv) if fv + n <= r => None,
                Some(fv) if fv >= r || v == root => {
                    centre.insert(v);
                    n = 0;
                    None
                }
                other => other,
            };
            far.insert(v, f);
            near.insert(v, n);
        }
    }
    // Nearest centre by breadth-first search over the forest's edges from all centres at once.
    let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (&v, &p) in forest {
        if let Some(p) = p {
            adj.entry(v).or_default().push(p);
            adj.entry(p).or_default().push(v);
        }
    }
    let mut plan: BTreeMap<&str, (Option<&str>, usize)> = BTreeMap::new();
    let mut order = Vec::new();
    let mut queue: std::collections::VecDeque<&str> = centre.iter().copied().collect();
    for &c in &centre {
        plan.insert(c, (None, 0));
    }
    while let Some(v) = queue.pop_front() {
        order.push(v);
        let d = plan[v].1;
        for &u in adj.get(v).unwrap_or(&none) {
            if !plan.contains_key(u) {
                plan.insert(u, (Some(v), d + 1));
                queue.push_back(u);
            }
        }
    }
    (plan, order)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::commit::{CommitOptions, NoProgress};
    use crate::{formats, TensorInfo};

    fn check_plan(forest: &BTreeMap<&str, Option<&str>>, radius: usize) -> usize {
        let (plan, order) = bounded_plan(forest, radius);
        assert_eq!(plan.len(), forest.len());
        let pos: BTreeMap<&str, usize> = order.iter().enumerate().map(|(i, &v)| (v, i)).collect();
        for (&v, &(p, d)) in &plan {
            assert!(d <= radius, "{v} at depth {d}");
            if let Some(p) = p {
                assert!(pos[p] < pos[v], "{p} is written after its child {v}");
                assert_eq!(plan[p].1 + 1, d);
                // Only edges of the forest are used.
                assert!(forest[v] == Some(p) || forest[p] == Some(v));
            }
        }
        plan.values().filter(|(p, _)| p.is_none()).count()
    }

    #[test]
    fn bounded_plans_put_keyframes_in_the_middle() {
        let names: Vec<String> = (0..40).map(|i| format!("n{i:02}")).collect();
        let path = |len: usize| -> BTreeMap<&str, Option<&str>> {
            (0..len).map(|i| (names[i].as_str(), i.checked_sub(1).map(|j| names[j].as_str()))).collect()
        };
        // One keyframe serves max_chain snapshots on either side.
        assert_eq!(check_plan(&path(21), 10), 1);
        assert_eq!(check_plan(&path(22), 10), 2);
        assert_eq!(check_plan(&path(20), 16), 1);
        assert_eq!(check_plan(&path(5), 0), 5);
        assert_eq!(check_plan(&path(1), 3), 1);
        // A base with five fine-tunes, each a chain of three.
        let mut star: BTreeMap<&str, Option<&str>> = BTreeMap::new();
        star.insert(&names[0], None);
        for k in 0..5 {
            for j in 0..3 {
                let v = 1 + k * 3 + j;
                let parent = if j == 0 { 0 } else { v - 1 };
                star.insert(&names[v], Some(&names[parent]));
            }
        }
        assert_eq!(check_plan(&star, 3), 1);
        assert_eq!(check_plan(&star, 2), 5);
        // Two trees stay two pieces at least.
        let mut two = path(3);
        two.insert(&names[30], None);
        assert_eq!(check_plan(&two, 5), 2);
    }

    fn weights_file(dir: &Path, name: &str, step: u32, frozen_step: u32) -> Result<()> {
        let n = 40_000usize;
        let vals = |s: u32, salt: f32| -> Vec<u8> {
            (0..n)
                .flat_map(|i| {
                    let x = (i as f32 * 0.377 + salt).sin() * 0.05 + s as f32 * 2e-5 * (i as f32 * 0.1).cos();
                    x.to_le_bytes()
                })
                .collect()
        };
        let data = [vals(step, 0.0), vals(frozen_step, 1.0)];
        let infos = vec![
            TensorInfo { name: "fc.weight".into(), dtype: DType::F32, shape: vec![200, 200] },
            TensorInfo { name: "emb.weight".into(), dtype: DType::F32, shape: vec![400, 100] },
        ];
        formats::write_safetensors(&dir.join(name), &infos, None, &mut |i, w| {
            w.write_all(&data[i]).map_err(|e| StoreError::io("w", e))?;
            Ok(data[i].len() as u64)
        })
    }

    /// A 200 x 200 f32 layer after `steps` noisy steps, each row with its own step size and
    /// every third row frozen (training-like, unlike [`weights_file`]'s smooth changes).
    fn walk_file(dir: &Path, steps: u32) -> Result<()> {
        let mut r = crate::testrand::XorShift::new(0x9e37_79b9_7f4a_7c15);
        let mut rnd = move || r.unit() as f32 - 0.5;
        let mut w: Vec<f32> = (0..40_000).map(|_| rnd() * 0.2).collect();
        for _ in 0..steps {
            for (i, v) in w.iter_mut().enumerate() {
                let row = i / 200;
                let noise = rnd();
                if row % 3 != 0 {
                    *v += (noise + 0.2) * 1e-4 * (1 + row % 7) as f32;
                }
            }
        }
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let infos = vec![TensorInfo { name: "fc.weight".into(), dtype: DType::F32, shape: vec![200, 200] }];
        formats::write_safetensors(&dir.join("w.safetensors"), &infos, None, &mut |_, out| {
            out.write_all(&bytes).map_err(|e| StoreError::io("w", e))?;
            Ok(bytes.len() as u64)
        })
    }

    /// A new repository in a temporary folder (kept while the guard lives) and its path.
    fn scratch_repo() -> Result<(tempfile::TempDir, std::path::PathBuf, Repository)> {
        let tmp = tempfile::tempdir().map_err(|e| StoreError::io("tmp", e))?;
        let dir = std::fs::canonicalize(tmp.path()).map_err(|e| StoreError::io("tmp", e))?;
        let repo = Repository::init(&dir)?;
        Ok((tmp, dir, repo))
    }

    fn commit(repo: &Repository, dir: &Path, step: u32) -> Result<String> {
        weights_file(dir, "w.safetensors", step, 0)?;
        commit_staged(repo, dir, &format!("step {step}"))
    }

    /// Stages `w.safetensors` and commits it as a version of `m`.
    fn commit_staged(repo: &Repository, dir: &Path, message: &str) -> Result<String> {
        repo.add(&[dir.join("w.safetensors")])?;
        let opts = CommitOptions { name: "m".into(), message: message.into(), author: "t".into(), ..Default::default() };
        Ok(repo.commit(&opts, &NoProgress)?.id)
    }

    /// Commits [`walk_file`] after 0, 1, … `steps - 1` steps.
    fn commit_walk(repo: &Repository, dir: &Path, steps: u32) -> Result<Vec<String>> {
        (0..steps)
            .map(|step| {
                walk_file(dir, step)?;
                commit_staged(repo, dir, &format!("step {step}"))
            })
            .collect()
    }

    /// Stored bytes of every object.
    fn stored_total(repo: &Repository) -> Result<u64> {
        repo.objects().list()?.iter().map(|o| repo.objects().stored_size(o)).sum()
    }

    fn set_config(dir: &Path, storage: &str) -> Result<()> {
        let p = dir.join(".dlv/config.toml");
        std::fs::write(&p, format!("format = 1\n[storage]\n{storage}\n")).map_err(|e| StoreError::io(&p, e))
    }

    fn tensor_bytes(repo: &Repository, id: &str) -> Result<Vec<Vec<u8>>> {
        repo.get(id)?.tensors.iter().map(|t| repo.objects().get_bytes(&t.object)).collect()
    }

    use std::io::Write;

    #[test]
    fn chains_stay_bounded_and_fsck_gc_repack_keep_everything() -> Result<()> {
        let (_tmp, dir, repo) = scratch_repo()?;
        set_config(&dir, "max_chain = 3")?;
        let mut ids = Vec::new();
        for step in 0..9 {
            ids.push(commit(&repo, &dir, step * 10)?);
        }
        let mut expected = Vec::new();
        let mut depths = Vec::new();
        for id in &ids {
            expected.push(tensor_bytes(&repo, id)?);
            for t in repo.get(id)?.tensors {
                let d = repo.objects().chain_len(&t.object)?;
                assert!(d <= 3, "chain of {d}");
                if t.name == "fc.weight" {
                    depths.push(d);
                }
            }
        }
        // Reverse deltas until the run is full (each older version a delta against the next),
        // then forward deltas from that keyframe until their chain is full, then a new keyframe
        // whose reverse run begins again: the newest version is whole again. (The frozen tensor
        // is one object shared by every version.)
        assert_eq!(depths, [3, 2, 1, 0, 1, 2, 3, 1, 0]);
        let frozen: BTreeSet<String> =
            ids.iter().map(|id| Ok(repo.get(id)?.tensors[1].object.clone())).collect::<Result<_>>()?;
        assert_eq!(frozen.len(), 1);
        assert!(repo.fsck()?.is_ok());
        let gc = repo.gc(false)?;
        assert_eq!(gc.removed, 0);

        // A longer bound, then repack: still bounded, smaller, bit-identical.
        set_config(&dir, "max_chain = 5")?;
        let before = stored_total(&repo)?;
        let report = repo.repack(false, &NoProgress)?;
        assert!(report.longest_chain <= 5);
        repo.gc(false)?;
        let after = stored_total(&repo)?;
        assert!(after <= before + before / 50, "{after} vs {before}");
        for (id, exp) in ids.iter().zip(&expected) {
            assert_eq!(&tensor_bytes(&repo, id)?, exp);
            for t in repo.get(id)?.tensors {
                assert!(repo.objects().chain_len(&t.object)? <= 5);
            }
        }
        assert!(repo.fsck()?.is_ok());

        // With a tighter bound, fsck reports long chains.
        set_config(&dir, "max_chain = 1")?;
        let report = repo.fsck()?;
        assert!(report.problems.iter().any(|p| p.msg.contains("exceeds storage.max_chain")), "{:?}", report.problems);
        set_config(&dir, "max_chain = 1")?;
        repo.repack(false, &NoProgress)?;
        repo.gc(false)?;
        assert!(repo.fsck()?.is_ok());
        for (id, exp) in ids.iter().zip(&expected) {
            assert_eq!(&tensor_bytes(&repo, id)?, exp);
        }
        Ok(())
    }

    /// Switching an existing repository to `compression = "max"`: a repack re-codes only the
    /// objects whose base changes, a repack with `recode` every one; the versions stay the same.
    #[test]
    fn recoding_applies_a_new_compression_level() -> Result<()> {
        let (_tmp, dir, repo) = scratch_repo()?;
        let ids = commit_walk(&repo, &dir, 6)?;
        let expected: Vec<Vec<Vec<u8>>> = ids.iter().map(|id| tensor_bytes(&repo, id)).collect::<Result<_>>()?;
        // Settle the plan first (the repack's layout differs from the committed one).
        repo.repack(false, &NoProgress)?;
        repo.gc(false)?;
        let fast = stored_total(&repo)?;
        set_config(&dir, "compression = \"max\"")?;
        let report = repo.repack(false, &NoProgress)?;
        assert_eq!(report.rewritten, 0, "the plan did not change");
        assert_eq!(stored_total(&repo)?, fast);
        let report = repo.repack(true, &NoProgress)?;
        assert_eq!(report.rewritten, report.tensors);
        repo.gc(false)?;
        let max = stored_total(&repo)?;
        assert!(max < fast, "max {max} against fast {fast}");
        assert!(repo.fsck()?.is_ok());
        for (id, exp) in ids.iter().zip(&expected) {
            assert_eq!(&tensor_bytes(&repo, id)?, exp);
        }
        Ok(())
    }

    /// Writes `w.safetensors` with the named f32 tensors of 4,000 values: one common set of
    /// weights, moved a little by a seed (the same seed gives the same content, and any two
    /// are close enough to be coded as deltas of each other).
    fn named_file(dir: &Path, tensors: &[(&str, u64)]) -> Result<()> {
        let mut common = crate::testrand::XorShift::new(99);
        let weights: Vec<f32> = (0..4000).map(|_| (common.unit() - 0.5) as f32).collect();
        let data: Vec<Vec<u8>> = tensors
            .iter()
            .map(|&(_, seed)| {
                let mut r = crate::testrand::XorShift::new(seed);
                weights.iter().flat_map(|&w| (w + (r.unit() - 0.5) as f32 * 1e-4).to_le_bytes()).collect()
            })
            .collect();
        let infos: Vec<TensorInfo> = tensors.iter().map(|&(n, _)| TensorInfo { name: n.into(), dtype: DType::F32, shape: vec![40, 100] }).collect();
        formats::write_safetensors(&dir.join("w.safetensors"), &infos, None, &mut |i, w| {
            w.write_all(&data[i]).map_err(|e| StoreError::io("w", e))?;
            Ok(data[i].len() as u64)
        })
    }

    /// Two tensors that were one object diverge again, and one of them has a shorter history:
    /// its reverse delta must not lengthen the other's chains past `max_chain` (every chain
    /// that ends at the shared object counts, not only those of one tensor name).
    #[test]
    fn a_shared_object_that_diverges_keeps_every_chain_bounded() -> Result<()> {
        let (_tmp, dir, repo) = scratch_repo()?;
        set_config(&dir, "max_chain = 2")?;
        let steps: [&[(&str, u64)]; 4] = [
            &[("a", 1)],
            &[("a", 2), ("b", 3)],
            &[("a", 4), ("b", 4)],
            &[("a", 5), ("b", 6)],
        ];
        let mut ids = Vec::new();
        for (k, tensors) in steps.iter().enumerate() {
            named_file(&dir, tensors)?;
            ids.push(commit_staged(&repo, &dir, &format!("step {k}"))?);
            for id in &ids {
                for t in repo.get(id)?.tensors {
                    let d = repo.objects().chain_len(&t.object)?;
                    assert!(d <= 2, "after step {k}: {} of {id} at depth {d}", t.name);
                }
            }
        }
        assert!(repo.fsck()?.is_ok());
        Ok(())
    }

    /// fsck is clean before and after `repack` and `gc`, and every version still reads back as
    /// `expected` (its tensors' bytes).
    fn survives_maintenance(repo: &Repository, ids: &[String], expected: &[Vec<Vec<u8>>], label: &str) -> Result<()> {
        assert!(repo.fsck()?.is_ok(), "{label}");
        repo.repack(false, &NoProgress)?;
        repo.gc(false)?;
        assert!(repo.fsck()?.is_ok(), "{label}");
        for (id, exp) in ids.iter().zip(expected) {
            assert_eq!(&tensor_bytes(repo, id)?, exp, "{label}");
        }
        Ok(())
    }

    /// A bf16 training walk: a narrow first layer (1024 x 64) whose every step adds a change of
    /// rank 3, and a square layer (256 x 256) whose rows move by their own small steps, so that
    /// most large weights keep their bf16 value. Returns the tensors' bytes.
    fn walk_file_bf16(dir: &Path, steps: u32) -> Result<Vec<Vec<u8>>> {
        let mut r = crate::testrand::XorShift::new(0x2545_f491_4f6c_dd1d);
        let mut rnd = move || r.unit() as f32 - 0.5;
        let mut first: Vec<f32> = (0..1024 * 64).map(|_| rnd() * 0.2).collect();
        let mut square: Vec<f32> = (0..256 * 256).map(|_| rnd() * 0.2).collect();
        let (us, vs): (Vec<f32>, Vec<f32>) = ((0..1024 * 3).map(|_| rnd()).collect(), (0..3 * 64).map(|_| rnd()).collect());
        for step in 0..steps {
            for (i, w) in first.iter_mut().enumerate() {
                let (row, col) = (i / 64, i % 64);
                *w += (0..3).map(|c| us[row * 3 + c] * vs[c * 64 + col]).sum::<f32>() * 4e-3 * (1 + step % 3) as f32;
            }
            for (i, w) in square.iter_mut().enumerate() {
                *w += (rnd() + 0.3) * 2e-4 * (1 + (i / 256) % 5) as f32;
            }
        }
        let bf16 = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| (((x.to_bits() + 0x7fff + ((x.to_bits() >> 16) & 1)) >> 16) as u16).to_le_bytes()).collect() };
        let data = [bf16(&first), bf16(&square)];
        let infos = vec![
            TensorInfo { name: "fc1.weight".into(), dtype: DType::BF16, shape: vec![1024, 64] },
            TensorInfo { name: "fc2.weight".into(), dtype: DType::BF16, shape: vec![256, 256] },
        ];
        formats::write_safetensors(&dir.join("w.safetensors"), &infos, None, &mut |i, out| {
            out.write_all(&data[i]).map_err(|e| StoreError::io("w", e))?;
            Ok(data[i].len() as u64)
        })?;
        Ok(data.to_vec())
    }

    /// The default `storage.compression = "balanced"` stores a bf16 walk smaller than `"fast"`
    /// (class planes for the square layer's sparse steps, residual planes against a low-rank
    /// prediction for the first layer's dense ones), and every version reads back whole through
    /// fsck, repack and gc.
    #[test]
    fn balanced_compression_stores_bf16_walks_smaller() -> Result<()> {
        let mut sizes = Vec::new();
        for compression in ["fast", "balanced"] {
            let (_tmp, dir, repo) = scratch_repo()?;
            set_config(&dir, &format!("max_chain = 4\ncompression = \"{compression}\""))?;
            let (mut ids, mut expected) = (Vec::new(), Vec::new());
            for step in 0..6 {
                expected.push(walk_file_bf16(&dir, step)?);
                ids.push(commit_staged(&repo, &dir, &format!("step {step}"))?);
            }
            sizes.push(stored_total(&repo)?);
            for (id, exp) in ids.iter().zip(&expected) {
                assert_eq!(&tensor_bytes(&repo, id)?, exp, "{compression}");
            }
            survives_maintenance(&repo, &ids, &expected, compression)?;
        }
        assert!(sizes[1] * 10 < sizes[0] * 9, "balanced {} against fast {}", sizes[1], sizes[0]);
        Ok(())
    }

    /// `storage.compression = "max"`: deltas of floats take the magnitude coder where it is
    /// smaller; the series is smaller than with `"fast"`, every version reads back whole and
    /// at low precision, and fsck, repack and gc keep it so.
    #[test]
    fn max_compression_series_reads_back_smaller() -> Result<()> {
        let mut sizes = Vec::new();
        for compression in ["fast", "max"] {
            let (_tmp, dir, repo) = scratch_repo()?;
            set_config(&dir, &format!("max_chain = 4\ncompression = \"{compression}\""))?;
            let ids = commit_walk(&repo, &dir, 6)?;
            sizes.push(stored_total(&repo)?);
            let expected: Vec<Vec<Vec<u8>>> = ids.iter().map(|id| tensor_bytes(&repo, id)).collect::<Result<_>>()?;
            for (id, exp) in ids.iter().zip(&expected) {
                for (t, bytes) in repo.get(id)?.tensors.iter().zip(exp) {
                    let mut top = Vec::new();
                    repo.objects().get_top_into(&t.object, 4, 2, &mut top)?;
                    let truncated: Vec<u8> = bytes.chunks_exact(4).flat_map(|e| [e[2], e[3]]).collect();
                    assert_eq!(top, truncated, "{compression}: top planes of {}", t.name);
                }
            }
            survives_maintenance(&repo, &ids, &expected, compression)?;
        }
        assert!(sizes[1] < sizes[0], "max {} against fast {}", sizes[1], sizes[0]);
        Ok(())
    }

    /// Tensors are stored in parallel: the version still lists them in file order, identical
    /// tensors (one content, several names) are one object, and every version reads back, also
    /// after two tensors that shared an object diverge (both re-code that parent at once).
    #[test]
    fn many_tensors_commit_in_file_order() -> Result<()> {
        let (_tmp, dir, repo) = scratch_repo()?;
        let names: Vec<String> = (0..12).map(|i| format!("block{:02}.{}", 11 - i, if i % 2 == 0 { "weight" } else { "bias" })).collect();
        let mut ids = Vec::new();
        let mut expected = Vec::new();
        for step in 0..3u32 {
            // Tensors 4 and 5 have the same content in the first version only.
            let data: Vec<Vec<u8>> = (0..12u32)
                .map(|i| {
                    let seed = if i == 5 && step == 0 { 4 } else { i };
                    (0..3000u32).flat_map(|j| ((seed * 7919 + j) as f32 * 0.001 + step as f32 * 1e-4).sin().to_le_bytes()).collect()
                })
                .collect();
            let infos: Vec<TensorInfo> = names.iter().map(|n| TensorInfo { name: n.clone(), dtype: DType::F32, shape: vec![3000] }).collect();
            formats::write_safetensors(&dir.join("w.safetensors"), &infos, None, &mut |i, w| {
                w.write_all(&data[i]).map_err(|e| StoreError::io("w", e))?;
                Ok(data[i].len() as u64)
            })?;
            repo.add(&[dir.join("w.safetensors")])?;
            let opts = CommitOptions { name: "m".into(), author: "t".into(), ..Default::default() };
            ids.push(repo.commit(&opts, &NoProgress)?.id);
            expected.push(data);
        }
        for (k, (id, data)) in ids.iter().zip(&expected).enumerate() {
            let record = repo.get(id)?;
            let listed: Vec<&str> = record.tensors.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(listed, names.iter().map(String::as_str).collect::<Vec<_>>());
            assert_eq!(record.tensors[4].object == record.tensors[5].object, k == 0);
            assert_eq!(&tensor_bytes(&repo, id)?, data);
        }
        assert!(repo.fsck()?.is_ok());
        // A checkout decodes tensors side by side: one corrupt tensor still fails it, naming the
        // object, and leaves no file behind.
        let out = dir.join("out");
        repo.checkout(&ids[2], &out, crate::checkout::Precision::Full, false, &NoProgress)?;
        assert!(out.join("w.safetensors").exists());
        let victim = repo.get(&ids[2])?.tensors[7].object.clone();
        let path = repo.objects().path_of(&victim)?;
        let mut bytes = std::fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
        let at = bytes.len() - 10;
        bytes[at] ^= 0x55;
        std::fs::write(&path, &bytes).map_err(|e| StoreError::io(&path, e))?;
        std::fs::remove_dir_all(&out).map_err(|e| StoreError::io(&out, e))?;
        match repo.checkout(&ids[2], &out, crate::checkout::Precision::Full, false, &NoProgress) {
            Err(StoreError::CorruptObject { id, .. }) => assert_eq!(id, victim),
            other => panic!("{other:?}"),
        }
        assert!(!out.join("w.safetensors").exists());
        Ok(())
    }

    /// A tensor name in two staged weights files is refused before anything is recorded.
    #[test]
    fn a_tensor_in_two_weights_files_is_an_error() -> Result<()> {
        let (_tmp, dir, repo) = scratch_repo()?;
        weights_file(&dir, "a.safetensors", 0, 0)?;
        weights_file(&dir, "b.safetensors", 10, 0)?;
        repo.add(&[dir.join("a.safetensors"), dir.join("b.safetensors")])?;
        let opts = CommitOptions { name: "m".into(), author: "t".into(), ..Default::default() };
        match repo.commit(&opts, &NoProgress) {
            Err(StoreError::Invalid(msg)) => assert!(msg.contains("appears in two staged weights files"), "{msg}"),
            other => panic!("{other:?}"),
        }
        assert!(repo.ids_of_name("m")?.is_empty());
        Ok(())
    }

    #[test]
    fn forward_deltas_and_second_children() -> Result<()> {
        let (_tmp, dir, repo) = scratch_repo()?;
        set_config(&dir, "max_chain = 3\nreverse = false")?;
        let mut ids = Vec::new();
        for step in 0..5 {
            ids.push(commit(&repo, &dir, step * 10)?);
        }
        let depth = |id: &str| -> Result<usize> { repo.objects().chain_len(&repo.get(id)?.tensors[0].object) };
        let depths: Vec<usize> = ids.iter().map(|id| depth(id)).collect::<Result<_>>()?;
        assert_eq!(depths, [0, 1, 2, 3, 0]);

        // With reverse deltas, a second child of a version is a forward delta: the first child
        // already took the reverse link.
        set_config(&dir, "max_chain = 3")?;
        let tip = commit(&repo, &dir, 60)?;
        assert_eq!(depth(&tip)?, 0);
        assert_eq!(depth(&ids[4])?, 1);
        weights_file(&dir, "w.safetensors", 61, 0)?;
        repo.add(&[dir.join("w.safetensors")])?;
        let opts = CommitOptions { name: "m".into(), author: "t".into(), parents: vec![ids[4].clone()], ..Default::default() };
        let sibling = repo.commit(&opts, &NoProgress)?;
        assert_eq!(depth(&sibling.id)?, 2);
        for id in ids.iter().chain([&tip, &sibling.id]) {
            assert!(repo.objects().verify(&repo.get(id)?.tensors[0].object).is_ok());
        }
        assert!(repo.fsck()?.is_ok());
        Ok(())
    }

    #[test]
    fn gc_keeps_bases_and_fsck_finds_a_missing_base() -> Result<()> {
        let (_tmp, dir, repo) = scratch_repo()?;
        let a = commit(&repo, &dir, 0)?;
        let b = commit(&repo, &dir, 10)?;
        // Reverse delta: the older version's tensor is coded against the newer one.
        let delta = repo.get(&a)?.tensors[0].object.clone();
        let base = repo.objects().base_of(&delta)?.ok_or_else(|| StoreError::Invalid("no delta".into()))?;
        assert_eq!(base, repo.get(&b)?.tensors[0].object);

        // A version whose delta's base no version references: gc must keep the base.
        let only_base = {
            let data: Vec<u8> = (0..40_000u32).flat_map(|i| (i as f32 * 1e-3).to_le_bytes()).collect();
            let layout = TensorLayout::of(DType::F32);
            let mut w = repo.objects().tensor_writer(layout, data.len() as u64, None, crate::DeltaMode::Auto.into(), false)?;
            w.write_all(&data).map_err(|e| StoreError::io("w", e))?;
            let p = w.finish()?;
            let next: Vec<u8> = (0..40_000u32).flat_map(|i| (i as f32 * 1e-3 + 1e-7).to_le_bytes()).collect();
            let mut w = repo.objects().tensor_writer(layout, next.len() as u64, Some(&p.id), crate::DeltaMode::Auto.into(), false)?;
            w.write_all(&next).map_err(|e| StoreError::io("w", e))?;
            let d = w.finish()?;
            assert_eq!(repo.objects().base_of(&d.id)?.as_deref(), Some(p.id.as_str()));
            let mut rec = repo.get(&b)?;
            rec.message = "points at a delta".into();
            rec.parents = vec![b.clone()];
            rec.tensors[0].object = d.id.clone();
            repo.insert_version(&rec)?;
            p.id
        };
        let gc = repo.gc(false)?;
        assert_eq!(gc.removed, 0);
        assert!(repo.objects().contains(&only_base));
        assert!(repo.fsck()?.is_ok());

        std::fs::remove_file(repo.objects().path_of(&base)?).map_err(|e| StoreError::io("rm", e))?;
        let report = repo.fsck()?;
        assert!(
            report.problems.iter().any(|p| p.msg.contains("delta base") && p.msg.contains("missing")),
            "{:?}",
            report.problems
        );
        assert!(matches!(repo.objects().verify(&delta), Err(StoreError::MissingObject { .. })));
        Ok(())
    }
}
