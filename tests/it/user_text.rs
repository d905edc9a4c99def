//! Snapshot tests of what users read: the help of the main commands and the
//! messages of the most common mistakes. A change to any of them shows up as
//! a snapshot diff to review (`cargo insta review`, or accept by replacing
//! the file under tests/it/snapshots/).

use crate::common::Env;

fn stdout(args: &[&str]) -> String {
    let env = Env::new();
    let o = env.cmd().args(args).output().expect("run");
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr_of(env: &Env, args: &[&str]) -> String {
    let o = env.run(args);
    // Temporary paths differ between runs; name them.
    String::from_utf8_lossy(&o.stderr)
        .replace(env.path().to_str().unwrap_or("/nonexistent"), "<dir>")
}

#[test]
fn help_texts() {
    insta::assert_snapshot!("help", stdout(&["--help"]));
    insta::assert_snapshot!("restore_help", stdout(&["restore", "--help"]));
    insta::assert_snapshot!("backup_help", stdout(&["backup", "--help"]));
    insta::assert_snapshot!("replicate_help", stdout(&["backup", "replicate", "--help"]));
}

#[test]
fn messages_of_common_mistakes() {
    let env = Env::new();
    insta::assert_snapshot!("missing_database", stderr_of(&env, &["backup", "full"]));
    insta::assert_snapshot!("no_repository", stderr_of(&env, &["list-backups"]));
    insta::assert_snapshot!("restore_without_target", stderr_of(&env, &["restore"]));
    insta::assert_snapshot!(
        "bad_timestamp",
        stderr_of(&env, &["restore", "--timestamp", "yesterday"])
    );
    insta::assert_snapshot!(
        "bad_backup_id",
        stderr_of(&env, &["restore", "--backup-id", "../x"])
    );
}
