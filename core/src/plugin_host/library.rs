//! Loading and checking one plugin library, and calling its instances.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{c_char, c_void};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, OnceLock};

use genesis_plugin_sdk::abi::{
    CreateFn, DestroyFn, FreeBufFn, LastErrorFn, ProcessFn, STATUS_ERROR, STATUS_OK, STATUS_PANIC,
};
use genesis_plugin_sdk::{
    is_valid_type_name, GenesisBuf, GenesisStageDecl, ABI_VERSION, DECLARATION_SYMBOL,
    MAX_TYPE_NAME_LEN, SDK_VERSION,
};

use crate::pipeline::stage::{PluginInstance, PluginLibrary, PluginLoader, StageFactory};
use crate::plugin_host::stage::PluginStageFactory;

/// Longest `sdk_version` string accepted.
const MAX_SDK_VERSION_LEN: usize = 64;

/// Why a library was refused. Each message names the library (by file
/// name: callers show the full path) and says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("{file}: no such file ({reason}); build the plugin first (e.g. `cargo build --release -p <plugin crate>`) or fix the path", file = file_name(.path))]
    NotFound { path: PathBuf, reason: String },
    #[error("{file} is not a file; name the plugin's shared library (.so, .dylib, .dll)", file = file_name(.path))]
    NotAFile { path: PathBuf },
    #[error("{file} cannot be loaded as a shared library: {reason}")]
    Open { file: String, reason: String },
    #[error("{file} is not a genesis-recovery plugin: it does not export `{DECLARATION_SYMBOL}` (build it with genesis-plugin-sdk's `export_stage!` macro)")]
    NoSymbol { file: String },
    #[error("{file}: `{DECLARATION_SYMBOL}` returned {problem}; the plugin is broken, rebuild it with genesis-plugin-sdk {SDK_VERSION}")]
    BadDeclaration { file: String, problem: String },
    #[error("{file} was built against plugin ABI {found}, this host speaks ABI {ABI_VERSION}: rebuild the plugin against genesis-plugin-sdk {SDK_VERSION}")]
    AbiMismatch { file: String, found: u32 },
    #[error("{file} declares a {found}-byte declaration, but ABI {ABI_VERSION} needs at least {needed} bytes: the plugin was built with an incompatible SDK; rebuild it against genesis-plugin-sdk {SDK_VERSION}")]
    DeclarationTooSmall {
        file: String,
        found: u32,
        needed: usize,
    },
    #[error("{file} declares the stage type {name:?}; a type name must be 1-{MAX_TYPE_NAME_LEN} characters of a-z, 0-9 and '-': change the name in the plugin's `export_stage!`")]
    BadTypeName { file: String, name: String },
    #[error("{file} declares stage type {name:?}, already declared by {other}: give one plugin another type name, or use only one of them", other = .other.display())]
    DuplicateType {
        file: String,
        name: String,
        other: PathBuf,
    },
    #[error("{file} declares stage type {name:?}, which is a built-in stage type: change the name in the plugin's `export_stage!`")]
    ReservedType { file: String, name: String },
}

/// How messages name a library: its file name (callers show the full path).
fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    )
}

/// The functions of a checked declaration (all present).
#[derive(Clone, Copy)]
struct Functions {
    create: CreateFn,
    process: ProcessFn,
    free_buf: FreeBufFn,
    destroy: DestroyFn,
    last_error: LastErrorFn,
}

/// A loaded, checked plugin library. It lives until the process ends.
pub struct LoadedLibrary {
    path: PathBuf,
    file: String,
    type_name: String,
    sdk_version: String,
    functions: Functions,
}

impl std::fmt::Debug for LoadedLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedLibrary")
            .field("path", &self.path)
            .field("type_name", &self.type_name)
            .field("sdk_version", &self.sdk_version)
            .finish_non_exhaustive()
    }
}

impl LoadedLibrary {
    /// The version of genesis-plugin-sdk the plugin was built with.
    pub fn sdk_version(&self) -> &str {
        &self.sdk_version
    }
}

impl Functions {
    /// Copies a buffer the plugin returned and hands it back to the plugin.
    fn take_buf(&self, buf: GenesisBuf) -> Vec<u8> {
        if buf.ptr.is_null() {
            return Vec::new();
        }
        let bytes = if buf.len <= isize::MAX as usize {
            // SAFETY: the plugin returned a buffer of `len` initialized bytes
            // at `ptr` that stays valid until we pass it to `free_buf` below.
            unsafe { std::slice::from_raw_parts(buf.ptr, buf.len) }.to_vec()
        } else {
            Vec::new()
        };
        // SAFETY: `buf` came from this library and is freed exactly once.
        unsafe { (self.free_buf)(buf) };
        bytes
    }

    /// The plugin's last error message for `handle` (null: the last `create`
    /// on this thread), or `fallback` when it gave none.
    fn last_error(&self, handle: *mut c_void, fallback: &str) -> String {
        // SAFETY: `handle` is null or a live handle of this library not in
        // use by another call (instances are used through `&mut`).
        let buf = unsafe { (self.last_error)(handle) };
        let text = String::from_utf8_lossy(&self.take_buf(buf))
            .trim()
            .to_string();
        if text.is_empty() {
            fallback.to_string()
        } else {
            text
        }
    }
}

impl PluginLibrary for LoadedLibrary {
    fn type_name(&self) -> &str {
        &self.type_name
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn instantiate(
        &self,
        config_json: &[u8],
    ) -> std::result::Result<Box<dyn PluginInstance>, String> {
        // SAFETY: `create` is the checked function of a library that is never
        // unloaded; the config buffer is valid for the duration of the call.
        let handle = unsafe { (self.functions.create)(config_json.as_ptr(), config_json.len()) };
        match NonNull::new(handle) {
            Some(handle) => Ok(Box::new(LoadedInstance {
                functions: self.functions,
                handle,
            })),
            None => Err(self.functions.last_error(
                std::ptr::null_mut(),
                "the plugin refused to create an instance and gave no reason",
            )),
        }
    }

    fn into_stage_factory(self: Arc<Self>) -> Arc<dyn StageFactory> {
        Arc::new(PluginStageFactory::new(self))
    }
}

/// One instance of a plugin: its opaque handle, destroyed on drop.
struct LoadedInstance {
    /// The library's functions (valid forever: libraries are never unloaded).
    functions: Functions,
    handle: NonNull<c_void>,
}

// SAFETY: the plugin contract (the SDK's `PluginStage: Send`) lets an
// instance move between threads; it is never used by two threads at once
// because every use goes through `&mut self` or `drop`.
unsafe impl Send for LoadedInstance {}

impl PluginInstance for LoadedInstance {
    fn call(&mut self, input: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let mut out = GenesisBuf::EMPTY;
        let handle = self.handle.as_ptr();
        let functions = self.functions;
        // SAFETY: a live handle of this library, used by this call only; the
        // input buffer is valid for the call and `out` is a valid place to write.
        let status = unsafe { (functions.process)(handle, input.as_ptr(), input.len(), &mut out) };
        let output = functions.take_buf(out);
        match status {
            STATUS_OK => Ok(output),
            STATUS_ERROR => {
                Err(functions.last_error(handle, "the plugin failed and gave no reason"))
            }
            STATUS_PANIC => {
                Err(functions.last_error(handle, "the plugin panicked and gave no message"))
            }
            other => Err(functions.last_error(
                handle,
                &format!("the plugin failed with status {other} and gave no reason"),
            )),
        }
    }
}

impl Drop for LoadedInstance {
    fn drop(&mut self) {
        // SAFETY: the handle is live and never used after this call.
        unsafe { (self.functions.destroy)(self.handle.as_ptr()) };
    }
}

/// Every library loaded by this process, by canonical path.
fn registry() -> &'static Mutex<HashMap<PathBuf, Arc<LoadedLibrary>>> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, Arc<LoadedLibrary>>>> = OnceLock::new();
    LOADED.get_or_init(Default::default)
}

/// Loads plugin libraries from the paths pipelines name (see the module
/// documentation for the checks). One loader is meant to serve one program
/// run: it remembers which library declared which stage type.
#[derive(Debug, Default)]
pub struct LibraryLoader {
    declared: Mutex<BTreeMap<String, PathBuf>>,
    reserved: BTreeSet<String>,
}

impl LibraryLoader {
    /// A loader with no stage types declared yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also refuses libraries declaring one of these names (e.g. the
    /// built-in stage types).
    pub fn reserving<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.reserved.extend(names.into_iter().map(Into::into));
        self
    }

    /// Loads and checks the library at `path` (or returns the one already
    /// loaded from the same canonical path).
    ///
    /// # Errors
    /// A [`LoadError`] saying what is wrong and what to do.
    pub fn load_library(&self, path: &Path) -> Result<Arc<LoadedLibrary>, LoadError> {
        let canonical = std::fs::canonicalize(path).map_err(|e| LoadError::NotFound {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if !canonical.is_file() {
            return Err(LoadError::NotAFile { path: canonical });
        }
        let library = {
            let mut loaded = registry().lock().unwrap_or_else(|p| p.into_inner());
            match loaded.get(&canonical) {
                Some(library) => library.clone(),
                None => {
                    let library = Arc::new(open_and_check(&canonical)?);
                    loaded.insert(canonical.clone(), library.clone());
                    library
                }
            }
        };
        let mut declared = self.declared.lock().unwrap_or_else(|p| p.into_inner());
        let name = &library.type_name;
        if self.reserved.contains(name) {
            return Err(LoadError::ReservedType {
                file: library.file.clone(),
                name: name.clone(),
            });
        }
        match declared.get(name) {
            Some(other) if other != &canonical => Err(LoadError::DuplicateType {
                file: library.file.clone(),
                name: name.clone(),
                other: other.clone(),
            }),
            Some(_) => Ok(library),
            None => {
                declared.insert(name.clone(), canonical);
                Ok(library)
            }
        }
    }
}

impl PluginLoader for LibraryLoader {
    fn load(&self, path: &Path) -> std::result::Result<Arc<dyn PluginLibrary>, String> {
        self.load_library(path)
            .map(|library| library as Arc<dyn PluginLibrary>)
            .map_err(|e| e.to_string())
    }
}

/// Opens the library (never to be closed) and checks its declaration.
fn open_and_check(path: &Path) -> Result<LoadedLibrary, LoadError> {
    let file = path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    let library = open(path).map_err(|e| LoadError::Open {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    // Never unloaded: see the module documentation.
    let library: &'static libloading::Library = Box::leak(Box::new(library));
    type DeclarationFn = unsafe extern "C" fn() -> *const GenesisStageDecl;
    // SAFETY: the SDK defines the symbol as `extern "C" fn() -> *const
    // GenesisStageDecl`; a library exporting the name with another type
    // breaks the plugin contract, which no host can detect.
    let declaration = unsafe { library.get::<DeclarationFn>(DECLARATION_SYMBOL.as_bytes()) }
        .map_err(|_| LoadError::NoSymbol { file: file.clone() })?;
    // SAFETY: as above; the function only returns a pointer to static data.
    let decl = unsafe { declaration() };
    let bad = |problem: &str| LoadError::BadDeclaration {
        file: file.clone(),
        problem: problem.to_string(),
    };
    if decl.is_null() {
        return Err(bad("a null pointer"));
    }
    if !decl.cast::<u32>().is_aligned() {
        return Err(bad("a misaligned pointer"));
    }
    // SAFETY: every ABI puts the `u32` version first: reading it is valid for
    // a pointer to any plugin's declaration.
    let found = unsafe { decl.cast::<u32>().read() };
    if found != ABI_VERSION {
        return Err(LoadError::AbiMismatch { file, found });
    }
    // SAFETY: ABI 1 puts the `u32` size second.
    let size = unsafe { decl.cast::<u32>().add(1).read() };
    let needed = std::mem::size_of::<GenesisStageDecl>();
    if (size as usize) < needed {
        return Err(LoadError::DeclarationTooSmall {
            file,
            found: size,
            needed,
        });
    }
    if !decl.is_aligned() {
        return Err(bad("a misaligned pointer"));
    }
    // SAFETY: ABI version and size checked: the pointer refers to at least a
    // whole, aligned ABI-1 declaration in static memory of a library that is
    // never unloaded.
    let decl: &'static GenesisStageDecl = unsafe { &*decl };
    let functions = Functions {
        create: decl
            .create
            .ok_or_else(|| bad("a declaration without `create`"))?,
        process: decl
            .process
            .ok_or_else(|| bad("a declaration without `process`"))?,
        free_buf: decl
            .free_buf
            .ok_or_else(|| bad("a declaration without `free_buf`"))?,
        destroy: decl
            .destroy
            .ok_or_else(|| bad("a declaration without `destroy`"))?,
        last_error: decl
            .last_error
            .ok_or_else(|| bad("a declaration without `last_error`"))?,
    };
    // SAFETY: the declaration's strings are static NUL-terminated data (or
    // null, which `bounded_c_str` refuses); reads stop at the NUL or the bound.
    let name = unsafe { bounded_c_str(decl.type_name, MAX_TYPE_NAME_LEN) };
    let type_name = match name.as_deref() {
        Some(name) if is_valid_type_name(name) => name.to_string(),
        _ => {
            return Err(LoadError::BadTypeName {
                file,
                name: name.unwrap_or_else(|| "(not a short NUL-terminated UTF-8 string)".into()),
            })
        }
    };
    // SAFETY: as for the type name.
    let sdk_version = unsafe { bounded_c_str(decl.sdk_version, MAX_SDK_VERSION_LEN) }
        .ok_or_else(|| bad("a declaration whose sdk_version is not a short UTF-8 string"))?;
    tracing::debug!(library = %path.display(), %type_name, %sdk_version, "plugin loaded");
    Ok(LoadedLibrary {
        path: path.to_path_buf(),
        file,
        type_name,
        sdk_version,
        functions,
    })
}

/// Opens a shared library from exactly this (absolute) path, resolving all
/// its symbols now so that a broken library fails here and not mid-run.
fn open(path: &Path) -> Result<libloading::Library, libloading::Error> {
    #[cfg(unix)]
    {
        use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
        // SAFETY: loading runs the library's initializers; the path comes
        // from a pipeline file the user wrote (see the module documentation).
        unsafe { Library::open(Some(path.as_os_str()), RTLD_NOW | RTLD_LOCAL) }.map(Into::into)
    }
    #[cfg(not(unix))]
    {
        // SAFETY: as above.
        unsafe { libloading::Library::new(path.as_os_str()) }
    }
}

/// The UTF-8 string at `ptr` if it is non-null, NUL-terminated within
/// `max + 1` bytes, and valid UTF-8.
///
/// # Safety
/// A non-null `ptr` must be readable up to its NUL or `max + 1` bytes,
/// whichever comes first.
unsafe fn bounded_c_str(ptr: *const c_char, max: usize) -> Option<String> {
    if ptr.is_null() {
        return None;
    }
    let mut bytes = Vec::new();
    for i in 0..=max {
        // SAFETY: within the bound the caller guarantees readable; we stop at
        // the first NUL.
        let byte = unsafe { ptr.add(i).cast::<u8>().read() };
        if byte == 0 {
            return String::from_utf8(bytes).ok();
        }
        bytes.push(byte);
    }
    None
}
