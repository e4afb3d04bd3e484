//! Row-parallel host loops run by libtorch's own OpenMP team.
//!
//! The PyPI libtorch parallelises its CPU kernels with GNU OpenMP (`libgomp`) and sizes the
//! team with `at::set_num_threads` (our `threads` setting). The host loops of this workspace
//! that sit between libtorch kernels (the native trunk's fused bias + GELU pass and its
//! backward product, the fused LV update) would otherwise run on one thread while the team's
//! workers spin; a rayon pool competes with those spinning workers for the same cores and was
//! measured slower on the 2-core machine. [`for_each_part`] hands such a loop to the *same*
//! libgomp team through its stable entry point `GOMP_parallel`, looked up at run time with
//! `dlsym`. When libgomp is not loaded (a libtorch built with another threading backend) or
//! one thread is set, the loop runs serially on the caller: results never depend on whether
//! the team was found, only (for reductions) on the number of parts, which depends on the
//! thread count alone.

use std::any::Any;
use std::ffi::{c_int, c_uint, c_void};
use std::ops::Range;
use std::sync::{Mutex, OnceLock};

type ParallelFn = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
type IntFn = unsafe extern "C" fn() -> c_int;

/// libgomp's entry points, if the process has libgomp loaded.
struct Gomp {
    /// `void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags)`
    parallel: ParallelFn,
    thread_num: IntFn,
    num_threads: IntFn,
}

fn gomp() -> Option<&'static Gomp> {
    static GOMP: OnceLock<Option<Gomp>> = OnceLock::new();
    GOMP.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT only reads the loaded objects' symbol tables; the
        // signatures are libgomp's documented ABI (GCC ≥ 4.9), unchanged since.
        unsafe {
            let sym = |name: &std::ffi::CStr| libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
            let (p, t, n) = (
                sym(c"GOMP_parallel"),
                sym(c"omp_get_thread_num"),
                sym(c"omp_get_num_threads"),
            );
            if p.is_null() || t.is_null() || n.is_null() {
                return None;
            }
            Some(Gomp {
                parallel: std::mem::transmute::<*mut c_void, ParallelFn>(p),
                thread_num: std::mem::transmute::<*mut c_void, IntFn>(t),
                num_threads: std::mem::transmute::<*mut c_void, IntFn>(n),
            })
        }
    })
    .as_ref()
}

/// Sets the *calling thread's* intra-op thread count for libtorch's OpenMP kernels and for
/// MKL to `n`, leaving the process-wide setting (and so every other thread) alone:
/// `tch::set_num_threads` would also change libtorch's global default and, depending on the
/// build, MKL's. First forces libtorch's lazy per-thread initialisation (which would
/// otherwise later reset the thread to the global default), then calls libgomp's
/// `omp_set_num_threads` and MKL's `MKL_Set_Num_Threads_Local` (the C entry point; the lower-case symbol is the Fortran one, by reference), both per-thread. Returns
/// `false`, changing nothing, when either is not found in the process.
pub fn set_local_threads(n: usize) -> bool {
    type SetFn = unsafe extern "C" fn(c_int) -> c_int;
    type SetOmpFn = unsafe extern "C" fn(c_int);
    static FNS: OnceLock<Option<(SetOmpFn, SetFn)>> = OnceLock::new();
    let fns = FNS.get_or_init(|| {
        // SAFETY: symbol lookup only; the signatures are libgomp's and MKL's documented C API.
        unsafe {
            let omp = libc::dlsym(libc::RTLD_DEFAULT, c"omp_set_num_threads".as_ptr());
            let mkl = libc::dlsym(libc::RTLD_DEFAULT, c"MKL_Set_Num_Threads_Local".as_ptr());
            if omp.is_null() || mkl.is_null() {
                return None;
            }
            Some((
                std::mem::transmute::<*mut c_void, SetOmpFn>(omp),
                std::mem::transmute::<*mut c_void, SetFn>(mkl),
            ))
        }
    });
    let Some((omp, mkl)) = fns else {
        return false;
    };
    let _ = tch::get_num_threads(); // libtorch's per-thread lazy init happens here
    let n = n.max(1) as c_int;
    // SAFETY: plain setters of per-thread runtime state.
    unsafe {
        omp(n);
        mkl(n);
    }
    true
}

/// Whether host loops can run in libtorch's OpenMP team (libgomp found in the process).
pub fn team_available() -> bool {
    gomp().is_some()
}

/// libtorch's intra-op thread count (the `threads` setting), at least 1.
pub fn threads() -> usize {
    tch::get_num_threads().max(1) as usize
}

/// Splits `0..rows` into at most `max_parts` contiguous ranges of at least `min_rows` rows
/// each (one range when `rows < 2·min_rows`), as even as possible, in order.
pub fn split_rows(rows: usize, min_rows: usize, max_parts: usize) -> Vec<Range<usize>> {
    let parts = (rows / min_rows.max(1)).clamp(1, max_parts.max(1));
    let (q, r) = (rows / parts, rows % parts);
    let mut start = 0;
    (0..parts)
        .map(|p| {
            let len = q + usize::from(p < r);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

struct Ctx<'a> {
    f: &'a (dyn Fn(usize, Range<usize>) + Sync),
    parts: &'a [Range<usize>],
    gomp: &'a Gomp,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

extern "C" fn trampoline(data: *mut c_void) {
    // SAFETY: `data` is the `Ctx` that `run_parts` keeps alive across `GOMP_parallel`.
    let ctx = unsafe { &*(data as *const Ctx) };
    // SAFETY: called inside the parallel region, as libgomp requires.
    let (tid, team) = unsafe { ((ctx.gomp.thread_num)(), (ctx.gomp.num_threads)()) };
    let (tid, team) = (tid.max(0) as usize, team.max(1) as usize);
    // The team may be smaller than asked for (nested region, thread limit): stride over parts.
    for p in (tid..ctx.parts.len()).step_by(team) {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (ctx.f)(p, ctx.parts[p].clone())
        }));
        if let Err(payload) = run {
            let mut slot = ctx.panic.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(payload);
            return;
        }
    }
}

/// Runs `f(part, range)` for every part of `parts`, the parts spread over libtorch's OpenMP
/// team (serially, in order, without libgomp or with one part). A panic in `f` is re-raised
/// on the caller after the region.
pub fn run_parts(parts: &[Range<usize>], f: &(dyn Fn(usize, Range<usize>) + Sync)) {
    let team = match gomp() {
        Some(g) if parts.len() > 1 => g,
        _ => {
            for (p, r) in parts.iter().enumerate() {
                f(p, r.clone());
            }
            return;
        }
    };
    let ctx = Ctx {
        f,
        parts,
        gomp: team,
        panic: Mutex::new(None),
    };
    // SAFETY: `ctx` outlives the call (GOMP_parallel returns after the region's barrier);
    // the trampoline does not unwind (panics are caught).
    unsafe {
        (team.parallel)(
            trampoline,
            &ctx as *const Ctx as *mut c_void,
            parts.len() as c_uint,
            0,
        )
    };
    if let Some(payload) = ctx.panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
        std::panic::resume_unwind(payload);
    }
}

/// [`split_rows`] over [`threads`] parts, then [`run_parts`]; returns the number of parts.
pub fn for_each_part(
    rows: usize,
    min_rows: usize,
    f: &(dyn Fn(usize, Range<usize>) + Sync),
) -> usize {
    let parts = split_rows(rows, min_rows, threads());
    run_parts(&parts, f);
    parts.len()
}

/// Makes glibc's allocator keep freed memory for reuse instead of handing it back to the
/// operating system after large frees: blocks below 32 MiB (the largest mmap threshold glibc
/// accepts) come from the arenas, and arenas are trimmed only above 1 GiB of free top
/// memory (64 MiB top pad). A training step frees and reallocates the same hundreds of MB
/// of activations every step; with glibc's defaults the per-thread arenas of batch shards
/// return that memory and fault it back in on every step (measured on the 2-core VM: DIS
/// KL, B = 2048, 2 shards, 304k-583k page faults in 4 steps and 846-1029 ms per step,
/// against 264k and 661-771 ms with these settings). Process-wide: the `lv` binary and the
/// benches call it at start; a library user may. Returns whether every setting was
/// accepted (always `false` off glibc).
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; the values are in range.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1
                && libc::mallopt(libc::M_TOP_PAD, 64 << 20) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// A raw view of a mutable slice that parts of a parallel loop write through, each to its own
/// disjoint rows.
#[derive(Clone, Copy)]
pub struct SharedMut<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: only disjoint sub-slices are handed out (the caller's contract on `slice`).
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub fn new(data: &mut [T]) -> Self {
        Self {
            ptr: data.as_mut_ptr(),
            len: data.len(),
        }
    }

    /// The elements `range`.
    ///
    /// # Safety
    /// No two live slices obtained from this view may overlap, and the slice the view was
    /// made from must outlive them and not be used meanwhile.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, range: Range<usize>) -> &mut [T] {
        assert!(range.start <= range.end && range.end <= self.len);
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    // The x86-64 PyPI libtorch (what `cargo xtask setup` installs) links libgomp and MKL;
    // other builds (aarch64 without MKL, TBB or native threading) take the fallbacks.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn local_threads_leave_other_threads_alone() {
        let here = threads();
        std::thread::scope(|s| {
            s.spawn(|| {
                assert!(set_local_threads(1), "omp/mkl setters not found");
                assert_eq!(threads(), 1);
                // MKL sees the thread-local setting too.
                // SAFETY: MKL's C getter, no arguments.
                let mkl_max = unsafe {
                    let f = libc::dlsym(libc::RTLD_DEFAULT, c"MKL_Get_Max_Threads".as_ptr());
                    assert!(!f.is_null());
                    std::mem::transmute::<*mut c_void, IntFn>(f)()
                };
                assert_eq!(mkl_max, 1);
            });
        });
        assert_eq!(threads(), here);
        // A thread started afterwards gets libtorch's default, not the other thread's 1.
        let fresh = std::thread::scope(|s| s.spawn(threads).join().unwrap());
        assert_eq!(fresh, here.max(tch::get_num_threads() as usize));
    }

    #[test]
    fn allocator_settings_are_accepted() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert!(tune_allocator());
    }

    #[test]
    fn split_rows_covers_in_order() {
        assert_eq!(split_rows(10, 4, 2), vec![0..5, 5..10]);
        assert_eq!(split_rows(7, 4, 2), vec![0..7]);
        assert_eq!(split_rows(11, 2, 3), vec![0..4, 4..8, 8..11]);
        assert_eq!(split_rows(0, 4, 2), vec![0..0]);
        assert_eq!(split_rows(5, 0, 8), vec![0..1, 1..2, 2..3, 3..4, 4..5]);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn libgomp_is_found_with_libtorch() {
        // The PyPI libtorch links libgomp; without it every loop would silently be serial.
        assert!(team_available(), "GOMP_parallel not found in the process");
    }

    #[cfg(target_arch = "x86_64")] // needs libgomp (see above)
    #[test]
    fn parts_run_once_each_on_the_team() {
        let parts = split_rows(1000, 10, 4);
        let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        let seen = Mutex::new(Vec::new());
        let threads = Mutex::new(std::collections::HashSet::new());
        run_parts(&parts, &|p, r| {
            for i in r.clone() {
                hits[i].fetch_add(1, Ordering::Relaxed);
            }
            seen.lock().unwrap().push((p, r));
            threads.lock().unwrap().insert(std::thread::current().id());
            // Keep each part busy long enough that one thread cannot take them all.
            std::thread::sleep(std::time::Duration::from_millis(5));
        });
        // libgomp starts the team it is asked for (no dynamic adjustment by default).
        assert!(
            threads.into_inner().unwrap().len() > 1,
            "the parts ran on one thread"
        );
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        let mut seen = seen.into_inner().unwrap();
        seen.sort_by_key(|(p, _)| *p);
        assert_eq!(seen.into_iter().map(|(_, r)| r).collect::<Vec<_>>(), parts);
    }

    #[test]
    fn disjoint_writes_and_panics_propagate() {
        let mut v = vec![0usize; 100];
        let view = SharedMut::new(&mut v);
        run_parts(&split_rows(100, 10, 3), &|p, r| {
            // SAFETY: the parts are disjoint.
            let s = unsafe { view.slice(r.clone()) };
            s.iter_mut().zip(r).for_each(|(x, i)| *x = i * 10 + p);
        });
        assert!(v.iter().enumerate().all(|(i, x)| x / 10 == i && x % 10 < 3));
        let caught = std::panic::catch_unwind(|| {
            run_parts(&split_rows(100, 10, 3), &|p, _| {
                assert!(p != 1, "part one fails")
            })
        });
        assert!(caught.is_err());
    }
}
