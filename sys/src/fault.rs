//! Injected crashes for tests: the `fault` task's segfaults, done on purpose.
//!
//! Each function here performs an access the kernel answers with SIGSEGV. They are unsound by design (that is
//! their job), and live here so that the rest of the project holds no `unsafe` at all. Which item crashes is the
//! caller's choice.

/// Writes through a null pointer: the kernel kills the process with SIGSEGV.
pub fn write_through_null() -> ! {
    let address = std::hint::black_box(std::ptr::null_mut::<u8>());
    // SAFETY: not safe, on purpose: this is the injected crash. The write faults on the unmapped zero page and
    // the kernel kills the process with SIGSEGV before anything is written.
    unsafe { address.write_volatile(1) };
    unreachable!("a write through a null pointer returned");
}

/// Writes to the first byte of `bytes`, which must lie in a read-only mapping (a mapped input file): the write
/// faults and the kernel kills the process with SIGSEGV; the file is never changed. Returns (having done
/// nothing) when `bytes` is empty.
pub fn write_to_read_only(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let address = std::hint::black_box(bytes.as_ptr().cast_mut());
    // SAFETY: not safe, on purpose: this is the injected fault. The bytes are in a read-only mapping (the
    // caller's contract), so the write faults before anything is written, and a file opened read-only cannot be
    // mapped writable.
    unsafe { address.write_volatile(!address.read_volatile()) };
    unreachable!("a write to read-only mapped memory returned");
}
