//! Compiles kernels/*.cu as C++ against the CPU emulator (kernels/emu_fiber.hpp): once clean and
//! once per planted fault, each build behind its own symbol prefix.

/// (symbol prefix, fault macro)
const VARIANTS: [(&str, Option<&str>); 6] = [
    ("ga_emu", None),
    ("ga_emu_nosync", Some("GA_FAULT_NO_SYNC")),
    ("ga_emu_mask", Some("GA_FAULT_MASK_OFF_BY_ONE")),
    ("ga_emu_tile", Some("GA_FAULT_TILE_END")),
    ("ga_emu_divergent", Some("GA_FAULT_DIVERGENT_SYNC")),
    ("ga_emu_rope", Some("GA_FAULT_APPEND_ROPE")),
];

fn main() {
    let kernels = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels");
    for entry in std::fs::read_dir(&kernels).expect("kernels/") {
        println!("cargo:rerun-if-changed={}", entry.expect("dir entry").path().display());
    }
    for (prefix, fault) in VARIANTS {
        let mut b = cc::Build::new();
        b.cpp(true)
            .std("c++20")
            .file(kernels.join("emu_entry.cpp"))
            .include(&kernels)
            .opt_level(2)
            .define("EMU_VARIANT", prefix)
            // swapcontext is declared returns_twice; it restores every callee-saved register, so
            // gcc's clobber warning about the scheduler's loop counters does not apply.
            .flag_if_supported("-Wno-clobbered")
            .warnings(true)
            .extra_warnings(true);
        if let Some(f) = fault {
            b.define(f, None);
        }
        b.compile(prefix);
    }
}
