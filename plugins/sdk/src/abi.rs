//! The C ABI between genesis-recovery and a plugin library: the declaration a
//! plugin exports, the buffer type that carries documents back to the host,
//! and the status codes of `process`.
//!
//! Layout rules (ABI version 1): [`GenesisStageDecl`] is `#[repr(C)]`; its
//! first field is always the `u32` ABI version and its second the `u32` size
//! of the declaration in bytes, so that any host can read those two fields of
//! any plugin. A later minor change may only append fields (the host accepts a
//! larger `decl_size`); anything else bumps [`ABI_VERSION`].

use std::ffi::{c_char, c_void};

/// The ABI version this SDK builds and this host speaks.
pub const ABI_VERSION: u32 = 1;

/// The exported symbol: `extern "C" fn() -> *const GenesisStageDecl`.
pub const DECLARATION_SYMBOL: &str = "genesis_stage_declaration";

/// `process` succeeded; the output buffer holds the output document.
pub const STATUS_OK: i32 = 0;
/// The plugin returned an error; `last_error(handle)` holds its message.
pub const STATUS_ERROR: i32 = 1;
/// The plugin panicked (caught); `last_error(handle)` holds the message. The
/// instance refuses further calls.
pub const STATUS_PANIC: i32 = 2;
/// The call itself was malformed (null handle or output pointer).
pub const STATUS_INVALID: i32 = 3;

/// A byte buffer allocated by the plugin and handed to the host, which copies
/// it and gives it back to the plugin's `free_buf`. `cap` is the allocator's
/// business and means nothing to the host. A null `ptr` is the empty buffer.
#[repr(C)]
#[derive(Debug)]
pub struct GenesisBuf {
    pub ptr: *mut u8,
    pub len: usize,
    pub cap: usize,
}

impl GenesisBuf {
    /// The empty buffer (null pointer, nothing to free).
    pub const EMPTY: GenesisBuf = GenesisBuf {
        ptr: std::ptr::null_mut(),
        len: 0,
        cap: 0,
    };

    /// Hands a vector's allocation over the boundary.
    pub fn from_vec(bytes: Vec<u8>) -> GenesisBuf {
        let mut bytes = std::mem::ManuallyDrop::new(bytes);
        GenesisBuf {
            ptr: bytes.as_mut_ptr(),
            len: bytes.len(),
            cap: bytes.capacity(),
        }
    }

    /// Takes back an allocation made by [`GenesisBuf::from_vec`].
    ///
    /// # Safety
    /// `self` must come from `from_vec` in this same library and not have
    /// been reclaimed yet.
    pub unsafe fn into_vec(self) -> Vec<u8> {
        if self.ptr.is_null() {
            return Vec::new();
        }
        // SAFETY: the caller guarantees ptr/len/cap come from a Vec<u8> of
        // this library's allocator that nobody reclaimed.
        unsafe { Vec::from_raw_parts(self.ptr, self.len, self.cap) }
    }
}

/// Creates an instance from its config document (`config`, `len` bytes of
/// JSON). Returns an opaque handle, or null on error (then
/// `last_error(null)` on the same thread gives the message).
pub type CreateFn = unsafe extern "C" fn(config: *const u8, len: usize) -> *mut c_void;

/// Sends one input document to an instance; on [`STATUS_OK`] `*out` holds
/// the output document. Other statuses are listed above.
pub type ProcessFn = unsafe extern "C" fn(
    handle: *mut c_void,
    input: *const u8,
    len: usize,
    out: *mut GenesisBuf,
) -> i32;

/// Frees a buffer the plugin returned.
pub type FreeBufFn = unsafe extern "C" fn(buf: GenesisBuf);

/// Destroys an instance; the handle is invalid afterwards.
pub type DestroyFn = unsafe extern "C" fn(handle: *mut c_void);

/// The UTF-8 message of the last failure: of `process` on `handle`, or, with a
/// null handle, of the last `create` on the calling thread. The empty buffer
/// when there is none. The host frees it with `free_buf`.
pub type LastErrorFn = unsafe extern "C" fn(handle: *mut c_void) -> GenesisBuf;

/// What a plugin library declares (ABI version 1). Every function pointer is
/// nullable on the C side; the host refuses a declaration with a null one.
#[repr(C)]
#[derive(Debug)]
pub struct GenesisStageDecl {
    /// Always first: [`ABI_VERSION`] of the SDK the plugin was built with.
    pub abi_version: u32,
    /// Always second: `size_of::<GenesisStageDecl>()` as the plugin saw it.
    pub decl_size: u32,
    /// Static NUL-terminated stage type name (`[a-z0-9-]`, 1-64 bytes).
    pub type_name: *const c_char,
    /// Static NUL-terminated version of the SDK the plugin was built with.
    pub sdk_version: *const c_char,
    pub create: Option<CreateFn>,
    pub process: Option<ProcessFn>,
    pub free_buf: Option<FreeBufFn>,
    pub destroy: Option<DestroyFn>,
    pub last_error: Option<LastErrorFn>,
}

// SAFETY: a declaration is immutable static data: pointers to static strings
// and function pointers, never written after construction, so sharing it
// between threads is sound.
unsafe impl Sync for GenesisStageDecl {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_abi_1() {
        // The host reads these offsets from any plugin: keep them fixed.
        assert_eq!(std::mem::offset_of!(GenesisStageDecl, abi_version), 0);
        assert_eq!(std::mem::offset_of!(GenesisStageDecl, decl_size), 4);
        let word = std::mem::size_of::<usize>();
        assert_eq!(std::mem::offset_of!(GenesisStageDecl, type_name), 8);
        assert_eq!(std::mem::size_of::<GenesisStageDecl>(), 8 + 7 * word);
        assert_eq!(std::mem::size_of::<GenesisBuf>(), 3 * word);
    }

    #[test]
    fn buffers_round_trip() {
        let buf = GenesisBuf::from_vec(b"hello".to_vec());
        // SAFETY: buf comes from from_vec just above.
        assert_eq!(unsafe { buf.into_vec() }, b"hello");
        // SAFETY: the empty buffer owns nothing.
        assert!(unsafe { GenesisBuf::EMPTY.into_vec() }.is_empty());
    }
}
