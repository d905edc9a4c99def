//! The plugin host end to end: the real plugin cdylibs of the workspace (and
//! C fixtures compiled here with the system C compiler) loaded through
//! compiled pipelines, their results checked, and every refusal's message.
//!
//! The plugin crates are built by `cargo build -p ...` from the test (once per
//! test process; a no-op when they are fresh), into the target directory this
//! test binary lives in.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use genesis_core::pipeline::{
    compile_str, Artifact, ArtifactKind, BuildContext, CancelToken, Emit, PluginLibrary,
    PluginLoader, RunFailure, RunOutcome, Stage, StageContext, StageFactory, StageRegistry,
    StagedDatabase,
};
use genesis_core::plugin_host::{
    execute_statements, EventHandlerPlugin, LibraryLoader, LoadError, SqlValue, WireEvent,
};
use genesis_core::progress::NoProgress;
use genesis_core::Error;
use serde_json::json;

const PLUGIN_CRATES: &[&str] = &[
    "genesis-plugin-risk-limits",
    "genesis-plugin-funding-payment",
    "genesis-plugin-passthrough",
    "genesis-plugin-fixture-faulty",
];

/// The directory of this build profile (`target/debug`, `target/release`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/plugins-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// Builds the plugin crates once per process; returns cargo's complaint if
/// the build failed.
fn build_plugins() -> &'static Option<String> {
    static BUILT: OnceLock<Option<String>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = profile_dir();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command.arg("build").current_dir(env!("CARGO_MANIFEST_DIR"));
        match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some("release") => {
                command.arg("--release");
            }
            Some(profile) => {
                command.args(["--profile", profile]);
            }
            None => {}
        }
        for name in PLUGIN_CRATES {
            command.args(["-p", name]);
        }
        match command.output() {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(String::from_utf8_lossy(&out.stderr).into_owned()),
            Err(e) => Some(format!("cannot run cargo: {e}")),
        }
    })
}

/// The path of a plugin crate's shared library, built if needed.
fn plugin(crate_name: &str) -> PathBuf {
    let file = format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        crate_name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    );
    let path = profile_dir().join(file);
    let failure = build_plugins();
    if !path.is_file() {
        panic!(
            "{} is missing and building it failed:\n{}",
            path.display(),
            failure.as_deref().unwrap_or("(cargo reported success)")
        );
    }
    if let Some(message) = failure {
        eprintln!(
            "warning: rebuilding the plugins failed, using the existing libraries:\n{message}"
        );
    }
    path
}

/// What the C fixture declares.
struct CFixture {
    symbol: &'static str,
    abi: &'static str,
    size: &'static str,
    type_name: &'static str,
}

const GOOD_C: CFixture = CFixture {
    symbol: "genesis_stage_declaration",
    abi: "1",
    size: "sizeof(GenesisStageDecl)",
    type_name: "c-plugin",
};

/// A plugin written in C against the ABI's layout, with knobs to break it.
const C_SOURCE: &str = r#"
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
typedef struct { uint8_t *ptr; size_t len; size_t cap; } GenesisBuf;
typedef struct {
    uint32_t abi_version;
    uint32_t decl_size;
    const char *type_name;
    const char *sdk_version;
    void *(*create)(const uint8_t *, size_t);
    int32_t (*process)(void *, const uint8_t *, size_t, GenesisBuf *);
    void (*free_buf)(GenesisBuf);
    void (*destroy)(void *);
    GenesisBuf (*last_error)(void *);
} GenesisStageDecl;
static int instance;
static void *create(const uint8_t *config, size_t len) { (void)config; (void)len; return &instance; }
static int32_t process(void *h, const uint8_t *in, size_t n, GenesisBuf *out) {
    (void)h; (void)in; (void)n;
    const char *doc = "{\"warnings\":[{\"code\":\"c_plugin\",\"message\":\"hello from C\"}]}";
    size_t len = strlen(doc);
    uint8_t *p = malloc(len);
    memcpy(p, doc, len);
    out->ptr = p; out->len = len; out->cap = len;
    return 0;
}
static void free_buf(GenesisBuf b) { free(b.ptr); }
static void destroy(void *h) { (void)h; }
static GenesisBuf last_error(void *h) { (void)h; GenesisBuf b = {0, 0, 0}; return b; }
static const GenesisStageDecl DECL = {
    ABI, DECL_SIZE, TYPE_NAME, "c-fixture", create, process, free_buf, destroy, last_error
};
const GenesisStageDecl *SYMBOL(void) { return &DECL; }
"#;

/// Compiles a C fixture into `dir`.
fn c_plugin(dir: &Path, name: &str, fixture: &CFixture) -> PathBuf {
    let source = dir.join(format!("{name}.c"));
    std::fs::write(&source, C_SOURCE).unwrap();
    let library = dir.join(format!("lib{name}{}", std::env::consts::DLL_SUFFIX));
    let compiler = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let out = Command::new(compiler)
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .arg(format!("-DSYMBOL={}", fixture.symbol))
        .arg(format!("-DABI={}", fixture.abi))
        .arg(format!("-DDECL_SIZE={}", fixture.size))
        .arg(format!("-DTYPE_NAME=\"{}\"", fixture.type_name))
        .output()
        .expect("a C compiler (cc, or $CC) to build the C fixtures");
    assert!(
        out.status.success(),
        "compiling the C fixture failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    library
}

/// A test stage that starts the chain: takes the request and emits a staged
/// database at `config.path`.
struct Source;

impl StageFactory for Source {
    fn type_name(&self) -> &str {
        "source"
    }
    fn inputs(&self) -> &[ArtifactKind] {
        &[ArtifactKind::Request]
    }
    fn outputs(&self) -> &[ArtifactKind] {
        &[ArtifactKind::StagedDatabase]
    }
    fn build(
        &self,
        config: &toml::Table,
        _ctx: &BuildContext<'_>,
    ) -> Result<Box<dyn Stage>, Vec<(String, String)>> {
        let path = config
            .get("path")
            .and_then(|v| v.as_str())
            .ok_or_else(|| vec![("path".to_string(), "needed".to_string())])?;
        Ok(Box::new(SourceStage(PathBuf::from(path))))
    }
}

struct SourceStage(PathBuf);

impl Stage for SourceStage {
    fn process(
        &mut self,
        _input: Artifact,
        _ctx: &StageContext,
        out: &mut dyn Emit,
    ) -> genesis_core::Result<()> {
        // Built from its JSON form so that this test does not depend on
        // every field of the artifact.
        let staged: StagedDatabase = serde_json::from_value(json!({
            "path": self.0, "txid": 42, "generation": "g1", "checksum": "00ff",
            "pages": 2, "page_size": 4096, "events_replayed": 0, "plugin_reports": {},
        }))
        .expect("a staged database");
        out.emit(Artifact::StagedDatabase(Box::new(staged)))
    }
}

fn registry() -> StageRegistry {
    let mut registry = StageRegistry::new();
    registry.register(Arc::new(Source)).unwrap();
    registry
}

/// A pipeline: the source stage, then one plugin stage per `(id, library,
/// config)`.
fn pipeline(db: &Path, plugins: &[(&str, &Path, &str)]) -> String {
    let mut text = format!(
        "name = \"plugin-test\"\n\n[[stages]]\nid = \"source\"\ntype = \"source\"\n\
         [stages.config]\npath = {:?}\n",
        db.display().to_string()
    );
    for (id, library, config) in plugins {
        text.push_str(&format!(
            "\n[[stages]]\nid = \"{id}\"\ntype = \"plugin\"\nlibrary = {:?}\n[stages.config]\n{config}\n",
            library.display().to_string()
        ));
    }
    text
}

fn compile_and_run(
    dir: &Path,
    text: &str,
    loader: &dyn PluginLoader,
) -> genesis_core::Result<Result<RunOutcome, Box<RunFailure>>> {
    let compiled = compile_str(text, &dir.join("pipeline.toml"), &registry(), loader, &[])?;
    Ok(compiled.run(Arc::new(NoProgress), CancelToken::default()))
}

fn staged(outcome: &RunOutcome) -> &StagedDatabase {
    match outcome.outputs.as_slice() {
        [Artifact::StagedDatabase(db)] => db,
        other => panic!("expected one staged database, got {other:?}"),
    }
}

/// A trading database with positions above and near the limits.
fn risk_database(dir: &Path) -> PathBuf {
    let path = dir.join("staged.db");
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(
        "CREATE TABLE positions (position_id TEXT PRIMARY KEY, symbol TEXT, side TEXT,
           entry_price REAL, quantity REAL, status TEXT, opened_at TEXT, strategy_id TEXT,
           unrealized_pnl REAL, realized_pnl REAL, current_price REAL, exit_price REAL,
           closed_at TEXT);
         CREATE TABLE risk_limits (limit_type TEXT PRIMARY KEY, limit_value REAL, tier TEXT,
           updated_at TEXT);
         INSERT INTO positions (position_id, symbol, side, entry_price, quantity, status)
           VALUES ('p1', 'BTC/USDT', 'long', 50000, 1.2, 'open'),
                  ('p2', 'ETH/USDT', 'short', 3000, 3, 'open'),
                  ('p3', 'BTC/USDT', 'long', 50000, 10, 'closed');
         INSERT INTO risk_limits VALUES
           ('max_position_size:BTC/USDT', 50000, 'hunter', '2025-01-01T00:00:00'),
           ('max_exposure_per_symbol', 10000, 'hunter', '2025-01-01T00:00:00'),
           ('max_total_exposure', 100000, 'hunter', '2025-01-01T00:00:00');",
    )
    .unwrap();
    path
}

fn error_text(result: genesis_core::Result<Result<RunOutcome, Box<RunFailure>>>) -> String {
    match result {
        Err(e) => e.to_string(),
        Ok(Err(failure)) => failure.to_string(),
        Ok(Ok(_)) => panic!("expected a failure"),
    }
}

#[test]
fn risk_limits_plugin_reports_exposures_above_and_near_limits() {
    let dir = tempfile::tempdir().unwrap();
    let db = risk_database(dir.path());
    let library = plugin("genesis-plugin-risk-limits");
    let text = pipeline(&db, &[("risk", &library, "warn_fraction = 0.6")]);
    let outcome = compile_and_run(dir.path(), &text, &LibraryLoader::new())
        .unwrap()
        .unwrap();
    let staged = staged(&outcome);
    assert_eq!(staged.txid, 42, "the artifact passes through");
    let validation = staged.validation.as_ref().expect("the plugin's findings");
    assert!(!validation.is_consistent);
    assert_eq!(validation.errors.len(), 1, "{:#?}", validation.errors);
    assert_eq!(validation.errors[0].code, "risk_limit_exceeded");
    assert!(validation.errors[0].message.contains("BTC/USDT"));
    assert!(validation.errors[0]
        .message
        .contains("max_position_size:BTC/USDT"));
    let warnings: Vec<&str> = validation
        .warnings
        .iter()
        .map(|w| w.message.as_str())
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(warnings.iter().any(|w| w.contains("ETH/USDT")));
    assert!(warnings.iter().any(|w| w.contains("the total")));
    assert_eq!(validation.metrics["risk"]["total_exposure"], json!(69000.0));
    let report = &staged.plugin_reports["risk"];
    assert_eq!(report["exposure_per_symbol"]["BTC/USDT"], json!(60000.0));
    assert_eq!(report["warn_fraction"], json!(0.6));
    let stage = outcome.stages.iter().find(|s| s.id == "risk").unwrap();
    assert_eq!(stage.stage_type, "risk-limits");
}

#[test]
fn risk_limits_plugin_passes_a_database_within_its_limits() {
    let dir = tempfile::tempdir().unwrap();
    let db = risk_database(dir.path());
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE positions SET quantity = 0.1 WHERE status = 'open'",
            [],
        )
        .unwrap();
    let library = plugin("genesis-plugin-risk-limits");
    let text = pipeline(&db, &[("risk", &library, "")]);
    let outcome = compile_and_run(dir.path(), &text, &LibraryLoader::new())
        .unwrap()
        .unwrap();
    let validation = staged(&outcome).validation.clone().unwrap();
    assert!(validation.is_consistent, "{validation:#?}");
    assert!(validation.errors.is_empty() && validation.warnings.is_empty());
}

#[test]
fn a_bad_plugin_config_is_a_compile_error_with_the_plugins_message() {
    let dir = tempfile::tempdir().unwrap();
    let db = risk_database(dir.path());
    let library = plugin("genesis-plugin-risk-limits");
    let text = pipeline(&db, &[("risk", &library, "warn_fraction = 3.0")]);
    let message = error_text(compile_and_run(dir.path(), &text, &LibraryLoader::new()));
    assert!(
        message.contains("warn_fraction must be above 0 and at most 1"),
        "{message}"
    );
    assert!(message.contains("refused its config"), "{message}");
}

#[test]
fn passthrough_plugin_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = risk_database(dir.path());
    let library = plugin("genesis-plugin-passthrough");
    let text = pipeline(&db, &[("pass", &library, "")]);
    let outcome = compile_and_run(dir.path(), &text, &LibraryLoader::new())
        .unwrap()
        .unwrap();
    let staged = staged(&outcome);
    assert!(staged.validation.is_none());
    assert!(staged.plugin_reports.is_empty());
}

#[test]
fn passthrough_calls_are_cheap() {
    // Not the benchmark (the RTO bench measures a restore with and without a
    // pass-through stage; the budget is 2%): a guard against an accidental
    // per-call cost such as a reload or a large copy.
    let loader = LibraryLoader::new();
    let library = loader
        .load_library(&plugin("genesis-plugin-passthrough"))
        .unwrap();
    let mut instance = library.instantiate(b"{}").unwrap();
    let input = vec![b' '; 64 * 1024];
    let started = std::time::Instant::now();
    for _ in 0..1000 {
        assert_eq!(instance.call(&input).unwrap(), b"{}");
    }
    let per_call = started.elapsed() / 1000;
    assert!(
        per_call < std::time::Duration::from_millis(2),
        "{per_call:?} per call"
    );
}

#[test]
fn funding_payment_plugin_statements_adjust_the_balance() {
    let loader = LibraryLoader::new();
    let library = loader
        .load_library(&plugin("genesis-plugin-funding-payment"))
        .unwrap();
    assert_eq!(library.type_name(), "funding-payment");
    let mut handler = EventHandlerPlugin::new(library.as_ref(), &json!({})).unwrap();
    assert_eq!(handler.event_types(), ["FUNDING_PAYMENT"]);
    assert!(handler.handles("FUNDING_PAYMENT") && !handler.handles("ORDER_FILLED"));

    let dir = tempfile::tempdir().unwrap();
    let mut db = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE balances (asset TEXT PRIMARY KEY, free_balance REAL,
           locked_balance REAL, total_balance REAL, updated_at TEXT);
         INSERT INTO balances VALUES ('USDT', 1000.0, 250.0, 1250.0, '2025-01-15T14:00:00');",
    )
    .unwrap();
    let event = |id: &str, seq: i64, data: serde_json::Value| WireEvent {
        event_id: id.into(),
        event_type: "FUNDING_PAYMENT".into(),
        aggregate_id: "USDT".into(),
        event_data: data,
        sequence_number: seq,
        created_at: format!("2025-01-15T14:30:0{seq}.123456"),
    };
    let tx = db.transaction().unwrap();
    for (id, seq, amount) in [("f1", 1, -1.25), ("f2", 2, 0.5)] {
        let statements = handler
            .handle(&event(
                id,
                seq,
                json!({"asset": "USDT", "amount": amount, "symbol": "BTC/USDT"}),
            ))
            .unwrap();
        assert!(matches!(statements[0].params[0], SqlValue::Real(_)));
        assert_eq!(execute_statements(&tx, &statements), Ok(1));
    }
    tx.commit().unwrap();
    let row: (f64, f64, f64, String) = db
        .query_row(
            "SELECT free_balance, locked_balance, total_balance, updated_at FROM balances",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        row,
        (999.25, 250.0, 1249.25, "2025-01-15T14:30:02.123456".into())
    );

    // A payment for an asset without a balance fails, naming what happened.
    let statements = handler
        .handle(&event("f3", 3, json!({"asset": "BNB", "amount": 1})))
        .unwrap();
    let err = execute_statements(&db, &statements).unwrap_err();
    assert!(
        err.contains("changed 0 row(s), the plugin expected 1"),
        "{err}"
    );
    // Bad event data is the plugin's error, with the event named.
    let err = handler
        .handle(&event("f4", 4, json!({"asset": "USDT"})))
        .unwrap_err();
    assert!(err.contains("f4") && err.contains("amount"), "{err}");
}

#[test]
fn a_pipeline_stage_plugin_is_not_an_event_handler() {
    let loader = LibraryLoader::new();
    let library = loader
        .load_library(&plugin("genesis-plugin-risk-limits"))
        .unwrap();
    let err = EventHandlerPlugin::new(library.as_ref(), &json!({}))
        .err()
        .expect("refused");
    assert!(err.contains("failed to describe itself"), "{err}");
}

#[test]
fn loading_the_same_library_twice_gives_the_same_one() {
    let loader = LibraryLoader::new();
    let path = plugin("genesis-plugin-passthrough");
    let a = loader.load_library(&path).unwrap();
    // Through a different spelling of the same path.
    let dotted = path
        .parent()
        .unwrap()
        .join(".")
        .join(path.file_name().unwrap());
    let b = LibraryLoader::new().load_library(&dotted).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.path(), std::fs::canonicalize(&path).unwrap());
    assert_eq!(a.sdk_version(), genesis_core::plugin_host::SDK_VERSION);
}

#[test]
fn a_missing_library_is_refused_at_compile_time() {
    let dir = tempfile::tempdir().unwrap();
    let db = risk_database(dir.path());
    let text = pipeline(&db, &[("p", Path::new("nowhere/libmissing.so"), "")]);
    let message = error_text(compile_and_run(dir.path(), &text, &LibraryLoader::new()));
    assert!(message.contains("libmissing.so"), "{message}");
    assert!(message.contains("no such file"), "{message}");
    assert!(message.contains("cargo build --release -p"), "{message}");
    assert!(message.contains("stages[1].library"), "{message}");
}

#[test]
fn a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = LibraryLoader::new().load_library(dir.path()).unwrap_err();
    assert!(matches!(err, LoadError::NotAFile { .. }), "{err}");
}

#[test]
fn a_library_without_the_symbol_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let library = c_plugin(
        dir.path(),
        "nosymbol",
        &CFixture {
            symbol: "some_other_function",
            ..GOOD_C
        },
    );
    let err = LibraryLoader::new().load_library(&library).unwrap_err();
    assert!(matches!(err, LoadError::NoSymbol { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("libnosymbol.so is not a genesis-recovery plugin"),
        "{message}"
    );
    assert!(message.contains("genesis_stage_declaration"), "{message}");

    // The same through a pipeline: a configuration error naming the key.
    let db = risk_database(dir.path());
    let message = error_text(compile_and_run(
        dir.path(),
        &pipeline(&db, &[("p", &library, "")]),
        &LibraryLoader::new(),
    ));
    assert!(message.contains("stages[1].library"), "{message}");
    assert!(message.contains("does not export"), "{message}");
}

#[test]
fn a_file_that_is_not_a_library_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("libjunk.so");
    std::fs::write(&path, b"not an ELF file").unwrap();
    let err = LibraryLoader::new().load_library(&path).unwrap_err();
    assert!(matches!(err, LoadError::Open { .. }), "{err}");
    assert!(
        err.to_string().contains("libjunk.so cannot be loaded"),
        "{err}"
    );
}

#[test]
fn a_wrong_abi_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let library = c_plugin(dir.path(), "abi2", &CFixture { abi: "2", ..GOOD_C });
    let err = LibraryLoader::new().load_library(&library).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "libabi2.so was built against plugin ABI 2, this host speaks ABI 1: \
             rebuild the plugin against genesis-plugin-sdk {}",
            genesis_core::plugin_host::SDK_VERSION
        )
    );
}

#[test]
fn a_too_small_declaration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let library = c_plugin(
        dir.path(),
        "small",
        &CFixture {
            size: "16",
            ..GOOD_C
        },
    );
    let err = LibraryLoader::new().load_library(&library).unwrap_err();
    assert!(
        matches!(err, LoadError::DeclarationTooSmall { found: 16, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("16-byte declaration"), "{err}");
}

#[test]
fn a_bad_type_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let library = c_plugin(
        dir.path(),
        "badname",
        &CFixture {
            type_name: "Risk_Limits",
            ..GOOD_C
        },
    );
    let err = LibraryLoader::new().load_library(&library).unwrap_err();
    assert!(matches!(err, LoadError::BadTypeName { .. }), "{err}");
    assert!(err.to_string().contains("\"Risk_Limits\""), "{err}");
}

#[test]
fn a_plugin_written_in_c_runs_as_a_stage() {
    let dir = tempfile::tempdir().unwrap();
    let library = c_plugin(dir.path(), "cgood", &GOOD_C);
    let db = risk_database(dir.path());
    let outcome = compile_and_run(
        dir.path(),
        &pipeline(&db, &[("c", &library, "")]),
        &LibraryLoader::new(),
    )
    .unwrap()
    .unwrap();
    let validation = staged(&outcome).validation.clone().unwrap();
    assert!(validation.is_consistent);
    assert_eq!(validation.warnings[0].message, "hello from C");
}

#[test]
fn a_duplicate_stage_type_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let original = plugin("genesis-plugin-passthrough");
    let copy = dir
        .path()
        .join(format!("libother{}", std::env::consts::DLL_SUFFIX));
    std::fs::copy(&original, &copy).unwrap();

    let loader = LibraryLoader::new();
    loader.load_library(&original).unwrap();
    let err = loader.load_library(&copy).unwrap_err();
    assert!(matches!(err, LoadError::DuplicateType { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("libother.so declares stage type \"passthrough\""),
        "{message}"
    );
    assert!(message.contains("already declared by"), "{message}");

    // A type name reserved for a built-in stage.
    let loader = LibraryLoader::new().reserving(["passthrough"]);
    let err = loader.load_library(&original).unwrap_err();
    assert!(matches!(err, LoadError::ReservedType { .. }), "{err}");
    assert!(err.to_string().contains("built-in stage type"), "{err}");

    // Through a pipeline naming both.
    let db = risk_database(dir.path());
    let text = pipeline(&db, &[("a", &original, ""), ("b", &copy, "")]);
    let message = error_text(compile_and_run(dir.path(), &text, &LibraryLoader::new()));
    assert!(message.contains("stages[2].library"), "{message}");
    assert!(message.contains("already declared"), "{message}");
}

#[test]
fn a_plugin_that_fails_or_panics_fails_its_stage_and_the_host_survives() {
    let dir = tempfile::tempdir().unwrap();
    let db = risk_database(dir.path());
    let faulty = plugin("genesis-plugin-fixture-faulty");
    let loader = LibraryLoader::new();

    // At create: a compile error with the plugin's message.
    for (flag, expected) in [
        ("fail_on_create", "faulty fixture: fail_on_create was set"),
        (
            "panic_on_create",
            "the plugin panicked: faulty fixture: panic_on_create was set",
        ),
    ] {
        let text = pipeline(&db, &[("f", &faulty, &format!("{flag} = true"))]);
        let message = error_text(compile_and_run(dir.path(), &text, &loader));
        assert!(message.contains(expected), "{message}");
    }

    // At process: the run fails with Error::Plugin carrying the message.
    for (flag, expected) in [
        ("fail_on_process", "faulty fixture: fail_on_process was set"),
        (
            "panic_on_process",
            "the plugin panicked: faulty fixture: panic_on_process was set",
        ),
    ] {
        let text = pipeline(&db, &[("f", &faulty, &format!("{flag} = true"))]);
        let failure = compile_and_run(dir.path(), &text, &loader)
            .unwrap()
            .unwrap_err();
        assert_eq!(failure.stage.as_deref(), Some("f"));
        assert!(
            failure.to_string().starts_with("stage `f` failed: plugin "),
            "{failure}"
        );
        match &failure.error {
            Error::Plugin { library, detail } => {
                assert_eq!(library, &std::fs::canonicalize(&faulty).unwrap());
                assert!(detail.contains(expected), "{detail}");
            }
            other => panic!("expected a plugin error, got {other:?}"),
        }
    }

    // A panicked instance refuses further work; a new one works; the host
    // (this process) is still here.
    let library = loader.load_library(&faulty).unwrap();
    let mut instance = library
        .instantiate(br#"{"panic_on_process": true}"#)
        .unwrap();
    assert!(instance.call(b"{}").unwrap_err().contains("panicked"));
    let err = instance.call(b"{}").unwrap_err();
    assert!(err.contains("refuses further work"), "{err}");
    let mut healthy = library.instantiate(b"{}").unwrap();
    assert_eq!(healthy.call(b"{}").unwrap(), b"{}");

    let outcome = compile_and_run(dir.path(), &pipeline(&db, &[("f", &faulty, "")]), &loader)
        .unwrap()
        .unwrap();
    assert_eq!(staged(&outcome).txid, 42);
}

#[test]
fn a_plugin_whose_answer_is_not_a_stage_output_fails_clearly() {
    // funding-payment answers a staged database with an error (it expects
    // event-handler requests): the stage fails with that message.
    let dir = tempfile::tempdir().unwrap();
    let db = risk_database(dir.path());
    let library = plugin("genesis-plugin-funding-payment");
    let failure = compile_and_run(
        dir.path(),
        &pipeline(&db, &[("fp", &library, "")]),
        &LibraryLoader::new(),
    )
    .unwrap()
    .unwrap_err();
    assert!(
        failure
            .to_string()
            .contains("the input is not an event-handler request"),
        "{failure}"
    );
}

/// Loaders are shared between threads by the compiler and the runner.
#[test]
fn the_loader_is_usable_from_many_threads() {
    let loader = Arc::new(LibraryLoader::new());
    let path = plugin("genesis-plugin-passthrough");
    let seen = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                let library = loader.load(&path).unwrap();
                let mut instance = library.instantiate(b"{}").unwrap();
                assert_eq!(instance.call(b"{}").unwrap(), b"{}");
                seen.lock().unwrap().push(library.path().to_path_buf());
            });
        }
    });
    let seen = seen.into_inner().unwrap();
    assert!(seen.windows(2).all(|w| w[0] == w[1]));
}

/// The shipped pipelines name the libraries the plugin crates really build
/// (the full compile with the built-in stages is checked where they live).
#[cfg(target_os = "linux")]
#[test]
fn shipped_pipelines_name_the_built_plugin_files() {
    let pipelines = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines");
    let read = |name: &str| -> toml::Table {
        toml::from_str(&std::fs::read_to_string(pipelines.join(name)).unwrap()).unwrap()
    };
    let file_of = |path: &str| Path::new(path).file_name().unwrap().to_owned();

    let risk = read("risk-check.toml");
    let stages = risk["stages"].as_array().unwrap();
    let last = stages.last().unwrap();
    assert_eq!(last["type"].as_str(), Some("plugin"));
    let library = last["library"].as_str().unwrap();
    assert!(library.starts_with("../target/release/"), "{library}");
    assert_eq!(
        file_of(library),
        plugin("genesis-plugin-risk-limits").file_name().unwrap()
    );

    let funding = read("funding-replay.toml");
    let replay = funding["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["type"].as_str() == Some("event-replay"))
        .unwrap();
    let library = replay["config"]["plugins"][0].as_str().unwrap();
    assert!(library.starts_with("../target/release/"), "{library}");
    assert_eq!(
        file_of(library),
        plugin("genesis-plugin-funding-payment")
            .file_name()
            .unwrap()
    );
}
