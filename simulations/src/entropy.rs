//! The process's entropy, seeded: what makes a `fast` run repeat for a seed.
//!
//! Three things in a simulated node draw randomness the agent does not hand them: chitchat's
//! peer selection (`rand`'s thread RNG, seeded from the OS), the order `tokio::select!` polls
//! its branches in, and std's `HashMap`/`HashSet` iteration order (chitchat samples its gossip
//! peers out of a `HashSet`); tokio seeds the second from std's `RandomState`. All of them end
//! in one C function, `getrandom`, which std and the `getrandom` crate look up with `dlsym` so
//! that it can be interposed. This binary defines it (exported by `build.rs`): until
//! [`seed`] is called it is the kernel's; after, it is a ChaCha stream from the seed. Nothing is
//! copied from chitchat or tokio, and no other binary changes.
//!
//! Only randomness drawn after [`seed`] on a thread that starts after it is fixed by the seed:
//! the engine runs on a thread of its own (std keeps its hash keys per thread).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

static SEEDED: AtomicBool = AtomicBool::new(false);
static STREAM: Mutex<Option<StdRng>> = Mutex::new(None);

/// From now on, `getrandom` in this process returns the stream of `seed`.
pub fn seed(seed: u64) {
    *STREAM.lock().unwrap_or_else(|p| p.into_inner()) = Some(StdRng::seed_from_u64(seed));
    SEEDED.store(true, Ordering::Release);
}

/// glibc's `getrandom(2)` wrapper, interposed.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes, as for the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getrandom(
    buf: *mut libc::c_void,
    len: libc::size_t,
    flags: libc::c_uint,
) -> libc::ssize_t {
    if SEEDED.load(Ordering::Acquire) {
        let mut stream = STREAM.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rng) = stream.as_mut() {
            if len > 0 {
                // SAFETY: the caller passes a buffer of `len` writable bytes.
                let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
                rng.fill_bytes(out);
            }
            return len as libc::ssize_t;
        }
    }
    // SAFETY: the same contract as the syscall's.
    unsafe { libc::syscall(libc::SYS_getrandom, buf, len, flags) as libc::ssize_t }
}
