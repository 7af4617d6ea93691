//! Fused CPU kernels (candle custom ops with hand-written, themselves fused, backward passes)
//! for BERT: the whole encoder layer as one op ([`encoder_layer()`]), and the pieces it is built
//! from, also used op by op where the attention probabilities are needed: attention core, dense
//! layer, attention softmax, layer norm, GELU and dropout.
//!
//! Each public function runs the fused kernel for f32 tensors on the CPU (unless
//! `EASYNLP_KERNELS=portable`, see [`kernels`](mod@kernels)) and otherwise falls
//! back to the equivalent [`reference`](mod@reference) implementation built from candle primitives, so other
//! devices (CUDA) keep working; [`encoder_layer()`] and [`fused_attention()`] are CPU-only and their
//! callers check [`attention::supported`] first. Kernels parallelise over rows with rayon; the element- and
//! row-wise loops are compiled for AVX-512, AVX2 + FMA and baseline x86-64 (`util::simd_fn!`).

// Every `unsafe` operation needs its own `unsafe` block, even in an `unsafe fn`, and every
// `unsafe` block or impl a `// SAFETY:` comment that states what it relies on.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

mod amx;
pub mod attention;
pub mod bf16;
pub mod dropout;
pub mod encoder_layer;
pub mod first_position;
mod gelu;
mod head_matmul;
pub mod int8;
pub mod kernels;
mod layer_norm;
pub mod linear;
mod math;
pub mod precision;
pub mod reference;
mod softmax;
pub(crate) mod util;

pub use attention::fused_attention;
pub use dropout::dropout;
pub use encoder_layer::encoder_layer;
pub use first_position::encoder_layer_first_position;
pub use gelu::gelu_erf;
pub use kernels::{kernels, read_back, set_kernels, transfers, upload, Kernels, Transfers};
pub use layer_norm::layer_norm;
pub use linear::{linear, linear_in, matmul_in};
pub use precision::Precision;
pub use softmax::attention_softmax;
