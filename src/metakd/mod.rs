//! Meta-KD (Pan et al., 2021) as EasyNLP runs it: data preparation ([`prep`]), the meta-teacher
//! ([`teacher`], `--mode=train` with `use_sample_weights`/`use_domain_loss`), per-domain evaluation
//! ([`domain_eval`], `--mode=evaluate` on a Meta-KD table), and the students ([`student`], its
//! losses in [`student_loss`]; `--mode=train` with `distill_stage=first|second`). The tables they
//! share are in [`tables`].

pub mod domain_eval;
pub mod prep;
pub mod student;
pub mod student_loss;
pub mod tables;
pub mod teacher;
