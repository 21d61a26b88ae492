//! The models the mock serves, changeable at run time behind `POST /__models`, so tests can
//! pull a model onto a running backend or remove one.
//!
//! The list and the model-list bodies rendered from it (`/v1/models`, `/models`,
//! `/api/tags`) are one immutable [`Models`] value published through an [`ArcSwap`]: a
//! request reads it with one lock-free load, a change renders the bodies once and swaps
//! them in. `POST /__models` takes `{"models":["a","b"]}` (at least one non-empty name; the
//! first is the default for requests without one) and answers the new list in the same
//! shape; `GET /__models` shows it; `POST /__reset` restores the command-line `--models`.
//! With `--strict-models`, a generation request for a model not in the current list gets
//! 404 `model_not_found`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::flavor::{Bodies, Flavor};

/// What is served now.
#[derive(Debug)]
pub struct Models {
    /// Never empty; the first is the default model.
    pub names: Vec<String>,
    pub bodies: Bodies,
}

/// The body of `POST /__models` and of its answer.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsRequest {
    pub models: Vec<String>,
}

/// The served models; see the module docs.
#[derive(Debug)]
pub struct Catalog {
    flavor: Flavor,
    initial: Vec<String>,
    current: ArcSwap<Models>,
}

impl Catalog {
    /// Serves `names` (not empty) as `flavor` does.
    pub fn new(flavor: Flavor, names: Vec<String>) -> anyhow::Result<Self> {
        let models = Models {
            bodies: Bodies::new(flavor, &names)?,
            names: names.clone(),
        };
        Ok(Self {
            flavor,
            initial: names,
            current: ArcSwap::from_pointee(models),
        })
    }

    pub fn get(&self) -> Arc<Models> {
        self.current.load_full()
    }

    /// Serves `names` from now on; the error is the message for a 400.
    pub fn set(&self, names: Vec<String>) -> Result<Arc<Models>, String> {
        if names.is_empty() {
            return Err("models must list at least one model".into());
        }
        if names.iter().any(String::is_empty) {
            return Err("model names must not be empty".into());
        }
        let bodies = Bodies::new(self.flavor, &names).map_err(|e| e.to_string())?;
        let models = Arc::new(Models { names, bodies });
        self.current.store(models.clone());
        Ok(models)
    }

    /// Back to the command-line list.
    pub fn reset(&self) {
        // The command-line list was rendered once already; it renders again.
        if let Ok(bodies) = Bodies::new(self.flavor, &self.initial) {
            self.current.store(Arc::new(Models {
                names: self.initial.clone(),
                bodies,
            }));
        }
    }

    /// The `/__models` answer.
    pub fn render(&self) -> serde_json::Result<Bytes> {
        let models = self.get();
        serde_json::to_vec(&ModelsRequest {
            models: models.names.clone(),
        })
        .map(Bytes::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_change_and_reset() {
        let c = Catalog::new(Flavor::Ollama, vec!["a".into()]).unwrap();
        assert!(c.set(Vec::new()).is_err());
        assert!(c.set(vec![String::new()]).is_err());
        let m = c.set(vec!["b".into(), "c".into()]).unwrap();
        assert_eq!(m.names, ["b", "c"]);
        let tags = String::from_utf8(c.get().bodies.ollama_tags.to_vec()).unwrap();
        assert!(tags.contains("\"b\"") && !tags.contains("\"a\""), "{tags}");
        c.reset();
        assert_eq!(c.get().names, ["a"]);
    }
}
