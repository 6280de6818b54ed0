//! `dlv desc` and `dlv diff`: text and JSON snapshots on versions built from testdata, argument
//! spellings, the HTML report (self-contained, and rendered in headless Chromium when present).

use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use crate::{safetensors_bytes, tensors, Scratch};

/// A Caffe training log with a falling loss and a rising test accuracy; `shift` varies it.
fn caffe_log(shift: f64) -> String {
    let mut s = String::new();
    for k in 0..6u32 {
        let it = k * 100;
        let loss = 2.3 / (1.0 + f64::from(k) * (0.8 + shift));
        let acc = 0.1 + 0.15 * f64::from(k) * (1.0 - shift / 2.0);
        s.push_str(&format!("I0101 00:00:0{k}.000 1 solver.cpp:338] Iteration {it}, Testing net (#0)\n"));
        s.push_str(&format!("I0101 00:00:0{k}.000 1 solver.cpp:406]     Test net output #0: accuracy = {acc:.4}\n"));
        s.push_str(&format!("I0101 00:00:0{k}.000 1 solver.cpp:228] Iteration {it}, loss = {loss:.4}\n"));
    }
    s
}

/// LeNet with an in-place ReLU inserted after conv1, `ip1` renamed `fc1` and conv2's kernel
/// size changed from 5 to 3.
fn lenet_wide() -> String {
    let src = std::fs::read_to_string(crate::testdata("nets/lenet.prototxt")).expect("lenet.prototxt");
    let src = src.replace("\"ip1\"", "\"fc1\"");
    let src = src.replacen(
        "layer {\n  name: \"pool1\"",
        "layer {\n  name: \"relu0\"\n  type: \"ReLU\"\n  bottom: \"conv1\"\n  top: \"conv1\"\n}\nlayer {\n  name: \"pool1\"",
        1,
    );
    let src = src.replacen("num_output: 50\n    kernel_size: 5", "num_output: 50\n    kernel_size: 3", 1);
    assert!(src.contains("relu0") && src.contains("kernel_size: 3") && src.contains("fc1"), "edit did not apply");
    src
}

/// Weights for [`lenet_wide`]: the testdata weights, with new shapes for conv2.weight and
/// fc1.weight (ip1 renamed); every other tensor unchanged.
fn wide_weights() -> Vec<u8> {
    let base = crate::read_tensors(&crate::testdata("weights/lenet.safetensors"));
    let mut out = Vec::new();
    for (name, _) in crate::LENET {
        let (shape, data) = base.get(*name).cloned().unwrap_or_else(|| panic!("testdata lacks {name}"));
        let (name, shape) = match *name {
            "conv2.weight" => (name.to_string(), vec![50, 20, 3, 3]),
            "ip1.weight" => ("fc1.weight".to_string(), vec![500, 1250]),
            "ip1.bias" => ("fc1.bias".to_string(), shape),
            _ => (name.to_string(), shape),
        };
        let n: usize = shape.iter().product();
        let data: Vec<u8> = data.iter().copied().cycle().take(n * 4).collect();
        out.push((name, shape, data));
    }
    safetensors_bytes(&out)
}

/// Replaces version ids (full and abbreviated) by `<name#k>` (k-th version in commit order) and
/// any other 64-digit hex object id by `<object>`, so that snapshots do not change when the
/// record or object encoding does.
fn redact(s: &Scratch, text: &str) -> String {
    let list = json(&s.ok(&["list", "--json"]));
    let mut out = text.to_string();
    for (k, v) in list.as_array().expect("list").iter().enumerate() {
        let (Some(id), Some(short)) = (v["id"].as_str(), v["short"].as_str()) else { continue };
        out = out.replace(id, &format!("<version#{k}>")).replace(short, &format!("<v#{k}>"));
    }
    let mut res = String::with_capacity(out.len());
    let b = out.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let run = b[i..].iter().take_while(|c| c.is_ascii_hexdigit()).count();
        if run == 64 {
            res.push_str("<object>");
            i += 64;
        } else if run > 0 {
            res.push_str(&out[i..i + run]);
            i += run;
        } else {
            let ch = out[i..].chars().next().unwrap_or(' ');
            res.push(ch);
            i += ch.len_utf8();
        }
    }
    res
}

/// Three versions: `lenet` (testdata weights, solver, log), `lenet` fine-tuned (other weights,
/// lower base_lr, another log) and `lenet-wide` (edited network, child of the first).
fn explore_repo() -> Scratch {
    let s = Scratch::new();
    s.ok(&["init"]);
    s.copy_testdata("nets/lenet.prototxt", "lenet.prototxt");
    s.copy_testdata("weights/lenet.safetensors", "lenet.safetensors");
    let solver = std::fs::read_to_string(crate::testdata("nets/lenet_solver.prototxt")).expect("solver");
    s.write("lenet_solver.prototxt", &solver);
    s.write("train.log", caffe_log(0.0));
    s.ok(&["add", "lenet.prototxt", "lenet.safetensors", "lenet_solver.prototxt", "train.log"]);
    s.ok(&["commit", "-m", "first", "--name", "lenet", "--date", "2015-11-22"]);

    s.write("lenet.safetensors", safetensors_bytes(&tensors(2)));
    s.write("lenet_solver.prototxt", solver.replace("base_lr: 0.01", "base_lr: 0.001"));
    s.write("train.log", caffe_log(0.3));
    s.ok(&["add", "lenet.prototxt", "lenet.safetensors", "lenet_solver.prototxt", "train.log"]);
    s.ok(&["commit", "-m", "fine-tuned", "--name", "lenet", "--date", "2015-11-23"]);

    s.write("wide/lenet.prototxt", lenet_wide());
    s.write("wide/lenet.safetensors", wide_weights());
    s.ok(&["add", "wide/lenet.prototxt", "wide/lenet.safetensors"]);
    s.ok(&["commit", "-m", "wider", "--name", "lenet-wide", "--parent", "lenet~1", "--date", "2015-11-24"]);
    s
}

/// Replaces the measured forward time (text line and JSON field) by `<ms>`: timings vary.
fn redact_timing(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (head, rest) = if let Some(i) = line.find("\"forward_ms_per_batch\": ") {
            line.split_at(i + "\"forward_ms_per_batch\": ".len())
        } else if let Some(i) = line.find("forward time").filter(|_| line.contains(" ms per batch")) {
            let after = i + "forward time".len();
            let skip = line[after..].len() - line[after..].trim_start().len();
            line.split_at(after + skip)
        } else {
            out.push_str(line);
            continue;
        };
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-')).unwrap_or(rest.len());
        if n == 0 || rest.starts_with("null") {
            out.push_str(line);
        } else {
            out.push_str(head);
            out.push_str("<ms>");
            out.push_str(&rest[n..]);
        }
    }
    out
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn desc_text_and_json() {
    let s = explore_repo();
    let text = s.ok(&["desc", "lenet~1"]);
    insta::assert_snapshot!("desc_text", redact_timing(&redact(&s, &text)));
    let out = s.ok(&["desc", "lenet~1", "--output", "json"]);
    let v = json(&out);
    // Field names that machines rely on.
    for key in ["id", "name", "parents", "message", "author", "created", "layers", "tensors", "footprint", "hyper", "series", "metrics", "weight_stats"] {
        assert!(v.get(key).is_some(), "desc --json lacks {key}");
    }
    assert_eq!(v["footprint"]["parameters"], 431_080);
    let ms = v["footprint"]["forward_ms_per_batch"].as_f64().expect("forward time measured");
    assert!(ms > 0.0 && ms.is_finite(), "{ms}");
    assert_eq!(v["layers"][1]["attributes"]["kernel_size"], "5");
    insta::assert_snapshot!("desc_json", redact_timing(&redact(&s, &out)));
    // `--json`, and the option before the ref, give the same (timings aside).
    assert_eq!(redact_timing(&s.ok(&["desc", "lenet~1", "--json"])), redact_timing(&out));
    assert_eq!(redact_timing(&s.ok(&["desc", "--output", "json", "lenet~1"])), redact_timing(&out));
    // Without a forward pass the footprint says why.
    let skipped = json(&s.ok(&["desc", "lenet~1", "--json", "--no-forward"]));
    assert_eq!(skipped["footprint"]["forward_ms_per_batch"], serde_json::Value::Null);
    assert!(skipped["footprint"]["forward_note"].as_str().is_some_and(|n| n.starts_with("not measured: ")), "{skipped}");
}

#[test]
fn diff_of_a_fine_tuned_version_compares_weights_and_metadata() {
    let s = explore_repo();
    let text = s.ok(&["diff", "lenet~1", "lenet"]);
    insta::assert_snapshot!("diff_finetune_text", redact(&s, &text));
    let v = json(&s.ok(&["diff", "lenet~1", "lenet", "--json"]));
    let w = v["weights"].as_array().expect("weights");
    assert_eq!(w.len(), 8, "every tensor compared");
    assert!(w.iter().all(|d| d["l2"].as_f64().is_some_and(|x| x > 0.0)));
    let base_lr = v["hyper"].as_array().expect("hyper").iter().find(|h| h["key"] == "base_lr").expect("base_lr");
    assert_eq!(base_lr["values"], serde_json::json!(["0.01", "0.001"]));
    assert_eq!(base_lr["differs"], true);
}

#[test]
fn diff_aligns_inserted_renamed_and_changed_layers() {
    let s = explore_repo();
    let text = s.ok(&["diff", "lenet~1", "lenet-wide"]);
    insta::assert_snapshot!("diff_aligned_text", redact(&s, &text));
    let out = s.ok(&["diff", "lenet~1", "lenet-wide", "--output", "json"]);
    insta::assert_snapshot!("diff_aligned_json", redact(&s, &out));
    let v = json(&out);
    let rows = v["layers"].as_array().expect("layers");
    let status: Vec<&str> = rows.iter().map(|r| r["status"][0].as_str().unwrap_or("?")).collect();
    assert_eq!(status, ["same", "same", "added", "same", "changed", "changed", "renamed", "same", "same", "same"]);
    assert_eq!(v["summary"][0]["added"], 1);
    assert_eq!(v["summary"][0]["renamed"], 1);
    // conv1 and ip2 kept their weights; renamed ip1 -> fc1 has another shape, so is not compared.
    let tensors: Vec<&str> = v["weights"].as_array().expect("weights").iter().filter_map(|w| w["tensor"].as_str()).collect();
    assert!(tensors.contains(&"conv1.weight") && tensors.contains(&"ip2.weight"), "{tensors:?}");
    assert!(!tensors.contains(&"ip1.weight") && !tensors.contains(&"conv2.weight"), "{tensors:?}");
    let conv1 = v["weights"].as_array().expect("weights").iter().find(|w| w["tensor"] == "conv1.weight").expect("conv1");
    assert_eq!(conv1["equal"], 1.0, "conv1 kept its weights");
    assert_eq!(conv1["l2"], 0.0);
}

#[test]
fn diff_of_three_versions_and_the_papers_spellings() {
    let s = explore_repo();
    let text = s.ok(&["diff", "lenet~1", "lenet", "lenet-wide"]);
    insta::assert_snapshot!("diff_three_text", redact(&s, &text));
    let by_refs = s.ok(&["diff", "lenet", "lenet-wide", "--json"]);
    assert_eq!(s.ok(&["diff", "--model_names", "lenet,lenet-wide", "--json"]), by_refs);
    assert_eq!(s.ok(&["diff", "--model-names", "lenet", "--model-names", "lenet-wide", "--json"]), by_refs);
    assert_eq!(s.ok(&["diff", "--versions", "lenet", "--versions", "lenet-wide", "--json"]), by_refs);
    // `--output json` in front of the refs does not swap them.
    assert_eq!(s.ok(&["diff", "--output", "json", "lenet", "lenet-wide"]), by_refs);
    assert_eq!(s.ok(&["diff", "lenet", "--output", "json", "lenet-wide"]), by_refs);
}

#[test]
fn bad_desc_and_diff_arguments_are_user_errors() {
    let s = explore_repo();
    let err = s.fails(&["diff", "lenet"], 1);
    assert!(err.contains("at least two"), "{err}");
    let err = s.fails(&["diff", "lenet", "nosuch"], 1);
    assert!(err.contains("nosuch"), "{err}");
    let err = s.fails(&["desc", "lenet", "--output", "html"], 1);
    assert!(err.contains("html output needs a file"), "{err}");
    let err = s.fails(&["desc", "lenet", "--output", "pdf"], 1);
    assert!(err.contains("pdf"), "{err}");
    let err = s.fails(&["desc", "--output", "json"], 1);
    assert!(err.contains("which version"), "{err}");
    let err = s.fails(&["desc", "--output", "text", "lenet", "lenet~1"], 1);
    assert!(err.contains("one version"), "{err}");
    let err = s.fails(&["desc", "lenet", "--output", "json=x.json"], 1);
    assert!(err.contains("only html"), "{err}");
}

/// Writes both reports; returns their paths.
fn html_reports(s: &Scratch) -> (PathBuf, PathBuf) {
    s.ok(&["desc", "lenet~1", "--output", "html", "desc.html"]);
    s.ok(&["diff", "lenet~1", "lenet", "lenet-wide", "--output", "html=diff.html"]);
    (s.path().join("desc.html"), s.path().join("diff.html"))
}

#[test]
fn html_reports_are_self_contained() {
    let s = explore_repo();
    let (desc, diff) = html_reports(&s);
    let d = std::fs::read_to_string(&desc).expect("desc.html");
    for needle in ["<svg", "id=\"graph\"", "class=\"chart histogram\"", "class=\"chart metric\"", "data:image/png;base64,", "id=\"layer-1\"", "id=\"activations\""] {
        assert!(d.contains(needle), "desc.html lacks {needle}");
    }
    let f = std::fs::read_to_string(&diff).expect("diff.html");
    for needle in ["id=\"graph-0\"", "id=\"graph-2\"", "class=\"chart metric\"", "node act added", "renamed"] {
        assert!(f.contains(needle), "diff.html lacks {needle}");
    }
    for doc in [&d, &f] {
        assert!(!doc.contains("<script"), "reports need no script");
        for attr in ["src=\"http", "href=\"http", "url(http", "@import"] {
            assert!(!doc.contains(attr), "a report must not load anything from the network ({attr})");
        }
    }
    // Activation maps of the first convolution, or of the layer asked for.
    let acts = &d[d.find("id=\"activations\"").expect("activations")..];
    assert!(acts.contains("conv1 (Convolution, output 1x20x24x24)") && acts.contains("alt=\"activations of conv1\""), "{acts}");
    s.ok(&["desc", "lenet~1", "--output", "html", "pool2.html", "--layer", "pool2"]);
    let p = std::fs::read_to_string(s.path().join("pool2.html")).expect("pool2.html");
    assert!(p.contains("alt=\"activations of pool2\""));
    let err = s.fails(&["desc", "lenet~1", "--layer", "nope"], 1);
    assert!(err.contains("no layer of that name"), "{err}");
    // `--out FILE` and `-` (stdout) work too.
    s.ok(&["desc", "lenet", "--output", "html", "--out", "other.html"]);
    assert!(s.path().join("other.html").exists());
    assert!(s.ok(&["desc", "lenet", "--output", "html", "-"]).starts_with("<!DOCTYPE html>"));
}

// ---------------------------------------------------------------------------------------------
// The reports in a real browser.

/// Records script errors and console errors into a DOM element that `--dump-dom` shows.
const PROBE: &str = r#"<script>
window.__dlvErrors = [];
function __dlvRecord(m){ window.__dlvErrors.push(String(m)); var e=document.getElementById('dlv-errors'); if(!e){ e=document.createElement('pre'); e.id='dlv-errors'; (document.body||document.documentElement).appendChild(e);} e.textContent=window.__dlvErrors.join('\n'); }
window.addEventListener('error', function(ev){ __dlvRecord('error: ' + (ev.message || (ev.target && (ev.target.src || ev.target.href)) || 'resource failed')); }, true);
var __dlvConsoleError = console.error; console.error = function(){ __dlvRecord('console.error: ' + Array.prototype.join.call(arguments,' ')); return __dlvConsoleError.apply(console, arguments); };
window.addEventListener('load', function(){
  var svgs = document.querySelectorAll('svg.graph').length, charts = document.querySelectorAll('figure.chart svg').length;
  var nodes = document.querySelectorAll('svg.graph g.node').length, edges = document.querySelectorAll('svg.graph path.edge').length;
  var imgs = Array.prototype.filter.call(document.images, function(i){ return i.complete && i.naturalWidth > 0; }).length;
  var bad = Array.prototype.filter.call(document.images, function(i){ return i.complete && i.naturalWidth === 0; }).length;
  var box = document.querySelector('svg.graph'); var w = box ? box.getBoundingClientRect().width : 0;
  var p = document.createElement('pre'); p.id = 'dlv-probe';
  p.textContent = 'graphs=' + svgs + ' nodes=' + nodes + ' edges=' + edges + ' charts=' + charts + ' images=' + imgs + ' broken=' + bad + ' graphwidth=' + Math.round(w);
  document.body.appendChild(p);
});
</script>"#;

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("target/test-artifacts");
    dir
}

fn run_chromium(browser: &Path, profile: &Path, extra: &[String], url: &str) -> (String, String) {
    let mut cmd = StdCommand::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1400,2000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(url);
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", browser.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "chromium failed ({:?}):\n{stderr}", out.status.code());
    (stdout, stderr)
}

fn probe_value(dom: &str, key: &str) -> u64 {
    let Some(start) = dom.find("id=\"dlv-probe\"") else { panic!("the probe did not run; DOM:\n{dom}") };
    let text = &dom[start..];
    let Some(at) = text.find(&format!("{key}=")) else { panic!("probe lacks {key}: {text}") };
    text[at + key.len() + 1..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap_or(0)
}

#[test]
fn html_reports_render_in_headless_chromium() {
    let Some(browser) = chromium() else {
        if std::env::var("DLV_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
            panic!("DLV_REQUIRE_BROWSER=1 but no `chromium` on PATH: install Debian's package (apt-get install -y chromium)");
        }
        eprintln!("note: skipping the browser check: no `chromium` on PATH (set DLV_REQUIRE_BROWSER=1 to make this an error)");
        return;
    };
    let s = explore_repo();
    let (desc, diff) = html_reports(&s);
    let out_dir = artifacts();
    for (name, path, graphs, charts) in [("desc", desc, 1, 10), ("diff", diff, 3, 2)] {
        let doc = std::fs::read_to_string(&path).expect("report");
        // The probe goes first in <head> so that it sees every error the page raises.
        let probed = doc.replacen("<head>", &format!("<head>{PROBE}"), 1);
        let probed_path = s.path().join(format!("{name}-probed.html"));
        std::fs::write(&probed_path, probed).expect("write probed copy");
        let url = format!("file://{}", probed_path.display());
        let profile = tempfile::tempdir().expect("profile dir");
        let (dom, stderr) = run_chromium(&browser, profile.path(), &["--dump-dom".to_string()], &url);
        assert!(!dom.contains("id=\"dlv-errors\""), "{name}: the page logged errors:\n{dom}");
        assert!(probe_value(&dom, "graphs") >= graphs, "{name}: graph not rendered");
        assert!(probe_value(&dom, "nodes") >= 9, "{name}: graph nodes missing");
        assert!(probe_value(&dom, "edges") >= 8, "{name}: graph edges missing");
        assert!(probe_value(&dom, "charts") >= charts, "{name}: charts not rendered");
        assert!(probe_value(&dom, "graphwidth") > 100, "{name}: graph has no size");
        assert_eq!(probe_value(&dom, "broken"), 0, "{name}: an image did not decode");
        if name == "desc" {
            assert!(probe_value(&dom, "images") >= 1, "desc: filter image not rendered");
        }
        // Console messages of the page itself, as Chromium logs them with --enable-logging.
        for line in stderr.lines().filter(|l| l.contains("CONSOLE")) {
            assert!(!line.to_ascii_lowercase().contains("error"), "{name}: console error: {line}");
        }
        std::fs::copy(&path, out_dir.join(format!("{name}.html"))).expect("keep report");
        let shot = out_dir.join(format!("{name}.png"));
        let _ = std::fs::remove_file(&shot);
        let profile = tempfile::tempdir().expect("profile dir");
        run_chromium(&browser, profile.path(), &[format!("--screenshot={}", shot.display())], &format!("file://{}", path.display()));
        let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{name}: no screenshot at {}: {e}", shot.display()));
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{name}: screenshot looks empty");
    }
}
