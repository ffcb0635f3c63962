//! Stamps the build with the commit it was built from (`ARENA_GIT_COMMIT`, served as
//! `arena_build_info{commit}` on `/metrics`).
//!
//! A build without git or without a `.git` (a source tarball) still compiles: the commit is
//! "unknown" then. Cargo reruns this script only when `HEAD` or the branch it points at
//! moves, not on every build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = git(&manifest_dir, &["rev-parse", "--short=12", "HEAD"])
        .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=ARENA_GIT_COMMIT={commit}");
    if commit == "unknown" {
        return;
    }
    // What moves when a commit is made or checked out: HEAD itself, the branch's loose ref,
    // and packed-refs (where the ref lives after `git gc`). `--git-path` resolves them in a
    // worktree too. Only files that exist are named: cargo treats a missing one as always
    // changed, which would rerun this script on every build.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(branch) = git(&manifest_dir, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        let Some(path) = git(&manifest_dir, &["rev-parse", "--git-path", &name]) else {
            continue;
        };
        let path = manifest_dir.join(path);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

/// `git args` run in `dir`: its trimmed output, or None when git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    Some(text.trim().to_owned())
}
