//! Exports `getrandom` from the `mesh-sim` binary's dynamic symbol table, so the lookups std and
//! the `getrandom` crate make with `dlsym` find the seeded one (`src/entropy.rs`).

fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic-symbol=getrandom");
}
