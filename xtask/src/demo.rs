//! The demo: a scratch repository, two LeNet versions with lineage, list, desc, checkout, fsck,
//! then training LeNet on the bundled digits and testing it.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::testdata;

fn dlv(bin: &Path, dir: &Path, args: &[&str]) -> Result<()> {
    println!("\n$ dlv {}", args.join(" "));
    let status = Command::new(bin).current_dir(dir).args(args).status().with_context(|| format!("running {}", bin.display()))?;
    if !status.success() {
        bail!("`dlv {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

pub fn run(args: &[String]) -> Result<()> {
    let bin = crate::build_dlv(true)?;
    let root = crate::root();
    let work = match args.first() {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::env::temp_dir().join(format!("dlv-demo-{}", std::process::id())),
    };
    if work.join(".dlv").exists() {
        bail!("{} already holds a repository; give another folder", work.display());
    }
    std::fs::create_dir_all(&work)?;
    println!("demo repository: {}", work.display());
    for (src, dst) in [
        ("testdata/nets/lenet_train_test.prototxt", "lenet_train_test.prototxt"),
        ("testdata/nets/lenet_solver.prototxt", "lenet_solver.prototxt"),
        ("testdata/weights/lenet.safetensors", "lenet.safetensors"),
    ] {
        std::fs::copy(root.join(src), work.join(dst)).with_context(|| format!("copying {src}"))?;
    }
    let log = root.join("testdata/logs/lenet_train.log");
    let have_log = log.is_file();
    if have_log {
        std::fs::copy(&log, work.join("train.log"))?;
    }
    dlv(&bin, &work, &["init"])?;
    let mut add = vec!["add", "lenet_train_test.prototxt", "lenet_solver.prototxt", "lenet.safetensors"];
    if have_log {
        add.push("train.log");
    }
    dlv(&bin, &work, &add)?;
    dlv(&bin, &work, &["status"])?;
    dlv(&bin, &work, &["commit", "-m", "LeNet initial weights", "--name", "lenet"])?;

    // A fine-tuned variant: every weight moved a little, committed as a child.
    let mut tuned = testdata::init_tensors(testdata::LENET, 42);
    testdata::perturb(&mut tuned, 7, 0.01);
    testdata::write_safetensors(&work.join("lenet.safetensors"), &tuned)?;
    dlv(&bin, &work, &["add", "lenet_train_test.prototxt", "lenet.safetensors"])?;
    dlv(&bin, &work, &["commit", "-m", "fine-tuned", "--name", "lenet"])?;
    dlv(&bin, &work, &["add", "lenet_train_test.prototxt", "lenet.safetensors"])?;
    dlv(&bin, &work, &["commit", "-m", "branch for experiments", "--name", "lenet-exp", "--parent", "lenet~1"])?;

    dlv(&bin, &work, &["list"])?;
    dlv(&bin, &work, &["query", "select m where m.name like \"lenet%\" and m[\"conv*\"].next has POOL(\"MAX\")"])?;
    dlv(&bin, &work, &["diff", "lenet~1", "lenet"])?;
    dlv(&bin, &work, &["desc", "lenet"])?;
    dlv(&bin, &work, &["checkout", "lenet~1", "--to", "restored"])?;
    dlv(&bin, &work, &["checkout", "lenet", "--to", "restored-bf16", "--precision", "bf16"])?;
    dlv(&bin, &work, &["fsck"])?;
    dlv(&bin, &work, &["gc"])?;
    // Train LeNet on the bundled digits (UCI 8x8 digits upscaled to 28x28, see
    // testdata/data/README.md) from the newest version, then test the result: about 98% test
    // accuracy after 1000 iterations (45 epochs), about a minute on two CPU cores.
    let digits = root.join("testdata/data/digits");
    let digits = digits.to_string_lossy();
    dlv(&bin, &work, &["train", "lenet", "--data", &digits, "--iters", "1000", "-m", "LeNet trained on the bundled digits"])?;
    dlv(&bin, &work, &["eval", "lenet", "--data", &digits])?;
    println!("\ndemo finished; the repository is in {}", work.display());
    Ok(())
}
