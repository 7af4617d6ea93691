//! AMX tiles (Intel Sapphire Rapids and later): the block products of [`super::bf16`]
//! (`tdpbf16ps`) and [`super::int8`] (`tdpbusd`), through inline assembly, since stable Rust has
//! no AMX intrinsics.
//!
//! A block is [`BLOCK`] x [`BLOCK`] sums, four 16 x 16 tiles (`tmm0`-`tmm3`), fed per step of
//! [`STEP`] 32-bit words of `k` (32 bf16 or 64 int8 values) by two tiles of `A` (`tmm4`, `tmm5`:
//! 16 rows x 16 words each) and two of `B` (`tmm6`, `tmm7`: 16 rows of k words x 16 columns) in
//! the layout the AVX-512 kernels already use (pairs or quads of `k` in one word, `B` in panels).
//! Linux hands out the tile data state only on request: [`available`] asks once per process
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), and [`Tiles::configure`] loads the
//! tile configuration on the calling thread.
//!
//! `EASYNLP_CPU_FEATURES=no-amx` keeps the AVX-512 kernels on a CPU with AMX (to compare them,
//! and for the tests); `EASYNLP_CPU_FEATURES=portable` turns AMX off with everything else.

/// Rows and columns of a block.
pub(crate) const BLOCK: usize = 32;
/// 32-bit words of `k` per step: the width of an `A` tile row and the height of a `B` tile.
pub(crate) const STEP: usize = 16;

/// True when `EASYNLP_CPU_FEATURES=no-amx` asks for the AVX-512 kernels on an AMX CPU.
pub(crate) fn disabled() -> bool {
    static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DISABLED.get_or_init(|| std::env::var("EASYNLP_CPU_FEATURES").is_ok_and(|v| v.trim() == "no-amx"))
}

/// Whether the AMX kernels run here: the CPU has AMX-TILE, AMX-BF16 and AMX-INT8, Linux granted
/// the tile data state, and neither `portable` nor `no-amx` was asked for.
pub(crate) fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| !super::precision::forced_portable() && !disabled() && cpu_has_amx() && request_tiles())
}

/// CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE, bit 25 AMX-INT8.
#[cfg(target_arch = "x86_64")]
fn cpu_has_amx() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // Leaf 7 is read only when leaf 0 reports it.
    if __cpuid_count(0, 0).eax < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    let bits = (1 << 22) | (1 << 24) | (1 << 25);
    edx & bits == bits
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_amx() -> bool {
    false
}

/// Asks Linux for the AMX tile data state (fails on kernels before 5.16 or where the state is
/// not enabled).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tiles() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM only changes this process's permitted
    // extended states; it reads and writes no memory of ours.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tiles() -> bool {
    false
}

/// The tile configuration (palette 1): eight tiles of 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64;
        c[48 + t] = 16;
        t += 1;
    }
    TileConfig(c)
};

/// The tiles of the calling thread, configured; released when dropped.
pub(crate) struct Tiles(std::marker::PhantomData<*const ()>);

/// Which tile product a block runs.
#[derive(Clone, Copy)]
pub(crate) enum Product {
    /// `tdpbf16ps`: pairs of bf16 in each word of `A` and `B`, f32 sums.
    Bf16,
    /// `tdpbusd`: four u8 in each word of `A`, four s8 in each word of `B`, s32 sums.
    U8S8,
}

#[cfg(target_arch = "x86_64")]
impl Tiles {
    /// Loads the tile configuration on this thread.
    ///
    /// # Safety
    /// [`available`] must have returned true.
    pub(crate) unsafe fn configure() -> Self {
        static CFG: TileConfig = CONFIG;
        // SAFETY: AMX is present and permitted (the caller's promise); `CFG` is 64 aligned bytes.
        unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) CFG.0.as_ptr(), options(nostack, readonly)) };
        Tiles(std::marker::PhantomData)
    }

    /// `out[r * BLOCK + j] = sum_p A(r, p) . B(p, j)` for `r, j < BLOCK` over `kw` words of `k`
    /// (a multiple of [`STEP`]), where `A(r, p)` is the word `a[r * lda + p]` and `B(p, j)` the
    /// word `b[p * ldb + j]`; `out` holds f32 ([`Product::Bf16`]) or i32 ([`Product::U8S8`])
    /// bits.
    ///
    /// # Safety
    /// `a` must be valid for reads of `BLOCK` rows of `kw` words `lda` words apart, and `b` of
    /// `kw` rows of `BLOCK` words `ldb` words apart.
    pub(crate) unsafe fn block(
        &mut self,
        product: Product,
        kw: usize,
        (a, lda): (*const u32, usize),
        (b, ldb): (*const u32, usize),
        out: &mut [u32; BLOCK * BLOCK],
    ) {
        use std::arch::asm;
        debug_assert_eq!(kw % STEP, 0);
        let (sa, sb) = (lda * 4, ldb * 4);
        // SAFETY: the tiles are configured (`self` exists); no tile register is used by code
        // the compiler generates, so they keep their values between the `asm!` blocks.
        unsafe { asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem)) };
        for p in (0..kw).step_by(STEP) {
            // SAFETY: each tile load reads 16 rows of 64 bytes: rows `0..16` and `16..32` of `A`
            // from word `p` (`p + STEP <= kw`), rows `p..p + 16` of `B` at columns `0..16` and
            // `16..32`: inside what the caller lent.
            unsafe {
                let (a0, a1) = (a.add(p), a.add(16 * lda + p));
                let (b0, b1) = (b.add(p * ldb), b.add(p * ldb + 16));
                asm!(
                    "tileloadd tmm4, [{a0} + {sa} * 1]",
                    "tileloadd tmm5, [{a1} + {sa} * 1]",
                    "tileloadd tmm6, [{b0} + {sb} * 1]",
                    "tileloadd tmm7, [{b1} + {sb} * 1]",
                    a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
                    sa = in(reg) sa, sb = in(reg) sb,
                    options(nostack, readonly),
                );
                match product {
                    Product::Bf16 => asm!(
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        options(nostack, nomem),
                    ),
                    Product::U8S8 => asm!(
                        "tdpbusd tmm0, tmm4, tmm6",
                        "tdpbusd tmm1, tmm4, tmm7",
                        "tdpbusd tmm2, tmm5, tmm6",
                        "tdpbusd tmm3, tmm5, tmm7",
                        options(nostack, nomem),
                    ),
                }
            }
        }
        let o = out.as_mut_ptr();
        // SAFETY: `out` holds 32 rows of 32 words (128 bytes): each store writes 16 rows of 64
        // bytes at the tile's quarter.
        unsafe {
            asm!(
                "tilestored [{o0} + {s} * 1], tmm0",
                "tilestored [{o1} + {s} * 1], tmm1",
                "tilestored [{o2} + {s} * 1], tmm2",
                "tilestored [{o3} + {s} * 1], tmm3",
                o0 = in(reg) o, o1 = in(reg) o.add(16), o2 = in(reg) o.add(16 * BLOCK), o3 = in(reg) o.add(16 * BLOCK + 16),
                s = in(reg) BLOCK * 4,
                options(nostack),
            )
        };
    }
}

/// `C (+)= A B` block by block on the tiles: for every [`BLOCK`] x [`BLOCK`] block of the `m x n`
/// result `c` (rows `ldc` apart), the `kw`-word sums of [`Tiles::block`] from `A`'s rows
/// `i..i + BLOCK` (`a_rows(i)`, `kw` words each) and `B`'s panel columns, then
/// `store(sums, dst, (i, j0), (rows, cols))` with `dst` pointing at `c[i * ldc + j0]` and the
/// block's rows and columns inside `m x n`. Parallel over tasks of two block rows.
///
/// # Safety
/// [`available`] must have returned true; `a_rows(i)` (`i` a multiple of [`BLOCK`] below `m`)
/// must be valid for reads of `BLOCK` rows of `kw` words `kw` apart; `panels` must hold `B` in
/// panels of `nr` columns (a multiple of [`BLOCK`]), `kw` rows of `nr` words each, for all `n`
/// columns; `c` must hold `(m - 1) * ldc + n` values with `n <= ldc`. `store` may write only the
/// `rows x cols` block at `dst` (rows `ldc` apart).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::type_complexity)]
pub(crate) unsafe fn gemm_blocks(
    product: Product,
    kw: usize,
    a_rows: impl Fn(usize) -> *const u32 + Sync,
    (panels, nr): (&[u32], usize),
    (c, ldc): (&mut [f32], usize),
    (m, n): (usize, usize),
    store: impl Fn(&[u32; BLOCK * BLOCK], *mut f32, (usize, usize), (usize, usize)) + Sync,
) {
    use rayon::prelude::*;
    const TASK_ROWS: usize = 2 * BLOCK;
    c.par_chunks_mut(TASK_ROWS * ldc).enumerate().for_each(|(task, c_rows)| {
        let i0 = task * TASK_ROWS;
        let task_rows = TASK_ROWS.min(m - i0);
        // SAFETY: AMX is available (the caller's promise).
        let mut tiles = unsafe { Tiles::configure() };
        let mut sums = [0u32; BLOCK * BLOCK];
        for j0 in (0..n).step_by(BLOCK) {
            let (q, h) = (j0 / nr, j0 % nr);
            let cols = BLOCK.min(n - j0);
            for g in (0..task_rows).step_by(BLOCK) {
                // SAFETY: `a_rows(i0 + g)` is valid for BLOCK rows of `kw` words (contract);
                // panel `q` holds `kw` rows of `nr` words and columns `h..h + BLOCK` lie inside
                // it (`nr` is a multiple of BLOCK); `dst` is row `g`, column `j0` of this task's
                // own rows of `c`, and `store` writes only the block's `rows x cols` there.
                unsafe {
                    tiles.block(
                        product,
                        kw,
                        (a_rows(i0 + g), kw),
                        (panels.as_ptr().add(q * kw * nr + h), nr),
                        &mut sums,
                    );
                    store(&sums, c_rows.as_mut_ptr().add(g * ldc + j0), (i0 + g, j0), (BLOCK.min(task_rows - g), cols));
                }
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured by `configure`; releasing returns them to the init
        // state.
        unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
    }
}
