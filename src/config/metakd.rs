//! Meta-KD settings, read and validated from `user_defined_parameters` and the schema: the
//! meta-teacher's and the students', and the domain list.

use super::udp::UserParams;
use crate::data::schema::Schema;
use anyhow::{bail, Result};
use std::path::PathBuf;

/// EasyNLP's default `domain_label`: the four Amazon domains, in domain-id order.
pub const DEFAULT_DOMAINS: &[&str] = &["books", "dvd", "electronics", "kitchen"];

/// Parses `domain_label` (a comma list of distinct, non-empty names without whitespace); absent
/// means [`DEFAULT_DOMAINS`].
pub fn parse_domain_label(value: Option<&str>) -> Result<Vec<String>> {
    let Some(value) = value else {
        return Ok(DEFAULT_DOMAINS.iter().map(|d| d.to_string()).collect());
    };
    let mut domains: Vec<String> = Vec::new();
    for name in value.split(',') {
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            bail!(
                "--user_defined_parameters: domain_label={value}: `{name}` is not a domain name (empty or with spaces)"
            );
        }
        if domains.iter().any(|d| d == name) {
            bail!("--user_defined_parameters: domain_label={value}: `{name}` is listed twice");
        }
        domains.push(name.to_string());
    }
    Ok(domains)
}

/// Meta-teacher settings from `user_defined_parameters` and the schema.
#[derive(Clone, Debug, PartialEq)]
pub struct MetaTeacherSettings {
    /// `use_sample_weights`: weight each instance's loss by its `weight` column.
    pub use_sample_weights: bool,
    /// `use_domain_loss`: add the domain-corruption loss.
    pub use_domain_loss: bool,
    /// `domain_loss_weight` (>= 0).
    pub domain_loss_weight: f64,
    /// `domain_label`, in domain-id order.
    pub domains: Vec<String>,
    /// Schema index of the `domain` column.
    pub domain_column: usize,
    /// Schema index of the `weight` column.
    pub weight_column: usize,
}

impl MetaTeacherSettings {
    /// The meta-teacher is selected by the presence of `use_sample_weights` or `use_domain_loss`
    /// (train mode); `None` otherwise.
    pub fn from_udp(udp: &UserParams, schema: &Schema) -> Result<Option<Self>> {
        if udp.get("use_sample_weights").is_none() && udp.get("use_domain_loss").is_none() {
            return Ok(None);
        }
        if udp.bool("enable_distillation", false)? {
            bail!(
                "--user_defined_parameters: use_sample_weights/use_domain_loss train the Meta-KD meta-teacher, \
                 which cannot be combined with enable_distillation=True"
            );
        }
        if let Some(g) = udp.get("genre") {
            bail!(
                "--user_defined_parameters: genre={g}: the meta-teacher trains on every domain \
                 (genre selects the domain of a student or of --mode=evaluate)"
            );
        }
        let use_sample_weights = udp.bool("use_sample_weights", false)?;
        let use_domain_loss = udp.bool("use_domain_loss", false)?;
        if use_domain_loss && udp.get("domain_loss_weight").is_none() {
            bail!("--user_defined_parameters: use_domain_loss=True needs domain_loss_weight=... (EasyNLP's tutorial: 0.5)");
        }
        let domain_loss_weight = udp.float_in("domain_loss_weight", 0.0, 0.0, 1e6)?;
        let domains = parse_domain_label(udp.get("domain_label"))?;
        let what =
            "the Meta-KD meta-teacher (use_sample_weights/use_domain_loss) reads the columns `domain` and `weight`";
        let domain_column = schema.index_of("domain", what)?;
        let weight_column = schema.index_of("weight", what)?;
        Ok(Some(MetaTeacherSettings {
            use_sample_weights,
            use_domain_loss,
            domain_loss_weight,
            domains,
            domain_column,
            weight_column,
        }))
    }
}

/// Which student stage.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Intermediate-layer distillation (§5.7).
    First,
    /// Logit distillation (§5.8).
    Second,
}

/// Meta-KD student settings from `user_defined_parameters` and the schema.
#[derive(Clone, Debug, PartialEq)]
pub struct MetaStudentSettings {
    /// `distill_stage`.
    pub stage: Stage,
    /// `teacher_model_path`: the meta-teacher checkpoint.
    pub teacher: PathBuf,
    /// `genre`: the domain trained (and validated) on.
    pub genre: String,
    /// `domain_label`, in domain-id order.
    pub domains: Vec<String>,
    /// `domain_loss_weight` (stage first; >= 0; default 0.5, the tutorial's value).
    pub domain_loss_weight: f64,
    /// `T` (stage second, > 0).
    pub temperature: f64,
    /// Schema index of the `domain` column.
    pub domain_column: usize,
    /// Schema index of the `weight` column.
    pub weight_column: usize,
}

impl MetaStudentSettings {
    /// Selected by `distill_stage`; `None` without it.
    pub fn from_udp(udp: &UserParams, schema: &Schema) -> Result<Option<Self>> {
        let Some(stage) = udp.get("distill_stage") else {
            return Ok(None);
        };
        let stage = match stage {
            "first" => Stage::First,
            "second" => Stage::Second,
            other => bail!("--user_defined_parameters: distill_stage={other}: expected first or second"),
        };
        if udp.bool("enable_distillation", false)? {
            bail!("--user_defined_parameters: distill_stage (Meta-KD student) cannot be combined with enable_distillation=True");
        }
        if udp.get("use_sample_weights").is_some() || udp.get("use_domain_loss").is_some() {
            bail!(
                "--user_defined_parameters: use_sample_weights/use_domain_loss train the meta-teacher; \
                 a student (distill_stage) takes teacher_model_path, genre, domain_loss_weight and T"
            );
        }
        let Some(teacher) = udp.get("teacher_model_path").map(PathBuf::from) else {
            bail!("--user_defined_parameters: distill_stage needs teacher_model_path=<the meta-teacher checkpoint>");
        };
        let domains = parse_domain_label(udp.get("domain_label"))?;
        let Some(genre) = udp.get("genre") else {
            bail!(
                "--user_defined_parameters: distill_stage needs genre=<the domain to distill> (one of {})",
                domains.join(",")
            );
        };
        if !domains.iter().any(|d| d == genre) {
            bail!("--user_defined_parameters: genre={genre} is not one of the domains ({})", domains.join(","));
        }
        let domain_loss_weight = udp.float_in("domain_loss_weight", 0.5, 0.0, 1e6)?;
        let temperature = match udp.get("T") {
            None => 1.0,
            Some(t) => match t.trim().parse::<f64>() {
                Ok(v) if v > 0.0 && v.is_finite() => v,
                _ => bail!("--user_defined_parameters: T={t}: the temperature must be a number > 0"),
            },
        };
        let what = "the Meta-KD student (distill_stage) reads the columns `domain` and `weight`";
        let domain_column = schema.index_of("domain", what)?;
        let weight_column = schema.index_of("weight", what)?;
        Ok(Some(MetaStudentSettings {
            stage,
            teacher,
            genre: genre.to_string(),
            domains,
            domain_loss_weight,
            temperature,
            domain_column,
            weight_column,
        }))
    }

    /// The domain id of `genre`.
    pub fn genre_id(&self) -> usize {
        self.domains.iter().position(|d| *d == self.genre).expect("checked in from_udp")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_selected_by_the_meta_keys() {
        let schema =
            Schema::parse("guid:str:1,text_a:str:1,text_b:str:1,label:str:1,domain:str:1,weight:str:1").unwrap();
        let p = |s: &str| MetaTeacherSettings::from_udp(&UserParams::parse(Some(s)).unwrap(), &schema);
        assert_eq!(p("pretrain_model_name_or_path=m").unwrap(), None);
        let m = p("use_sample_weights=True use_domain_loss=True domain_loss_weight=0.5").unwrap().unwrap();
        assert!(m.use_sample_weights && m.use_domain_loss);
        assert_eq!((m.domain_loss_weight, m.domain_column, m.weight_column), (0.5, 4, 5));
        assert_eq!(m.domains, ["books", "dvd", "electronics", "kitchen"]);
        assert!(p("use_domain_loss=True").unwrap_err().to_string().contains("domain_loss_weight"));
        assert!(p("use_domain_loss=True domain_loss_weight=-1").is_err());
        assert!(p("use_sample_weights=True genre=books").is_err());
        assert!(p("use_sample_weights=True enable_distillation=True").is_err());
        let plain = Schema::parse("sent:str:1,label:str:1").unwrap();
        let e = MetaTeacherSettings::from_udp(&UserParams::parse(Some("use_sample_weights=True")).unwrap(), &plain)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`domain`"), "{e}");
    }

    #[test]
    fn settings_validate_the_student_keys() {
        let schema =
            Schema::parse("guid:str:1,text_a:str:1,text_b:str:1,label:str:1,domain:str:1,weight:str:1").unwrap();
        let p = |s: &str| MetaStudentSettings::from_udp(&UserParams::parse(Some(s)).unwrap(), &schema);
        assert_eq!(p("pretrain_model_name_or_path=m").unwrap(), None);
        let m = p("distill_stage=first teacher_model_path=t genre=dvd domain_loss_weight=0.5 T=2").unwrap().unwrap();
        assert_eq!((m.stage, m.genre.as_str(), m.domain_loss_weight, m.temperature), (Stage::First, "dvd", 0.5, 2.0));
        assert_eq!((m.domain_column, m.weight_column, m.genre_id()), (4, 5, 1));
        let m = p("distill_stage=second teacher_model_path=t genre=books T=2.5").unwrap().unwrap();
        assert_eq!((m.stage, m.temperature), (Stage::Second, 2.5));
        let err = |s: &str| p(s).unwrap_err().to_string();
        assert!(err("distill_stage=third teacher_model_path=t genre=books").contains("first or second"));
        assert!(err("distill_stage=first genre=books").contains("teacher_model_path"));
        assert!(err("distill_stage=first teacher_model_path=t").contains("genre"));
        assert!(err("distill_stage=first teacher_model_path=t genre=all").contains("not one of the domains"));
        assert!(err("distill_stage=second teacher_model_path=t genre=books T=0").contains("> 0"));
        assert!(err("distill_stage=second teacher_model_path=t genre=books T=x").contains("> 0"));
        assert!(
            err("distill_stage=first teacher_model_path=t genre=books use_domain_loss=True").contains("meta-teacher")
        );
        let plain = Schema::parse("sent:str:1,label:str:1").unwrap();
        let e = MetaStudentSettings::from_udp(
            &UserParams::parse(Some("distill_stage=first teacher_model_path=t genre=books")).unwrap(),
            &plain,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`domain`"), "{e}");
    }

    #[test]
    fn domain_label_parsing() {
        assert_eq!(parse_domain_label(None).unwrap(), DEFAULT_DOMAINS);
        assert_eq!(parse_domain_label(Some("a,b")).unwrap(), ["a", "b"]);
        assert!(parse_domain_label(Some("a,,b")).is_err());
        assert!(parse_domain_label(Some("a,a")).unwrap_err().to_string().contains("twice"));
    }
}
