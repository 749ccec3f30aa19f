//! The model names a client may ask for (`[[slm.models]]`), the upstreams
//! serving each, and which names each tenant may use (`slm.tenant_models`).
//! The gateway resolves a turn's model here before anything else runs; the
//! router sends it only to that model's upstreams.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Why a model name was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelRefusal {
    #[error("no model named {0:?} is served here")]
    Unknown(String),
    #[error("model {0:?} is not allowed for this tenant")]
    NotAllowed(String),
}

impl crate::error::ErrorCode for ModelRefusal {
    fn code(&self) -> crate::error::Code {
        match self {
            Self::Unknown(_) => crate::error::Code::UnknownModel,
            Self::NotAllowed(_) => crate::error::Code::ModelNotAllowed,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ModelCatalog {
    /// Each model name with the indices of its upstreams (in the router's list), in configured order.
    models: Vec<(Arc<str>, Vec<usize>)>,
    /// Tenants limited to some names; a tenant not listed may use every one.
    tenants: HashMap<String, HashSet<String>>,
}

impl ModelCatalog {
    /// `models` in configured order (the first is the default); never empty.
    pub fn new(models: Vec<(String, Vec<usize>)>, tenants: HashMap<String, Vec<String>>) -> Self {
        Self {
            models: models.into_iter().map(|(name, upstreams)| (Arc::from(name), upstreams)).collect(),
            tenants: tenants.into_iter().map(|(tenant, names)| (tenant, names.into_iter().collect())).collect(),
        }
    }

    /// The model of a turn of `tenant` that asked for `asked` (`None`: the
    /// tenant's default, the first configured name it may use).
    pub fn resolve(&self, tenant: &str, asked: Option<&str>) -> Result<Arc<str>, ModelRefusal> {
        let allowed = |name: &str| self.tenants.get(tenant).is_none_or(|names| names.contains(name));
        match asked {
            None => self.models.iter().map(|(name, _)| name).find(|name| allowed(name)).cloned().ok_or_else(|| ModelRefusal::NotAllowed("default".into())),
            Some(asked) => {
                let (name, _) = self.models.iter().find(|(name, _)| &**name == asked).ok_or_else(|| ModelRefusal::Unknown(asked.to_owned()))?;
                if allowed(name) {
                    Ok(name.clone())
                } else {
                    Err(ModelRefusal::NotAllowed(asked.to_owned()))
                }
            }
        }
    }

    /// The upstreams serving `model` (none for a name not in the catalog).
    pub fn upstreams_of(&self, model: &str) -> &[usize] {
        self.models.iter().find(|(name, _)| &**name == model).map_or(&[], |(_, upstreams)| upstreams.as_slice())
    }

    /// The names `tenant` may use, default first.
    pub fn names_for(&self, tenant: &str) -> Vec<Arc<str>> {
        self.models.iter().map(|(name, _)| name.clone()).filter(|name| self.tenants.get(tenant).is_none_or(|names| names.contains(&**name))).collect()
    }

    /// The first configured name (the default of a tenant without a list).
    pub fn default_name(&self) -> Arc<str> {
        self.models.first().map_or_else(|| Arc::from(""), |(name, _)| name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> ModelCatalog {
        ModelCatalog::new(vec![("small".into(), vec![0, 1]), ("large".into(), vec![2])], HashMap::from([("acme".to_owned(), vec!["large".to_owned()])]))
    }

    #[test]
    fn a_tenant_gets_the_name_it_asks_for_or_its_first_allowed_one() {
        let catalog = catalog();
        assert_eq!(catalog.resolve("other", None).unwrap().as_ref(), "small");
        assert_eq!(catalog.resolve("other", Some("large")).unwrap().as_ref(), "large");
        assert_eq!(catalog.resolve("acme", None).unwrap().as_ref(), "large", "acme's default is the first name it may use");
        assert_eq!(catalog.upstreams_of("small"), [0, 1]);
    }

    #[test]
    fn an_unknown_name_and_a_name_the_tenant_may_not_use_are_refused_apart() {
        let catalog = catalog();
        assert_eq!(catalog.resolve("other", Some("gpt-4o")), Err(ModelRefusal::Unknown("gpt-4o".into())));
        assert_eq!(catalog.resolve("acme", Some("small")), Err(ModelRefusal::NotAllowed("small".into())));
        assert_eq!(catalog.names_for("acme"), [Arc::from("large")]);
    }
}
