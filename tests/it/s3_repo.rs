//! The `s3://` repository as a user meets it: URLs parsed everywhere a
//! repository is accepted (no silent local folder for a URL), credentials
//! refused in URLs and never printed or stored, the `[s3]` table of the
//! settings file, and create-only objects against the real S3 server.

use std::path::Path;

use crate::common::{stderr_text, Env, Store};
use crate::s3_server::server;

/// Every directory entry under `dir`, recursively.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.display().to_string());
        if p.is_dir() {
            out.extend(tree(&p));
        }
    }
    out
}

fn simulated(env: &Env) {
    let o = env.run(&["simulate", "--rate", "0", "--max-commits", "50"]);
    assert!(o.status.success(), "{}", stderr_text(&o));
}

#[test]
fn a_url_that_is_not_a_repository_is_refused_and_creates_nothing() {
    let env = Env::new();
    simulated(&env);
    let before = tree(env.path());
    for repo in [
        "gs://genesis-backups/prod",
        "https://example.com/backups",
        "s3:/genesis-backups/prod",
        "s3://Not_A_Bucket/prod",
        "s3://genesis-backups/a/../b",
    ] {
        for args in [
            vec!["backup", "full"],
            vec!["list-backups"],
            vec!["verify-backups"],
            vec!["restore", "--latest", "--dry-run"],
        ] {
            let o = env
                .cmd_with_repo(Path::new(repo))
                .args(&args)
                .output()
                .unwrap();
            assert_eq!(
                o.status.code(),
                Some(2),
                "{repo} {args:?}: {}",
                stderr_text(&o)
            );
            let err = stderr_text(&o);
            assert!(
                err.contains("s3://BUCKET/PREFIX"),
                "{repo} {args:?}: the error must say what a repository is: {err}"
            );
        }
    }
    let mut after = tree(env.path());
    after.retain(|p| !p.contains("genesis-recovery.lock") && !p.contains(".genesis"));
    let mut b = before.clone();
    b.retain(|p| !p.contains(".genesis"));
    assert_eq!(after, b, "a refused repository URL left something behind");
}

#[test]
fn credentials_in_a_repository_url_are_refused_and_never_printed() {
    let env = Env::new();
    simulated(&env);
    for repo in [
        "s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMIbPxRfiCYEXAMPLEKEY@genesis-backups/prod",
        "s3://AKIAIOSFODNN7EXAMPLE@genesis-backups/prod",
    ] {
        let o = env
            .cmd_with_repo(Path::new(repo))
            .args(["--json", "backup", "full"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));
        let all = format!("{}{}", stderr_text(&o), String::from_utf8_lossy(&o.stdout));
        assert!(all.contains("AWS_ACCESS_KEY_ID"), "{all}");
        assert!(all.contains("[s3]"), "{all}");
        assert!(
            !all.contains("AKIAIOSFODNN7EXAMPLE") && !all.contains("wJalrXUtnFEMI"),
            "a credential was printed: {all}"
        );
    }
    assert!(!env.path().join("s3:").exists());
}

#[test]
fn a_plain_http_endpoint_needs_allowing() {
    let s3 = server();
    let env = Env::on(Store::S3);
    simulated(&env);
    let o = env
        .cmd()
        .env_remove("AWS_ALLOW_HTTP")
        .args(["backup", "full"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr_text(&o));
    let err = stderr_text(&o);
    assert!(
        err.contains("plain http") && err.contains("AWS_ALLOW_HTTP"),
        "{err}"
    );
    assert!(err.contains(&s3.endpoint()), "{err}");
}

/// `repository = "s3://..."` and the `[s3]` table, with no AWS variable in
/// the environment; the secret appears in no output, log or object.
#[test]
fn the_settings_file_names_an_s3_repository_and_its_secret_stays_there() {
    let s3 = server();
    let env = Env::new();
    simulated(&env);
    let url = s3.new_repo_url("settings");
    let secret = "settings-file-secret-1f3a9";
    std::fs::write(
        env.path().join("genesis-recovery.toml"),
        format!(
            "repository = \"{url}\"\n[s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\naccess_key_id = \"settings-key-id\"\nsecret_access_key = \"{secret}\"\n",
            s3.endpoint()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_genesis-recovery"));
        c.current_dir(env.path())
            .arg("--db")
            .arg(env.db())
            .arg("-vv");
        for (k, _) in s3.env() {
            c.env_remove(k);
        }
        let o = c.args(args).output().unwrap();
        let text = format!("{}{}", stderr_text(&o), String::from_utf8_lossy(&o.stdout));
        assert!(o.status.success(), "{args:?}: {text}");
        assert!(
            !text.contains(secret),
            "{args:?} printed the secret: {text}"
        );
        text
    };
    run(&["backup", "full"]);
    run(&["backup", "sync"]);
    let listed = run(&["--json", "list-backups"]);
    assert!(listed.contains("full_"), "{listed}");
    run(&["verify-backups"]);
    let out = env.path().join("restored.db");
    run(&[
        "restore",
        "--latest",
        "--no-validate",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(out.exists());
    assert!(!env.path().join(".genesis/backups").exists());
    assert!(!env.path().join("s3:").exists());
    // Nothing stored in the bucket carries the secret.
    let mut repo_env = Env::new();
    repo_env.repo_url = Some(url);
    let repo = repo_env.open_repo();
    let mut keys = 0;
    for dir in ["manifests", "snapshots", "segments", "events", "state"] {
        for key in repo.backend().list(dir).unwrap() {
            let b = repo.backend().get(&key).unwrap();
            assert!(
                !b.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{key} holds the secret"
            );
            keys += 1;
        }
    }
    assert!(keys >= 4, "only {keys} objects in the bucket");
}

/// Create-only puts on the real server: the same bytes again are success,
/// other bytes an error naming the object, and the stored object unchanged.
#[test]
fn objects_in_the_bucket_are_never_overwritten() {
    let env = Env::on(Store::S3);
    let repo =
        genesis_core::repo::Repository::open_path(&env.repo(), true).expect("open the prefix");
    let b = repo.backend();
    b.put("segments/x.zst", b"first bytes").unwrap();
    b.put("segments/x.zst", b"first bytes").unwrap();
    let e = b
        .put("segments/x.zst", b"other bytes")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("segments/x.zst") && e.contains("immutable"),
        "{e}"
    );
    assert_eq!(&*b.get("segments/x.zst").unwrap(), b"first bytes");
    assert_eq!(b.size("segments/x.zst").unwrap(), Some(11));
    assert_eq!(b.size("segments/none.zst").unwrap(), None);
    assert!(b.put("../escape", b"x").is_err());
    assert!(b.get("segments/../x").is_err());
    // A large object comes back whole through parallel ranged reads.
    let big: Vec<u8> = (0..(20u32 << 20) + 12345)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    b.put("snapshots/big.zst", &big).unwrap();
    let got = b.get("snapshots/big.zst").unwrap();
    assert_eq!(got.len(), big.len());
    assert!(*got == big[..], "ranged reads reassembled other bytes");
    assert_eq!(
        b.list("segments").unwrap(),
        vec!["segments/x.zst".to_string()]
    );
    b.delete("segments/x.zst").unwrap();
    assert!(!b.exists("segments/x.zst").unwrap());
}

/// A second capturer (another database, as from another host path) against
/// the same prefix is refused by the lease; the first one may come back.
#[test]
fn a_second_capturer_of_the_same_prefix_is_refused() {
    let first = Env::on(Store::S3);
    simulated(&first);
    let o = first.run(&["backup", "full"]);
    assert!(o.status.success(), "{}", stderr_text(&o));
    let mut second = Env::new();
    second.repo_url = first.repo_url.clone();
    simulated(&second);
    for args in [vec!["backup", "full"], vec!["backup", "sync"]] {
        let o = second.run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr_text(&o));
        let err = stderr_text(&o);
        assert!(
            err.contains("leased to") && err.contains(&first.db().display().to_string()),
            "{err}"
        );
        assert!(err.contains("lease/capturer.json"), "{err}");
    }
    let o = first.run(&["backup", "sync"]);
    assert!(o.status.success(), "{}", stderr_text(&o));
    let (code, v) = second.json(&["list-backups"]);
    assert_eq!(code, 0, "reading is not refused: {v}");
}

/// The lease outlives a crashed capturer (the same host may come back) and
/// is released by a `replicate` that stops cleanly, after which another
/// host's capturer may take the prefix.
#[test]
fn a_clean_stop_releases_the_lease_and_a_crash_keeps_it() {
    let first = Env::on(Store::S3);
    simulated(&first);
    let mut second = Env::new();
    second.repo_url = first.repo_url.clone();
    simulated(&second);
    let lease = || {
        first
            .open_repo()
            .backend()
            .get_state(genesis_core::repo::lease::LEASE_KEY)
            .expect("read the lease")
    };
    let refused = |who: &Env| {
        let o = who.run(&["backup", "full"]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr_text(&o));
        assert!(stderr_text(&o).contains("leased to"), "{}", stderr_text(&o));
    };
    let replicate = || {
        let child = first.spawn(&["backup", "replicate", "--interval", "200ms"]);
        crate::common::wait_for_capture_lock(&first);
        child
    };

    // Killed: the lease stays; the other host is refused, this one is not.
    let mut rep = replicate();
    refused(&second);
    crate::common::signal(&rep, "KILL");
    let _ = rep.wait();
    assert!(lease().is_some(), "a crashed capturer lost its lease");
    refused(&second);
    let o = first.run(&["backup", "sync"]);
    assert!(o.status.success(), "{}", stderr_text(&o));

    // Stopped by a signal: released once the spool is drained.
    let rep = replicate();
    refused(&second);
    crate::common::signal(&rep, "TERM");
    let out = crate::common::wait_output(rep, "replicate");
    assert!(out.status.success(), "{}", stderr_text(&out));
    assert_eq!(lease(), None, "a clean stop kept the lease");
    let o = second.run(&["backup", "full"]);
    assert!(o.status.success(), "{}", stderr_text(&o));
    refused(&first);

    // The end of `--run-for` is a clean stop too.
    let o = second.run(&["backup", "replicate", "--interval", "200ms", "--for", "1s"]);
    assert!(o.status.success(), "{}", stderr_text(&o));
    assert_eq!(lease(), None, "the end of the run kept the lease");
}
