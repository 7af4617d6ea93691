//! Every setting of a run, parsed and validated from the flags before any work: the flag
//! definitions, `user_defined_parameters`, the run configuration of the text apps and of the
//! Meta-KD preparation steps, the typed KD and Meta-KD settings, and the data-parallel workers. No behaviour lives here.

pub mod args;
pub mod kd;
pub mod metakd;
pub mod report;
pub mod run;
pub mod udp;
pub mod workers;
