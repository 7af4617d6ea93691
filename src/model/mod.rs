//! The BERT model: configuration, encoder, classification head, parameters, checkpoints, model zoo
//! and Hugging Face Hub downloads.

pub mod bert;
pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod hub;
pub mod infer;
pub mod params;
pub mod zoo;
