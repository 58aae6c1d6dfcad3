//! Compiles kernels/*.cu as C++ against the CPU emulator (kernels/emu_fiber.hpp): once clean and
//! once per planted fault, each build behind its own symbol prefix. The tensor-core unit kernels
//! (kernels/emu_tc_entry.cpp, a small file) likewise, once per planted tensor-core fault.

/// (symbol prefix, fault macro)
const VARIANTS: [(&str, Option<&str>); 6] = [
    ("ga_emu", None),
    ("ga_emu_nosync", Some("GA_FAULT_NO_SYNC")),
    ("ga_emu_mask", Some("GA_FAULT_MASK_OFF_BY_ONE")),
    ("ga_emu_tile", Some("GA_FAULT_TILE_END")),
    ("ga_emu_divergent", Some("GA_FAULT_DIVERGENT_SYNC")),
    ("ga_emu_rope", Some("GA_FAULT_APPEND_ROPE")),
];

/// (symbol prefix, fault macro) of the tensor-core unit-kernel builds; mirrored by src/tc.rs.
const TC_VARIANTS: [(&str, Option<&str>); 10] = [
    ("ga_tc", None),
    ("ga_tc_a_layout", Some("GA_FAULT_TC_A_LAYOUT")),
    ("ga_tc_a_transposed", Some("GA_FAULT_TC_A_TRANSPOSED")),
    ("ga_tc_b_halves", Some("GA_FAULT_TC_B_HALVES")),
    ("ga_tc_c_layout", Some("GA_FAULT_TC_C_LAYOUT")),
    ("ga_tc_no_trans", Some("GA_FAULT_TC_NO_TRANS")),
    ("ga_tc_ldsm_shift", Some("GA_FAULT_TC_LDSM_SHIFT")),
    ("ga_tc_nk_a_map", Some("GA_FAULT_TC_NK_A_MAP")),
    ("ga_tc_no_wait", Some("GA_FAULT_TC_NO_WAIT")),
    ("ga_tc_no_trailing_sync", Some("GA_FAULT_TC_NO_TRAILING_SYNC")),
];

fn build(kernels: &std::path::Path, entry: &str, prefix: &str, fault: Option<&str>) {
    let mut b = cc::Build::new();
    b.cpp(true)
        .std("c++20")
        .file(kernels.join(entry))
        .include(kernels)
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

fn main() {
    let kernels = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels");
    for entry in std::fs::read_dir(&kernels).expect("kernels/") {
        println!("cargo:rerun-if-changed={}", entry.expect("dir entry").path().display());
    }
    for (prefix, fault) in VARIANTS {
        build(&kernels, "emu_entry.cpp", prefix, fault);
    }
    for (prefix, fault) in TC_VARIANTS {
        build(&kernels, "emu_tc_entry.cpp", prefix, fault);
    }
}
