//! The C functions [`export_stage!`](crate::export_stage) puts behind a
//! plugin's declaration: generic over the [`PluginStage`] type, each one a
//! thin `catch_unwind` shell that turns panics into error statuses.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::abi::{GenesisBuf, STATUS_ERROR, STATUS_INVALID, STATUS_OK, STATUS_PANIC};
use crate::PluginStage;

thread_local! {
    /// The message of the last failed `create` (or malformed call) on this thread.
    static THREAD_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// What a handle points to: the stage and its error slot.
struct Instance<T> {
    stage: T,
    last_error: Option<String>,
    poisoned: bool,
}

fn set_thread_error(message: String) {
    // `try_with`: during thread teardown the slot may be gone; the message is
    // then lost, which is the best that can be done.
    let _ = THREAD_ERROR.try_with(|slot| *slot.borrow_mut() = Some(message));
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    };
    format!("the plugin panicked: {text}")
}

/// Borrows `len` bytes at `ptr` (the empty slice for a null pointer).
///
/// # Safety
/// A non-null `ptr` must be valid for reads of `len` bytes for `'a`.
unsafe fn borrow_bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: guaranteed by the caller (the host passes its own live buffer).
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

/// `create` of the C ABI for `T`.
///
/// # Safety
/// `config` must be null or valid for reads of `len` bytes.
pub unsafe extern "C" fn create<T: PluginStage>(config: *const u8, len: usize) -> *mut c_void {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: forwarded from this function's contract.
        let bytes = unsafe { borrow_bytes(config, len) };
        let value = if bytes.is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_slice(bytes)
                .map_err(|e| format!("the config is not a JSON document: {e}"))?
        };
        let stage = T::new(value)?;
        Ok::<_, String>(Box::into_raw(Box::new(Instance {
            stage,
            last_error: None,
            poisoned: false,
        })))
    }));
    match result {
        Ok(Ok(instance)) => instance.cast(),
        Ok(Err(message)) => {
            set_thread_error(message);
            std::ptr::null_mut()
        }
        Err(payload) => {
            set_thread_error(panic_message(&*payload));
            std::ptr::null_mut()
        }
    }
}

/// `process` of the C ABI for `T`.
///
/// # Safety
/// `handle` must come from `create::<T>` and not be destroyed; `input` must
/// be null or valid for reads of `len` bytes; `out` must be null or valid for
/// a write; no other call may use `handle` concurrently.
pub unsafe extern "C" fn process<T: PluginStage>(
    handle: *mut c_void,
    input: *const u8,
    len: usize,
    out: *mut GenesisBuf,
) -> i32 {
    if handle.is_null() || out.is_null() {
        set_thread_error("process was called with a null handle or output pointer".into());
        return STATUS_INVALID;
    }
    // SAFETY: the caller guarantees `handle` is a live `Instance<T>` used by
    // nobody else during this call.
    let instance = unsafe { &mut *handle.cast::<Instance<T>>() };
    if instance.poisoned {
        instance.last_error =
            Some("this plugin instance panicked earlier and refuses further work".into());
        return STATUS_PANIC;
    }
    // SAFETY: forwarded from this function's contract.
    let bytes = unsafe { borrow_bytes(input, len) };
    let result = catch_unwind(AssertUnwindSafe(|| instance.stage.process(bytes)));
    let (status, output) = match result {
        Ok(Ok(output)) => (STATUS_OK, GenesisBuf::from_vec(output)),
        Ok(Err(message)) => {
            instance.last_error = Some(message);
            (STATUS_ERROR, GenesisBuf::EMPTY)
        }
        Err(payload) => {
            instance.poisoned = true;
            instance.last_error = Some(panic_message(&*payload));
            (STATUS_PANIC, GenesisBuf::EMPTY)
        }
    };
    // SAFETY: `out` is non-null and valid for a write (caller's contract).
    unsafe { out.write(output) };
    status
}

/// `free_buf` of the C ABI.
///
/// # Safety
/// `buf` must have been returned by this library and not freed yet.
pub unsafe extern "C" fn free_buf(buf: GenesisBuf) {
    // SAFETY: forwarded from this function's contract.
    let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { buf.into_vec() })));
}

/// `destroy` of the C ABI for `T`.
///
/// # Safety
/// `handle` must be null or come from `create::<T>`, and is invalid afterwards.
pub unsafe extern "C" fn destroy<T: PluginStage>(handle: *mut c_void) {
    if handle.is_null() {
        return;
    }
    // A panicking Drop is swallowed: the host cannot do anything about it.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller hands back ownership of a live `Instance<T>`.
        drop(unsafe { Box::from_raw(handle.cast::<Instance<T>>()) })
    }));
}

/// `last_error` of the C ABI for `T`.
///
/// # Safety
/// `handle` must be null or a live handle from `create::<T>` not used
/// concurrently.
pub unsafe extern "C" fn last_error<T: PluginStage>(handle: *mut c_void) -> GenesisBuf {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let message = if handle.is_null() {
            THREAD_ERROR
                .try_with(|slot| slot.borrow_mut().take())
                .ok()
                .flatten()
        } else {
            // SAFETY: the caller guarantees a live, unshared `Instance<T>`.
            let instance = unsafe { &mut *handle.cast::<Instance<T>>() };
            instance.last_error.take()
        };
        message.map_or(GenesisBuf::EMPTY, |m| GenesisBuf::from_vec(m.into_bytes()))
    }));
    result.unwrap_or(GenesisBuf::EMPTY)
}
