//! Input data: table reading, schema, labels, tokenization and batching.

pub mod batch;
pub mod encode;
pub mod labels;
pub mod schema;
pub mod table;
pub mod tokenize;
