//! Giving back the memory erad's start used.
//!
//! Compiling plugins (a cold compile cache) leaves many MiB of freed heap in
//! glibc's arenas; `malloc_trim` returns it to the kernel.
//!
//! erad's code is one large file mapping (wasmtime, sigstore, tonic,
//! SQLite). Starting runs a scattered few pages of hundreds of functions
//! that never run again (config and trust-root parsing, component
//! deserialization, schema migration), and the kernel maps each fault's
//! neighbours too: after start ~14 MiB of code is resident that the idle
//! daemon does not run. Once ready, erad asks the kernel to page those out
//! (`MADV_PAGEOUT` on its binary's constants and code, the mappings up to
//! and including the first executable one; the relocated read-only data
//! after it is private copy-on-write memory and is left alone). They are
//! clean file pages, so nothing is written; whatever the steady state runs
//! faults back in, from the page cache or, if the kernel evicted them, from
//! disk. Pages that another process also maps are not paged out.

/// Once erad is ready: trims the heap and pages out its start-up code;
/// returns the bytes of code advised. Best effort: an error is for the
/// caller to log.
pub fn release_startup_memory() -> std::io::Result<usize> {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim only returns free memory of glibc's own heap
        // to the kernel; it is safe to call at any time from any thread.
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
    release_startup_code()
}

fn release_startup_code() -> std::io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let (mut advised, mut past_code) = (0, false);
    for line in maps.lines() {
        // `start-end perms offset dev inode path`
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else { continue };
        let path = f.nth(3).unwrap_or("");
        if std::path::Path::new(path) != exe {
            continue;
        }
        // Constants and then code; what follows the code (relocated
        // read-only data, writable data) is not file-backed as mapped.
        if !perms.starts_with("r-") || past_code {
            break;
        }
        past_code = perms.starts_with("r-x");
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
            continue;
        };
        // SAFETY: an advice on a read-only file mapping of this process that
        // the kernel listed; MADV_PAGEOUT changes no contents (the pages are
        // read in again on the next access).
        #[allow(unsafe_code)]
        let r = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        advised += end - start;
    }
    Ok(advised)
}

#[cfg(test)]
mod tests {
    /// Resident KiB of this process's read-only mappings of its own binary.
    fn resident_code_kib() -> u64 {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        // The binary's constants and code: its mappings up to and including
        // the first executable one.
        let (mut ours, mut past_code, mut total) = (false, false, 0);
        for line in smaps.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.first().is_some_and(|f| f.contains('-') && !f.ends_with(':')) {
                let perms = fields.get(1).copied().unwrap_or("");
                ours = !past_code
                    && perms.starts_with("r-")
                    && fields.get(5).is_some_and(|p| std::path::Path::new(p) == exe);
                past_code |= ours && perms.starts_with("r-x");
            } else if ours && fields.first() == Some(&"Rss:") {
                total += fields[1].parse::<u64>().unwrap();
            }
        }
        total
    }

    #[test]
    fn start_up_code_pages_are_given_back() {
        if std::env::var_os("ERA_MEMORY_TEST_CHILD").is_some() {
            let before = resident_code_kib();
            let advised = super::release_startup_memory().unwrap();
            let after = resident_code_kib();
            assert!(advised > 0, "no read-only mapping of the binary was found");
            // Without the advice nothing is given back (after = before);
            // with it, what the test's own code runs next faults back in
            // (about 3 MiB here, growing with the test binary), so the
            // check leaves that room.
            assert!(after < before * 3 / 4, "resident code {before} KiB before, {after} KiB after");
            return;
        }
        // The kernel does not page out what another process maps too (other
        // tests run this same binary at once): the check runs in a private,
        // synced copy of it.
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("memory-test");
        std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
        std::fs::File::open(&copy).unwrap().sync_all().unwrap();
        let out = std::process::Command::new(&copy)
            .args(["--exact", "memory::tests::start_up_code_pages_are_given_back", "--nocapture"])
            .env("ERA_MEMORY_TEST_CHILD", "1")
            .output()
            .unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.contains("1 passed"), "{said}");
    }
}
