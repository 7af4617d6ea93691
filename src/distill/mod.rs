//! Knowledge distillation: vanilla KD (teacher logits from a file or an online teacher).

pub mod kd;
pub mod logits;
