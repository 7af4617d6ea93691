//! Fused CPU kernels (candle custom ops with hand-written, themselves fused, backward passes)
//! for the hot element/row-wise parts of BERT: attention softmax, layer norm and GELU.
//!
//! Each public function runs the fused kernel for f32 tensors on the CPU and otherwise falls
//! back to the equivalent [`reference`] implementation built from candle primitives, so other
//! devices (CUDA) keep working. Kernels parallelise over rows with rayon.

pub mod attention;
pub mod dropout;
pub mod encoder_layer;
mod gelu;
mod layer_norm;
pub mod linear;
mod math;
pub mod reference;
mod softmax;
pub(crate) mod util;

pub use attention::fused_attention;
pub use dropout::dropout;
pub use encoder_layer::encoder_layer;
pub use gelu::gelu_erf;
pub use layer_norm::layer_norm;
pub use linear::linear;
pub use softmax::attention_softmax;
