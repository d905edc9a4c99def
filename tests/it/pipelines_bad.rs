//! `pipelines check`: a malformed pipeline file exits 2 and every problem of
//! the file is printed, each with `file:line` (or, for problems of the whole
//! document or of a `--set`, the file and the key); the shipped pipelines
//! compile.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{stderr_text, Env};

/// A malformed pipeline and the problems `pipelines check` must report:
/// (line, a piece of the message) each; `None` for problems with no line.
struct Bad {
    name: &'static str,
    text: &'static str,
    set: &'static [&'static str],
    expect: &'static [(Option<usize>, &'static str)],
}

const BAD: &[Bad] = &[
    Bad {
        name: "syntax.toml",
        text: "name = \"syntax\"\n\n[[stages]]\nid = \"fetch\"\ntype = \"fetch\n",
        set: &[],
        expect: &[(Some(5), "invalid TOML")],
    },
    Bad {
        name: "unknown_type.toml",
        text: "name = \"t\"\n\n[[stages]]\nid = \"fetch\"\ntype = \"fetchh\"\n",
        set: &[],
        expect: &[(Some(5), "unknown stage type \"fetchh\"")],
    },
    Bad {
        name: "duplicate_id.toml",
        text: "name = \"t\"\n[[stages]]\nid = \"fetch\"\ntype = \"fetch\"\n[[stages]]\nid = \"fetch\"\ntype = \"decompress\"\n",
        set: &[],
        expect: &[(Some(6), "duplicate stage id \"fetch\"")],
    },
    Bad {
        name: "unknown_top_key.toml",
        text: "name = \"t\"\nauthor = \"me\"\n[[stages]]\nid = \"fetch\"\ntype = \"fetch\"\n",
        set: &[],
        expect: &[(Some(2), "unknown key `author`")],
    },
    Bad {
        name: "unknown_stage_key.toml",
        text: "name = \"t\"\n[[stages]]\nid = \"fetch\"\ntype = \"fetch\"\nworker = 2\n",
        set: &[],
        expect: &[(Some(5), "unknown key `worker`")],
    },
    Bad {
        name: "orphan_input.toml",
        text: "name = \"t\"\n\n[[stages]]\nid = \"apply\"\ntype = \"wal-apply\"\n",
        set: &[],
        expect: &[(Some(5), "wal-apply")],
    },
    Bad {
        name: "orphan_middle.toml",
        text: "name = \"t\"\n[[stages]]\nid = \"fetch\"\ntype = \"fetch\"\n[[stages]]\nid = \"replay\"\ntype = \"event-replay\"\n",
        set: &[],
        expect: &[(Some(7), "event-replay")],
    },
    Bad {
        name: "workers_zero.toml",
        text: "name = \"t\"\n[[stages]]\nid = \"fetch\"\ntype = \"fetch\"\nworkers = 0\n",
        set: &[],
        expect: &[(Some(5), "not 0")],
    },
    Bad {
        name: "workers_text.toml",
        text: "name = \"t\"\n[[stages]]\nid = \"fetch\"\ntype = \"fetch\"\nworkers = \"two\"\n",
        set: &[],
        expect: &[(Some(5), "workers")],
    },
    Bad {
        name: "on_error.toml",
        text: "name = \"t\"\n[[stages]]\nid = \"fetch\"\ntype = \"fetch\"\non_error = \"retry\"\n",
        set: &[],
        expect: &[(Some(5), "retry")],
    },
    Bad {
        name: "missing_name.toml",
        text: "description = \"no name\"\n[[stages]]\nid = \"fetch\"\ntype = \"fetch\"\n",
        set: &[],
        expect: &[(None, "no `name`")],
    },
    Bad {
        name: "no_stages.toml",
        text: "name = \"t\"\n",
        set: &[],
        expect: &[(None, "stage")],
    },
    Bad {
        name: "plugin_without_library.toml",
        text: "name = \"t\"\n[[stages]]\nid = \"fetch\"\ntype = \"fetch\"\n[[stages]]\nid = \"x\"\ntype = \"plugin\"\n",
        set: &[],
        expect: &[(Some(7), "library")],
    },
    Bad {
        name: "plugin_missing.toml",
        text: "name = \"t\"\n[[stages]]\nid = \"fetch\"\ntype = \"fetch\"\n[[stages]]\nid = \"x\"\ntype = \"plugin\"\nlibrary = \"no/such/libnothing.so\"\n",
        set: &[],
        expect: &[(Some(8), "libnothing.so")],
    },
    Bad {
        name: "unknown_param.toml",
        text: "name = \"t\"\n[params]\ntarget = \"latest\"\n[[stages]]\nid = \"fetch\"\ntype = \"fetch\"\n[stages.config]\ntarget = \"${nope}\"\n",
        set: &[],
        expect: &[(Some(8), "${nope}")],
    },
    Bad {
        name: "bad_set_value.toml",
        text: "name = \"t\"\n[params]\nstrict = false\n[[stages]]\nid = \"fetch\"\ntype = \"fetch\"\n[stages.config]\nstrict = \"${strict}\"\n",
        set: &["strict=maybe"],
        expect: &[(None, "\"maybe\" is not a boolean")],
    },
    Bad {
        name: "bad_set_key.toml",
        text: "name = \"t\"\n[params]\nstrict = false\n[[stages]]\nid = \"fetch\"\ntype = \"fetch\"\n",
        set: &["nosuch=1"],
        expect: &[(None, "no parameter `nosuch`")],
    },
    Bad {
        name: "three_problems.toml",
        text: "name = \"three\"\n\n[params]\ntarget = \"latest\"\n\n[[stages]]\nid = \"fetch\"\ntype = \"fetchh\"\n[stages.config]\ntarget = \"${target}\"\n\n[[stages]]\nid = \"decompress\"\ntype = \"decompress\"\nworkers = 0\n\n[[stages]]\nid = \"verify\"\ntype = \"verify\"\ncolour = \"blue\"\n",
        set: &[],
        expect: &[
            (Some(8), "unknown stage type \"fetchh\""),
            (Some(15), "not 0"),
            (Some(20), "unknown key `colour`"),
        ],
    },
];

/// The lines of `pipelines check` output that report a problem of `file`.
fn issue_lines<'a>(stderr: &'a str, file: &Path) -> Vec<&'a str> {
    let f = file.display().to_string();
    stderr
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(&format!("{f}:")))
        .collect()
}

fn check(env: &Env, files: &[PathBuf], set: &[&str]) -> std::process::Output {
    let mut c = env.cmd();
    c.args(["pipelines", "check"]);
    for s in set {
        c.args(["--set", s]);
    }
    c.args(files).output().expect("pipelines check")
}

fn assert_reports(b: &Bad, file: &Path, stderr: &str) {
    let lines = issue_lines(stderr, file);
    assert_eq!(
        lines.len(),
        b.expect.len(),
        "{}: expected {} problem(s), got:\n{stderr}",
        b.name,
        b.expect.len()
    );
    for (line, what) in b.expect {
        let prefix = match line {
            Some(n) => format!("{}:{n}: ", file.display()),
            None => format!("{}: ", file.display()),
        };
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&prefix) && l.contains(what)),
            "{}: no problem reported as `{prefix}... {what} ...`; got:\n{stderr}",
            b.name
        );
    }
}

#[test]
fn every_problem_of_a_malformed_pipeline_is_reported_with_its_line() {
    let env = Env::new();
    let mut plain = Vec::new();
    for b in BAD {
        let file = env.path().join(b.name);
        std::fs::write(&file, b.text).unwrap();
        let o = check(&env, std::slice::from_ref(&file), b.set);
        let e = stderr_text(&o);
        assert_eq!(o.status.code(), Some(2), "{}: {e}", b.name);
        assert!(!e.contains("panicked"), "{}: {e}", b.name);
        assert_reports(b, &file, &e);
        if b.set.is_empty() {
            plain.push((b, file));
        }
    }
    // All files at once: every problem of every file, and exit code 2.
    let files: Vec<PathBuf> = plain.iter().map(|(_, f)| f.clone()).collect();
    let o = check(&env, &files, &[]);
    let e = stderr_text(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    for (b, f) in &plain {
        assert_reports(b, f, &e);
    }
    // --json carries the same problems with file, line and key.
    let (code, v) = env.json(&[
        "pipelines",
        "check",
        env.path().join("three_problems.toml").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert_eq!(v["ok"], false);
    let errs = v["errors"].as_array().expect("errors");
    let got: Vec<(u64, &str)> = errs
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().unwrap_or(0),
                e["key"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (8, "stages[0].type"),
            (15, "stages[1].workers"),
            (20, "stages[2].colour")
        ]
    );
}

#[test]
fn the_shipped_pipelines_compile() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // risk-check.toml and funding-replay.toml load plugins from target/release.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "genesis-plugin-risk-limits",
            "-p",
            "genesis-plugin-funding-payment",
        ])
        .status()
        .expect("run cargo");
    assert!(st.success(), "building the plugins failed");
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("pipelines"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "{files:?}");
    let env = Env::new();
    let o = check(&env, &files, &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr_text(&o));
    for f in &files {
        assert!(
            out.contains(&format!("ok: {}", f.display())),
            "{} not reported ok:\n{out}",
            f.display()
        );
    }
}
