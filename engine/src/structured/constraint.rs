//! One request's constraint while it runs: which tokens may come next, and the tokens it took.

use std::sync::Arc;

use llguidance::toktrie::SimpleVob;
use llguidance::Matcher;

use super::spec::ConstraintError;

/// A compiled constraint, fresh (no token consumed), shared by the choices of a request: each
/// sampler starts its own `Constraint` from it.
#[derive(Clone)]
pub struct CompiledConstraint {
    fresh: Arc<Matcher>,
    kind: &'static str,
}

impl CompiledConstraint {
    pub(super) fn new(
        matcher: Matcher,
        kind: &'static str,
    ) -> Result<CompiledConstraint, ConstraintError> {
        if let Some(error) = matcher.get_error() {
            return Err(ConstraintError::from_llguidance(error));
        }
        Ok(CompiledConstraint {
            fresh: Arc::new(matcher),
            kind,
        })
    }

    /// The kind of constraint (`json`, `json_object`, `regex`, `choice`, `grammar`).
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// A constraint at the start of the output.
    pub fn start(&self) -> Constraint {
        Constraint {
            matcher: self.fresh.deep_clone(),
            next: None,
        }
    }
}

impl std::fmt::Debug for CompiledConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledConstraint")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Two requests' constraints are the same when they come from the same compilation.
impl PartialEq for CompiledConstraint {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.fresh, &other.fresh)
    }
}

/// One request's constraint, advanced token by token.
pub struct Constraint {
    matcher: Matcher,
    /// The tokens allowed next, computed ahead by [`Constraint::prepare`].
    next: Option<Result<SimpleVob, ConstraintError>>,
}

impl Constraint {
    /// Computes the tokens allowed next, ahead of [`Constraint::mask`] (so that it can run
    /// while the step's forward pass does).
    pub fn prepare(&mut self) {
        if self.next.is_none() {
            self.next = Some(self.allowed());
        }
    }

    fn allowed(&mut self) -> Result<SimpleVob, ConstraintError> {
        self.matcher
            .compute_mask_or_eos()
            .map_err(|e| ConstraintError::from_llguidance(e.to_string()))
    }

    /// Sets every logit the constraint forbids next to minus infinity. When the constraint is
    /// complete, only the end-of-sequence token remains. When it failed (which llguidance
    /// reports rather than panics), the row is left as it is and the failure returned.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        let allowed = match self.next.take() {
            Some(prepared) => prepared?,
            None => self.allowed()?,
        };
        for (id, logit) in logits.iter_mut().enumerate() {
            if id >= allowed.len() || !allowed.get(id) {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advances past `token` (the one sampled from the masked row).
    pub fn consume(&mut self, token: u32) -> Result<(), ConstraintError> {
        self.next = None;
        if self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| ConstraintError::from_llguidance(e.to_string()))
    }
}
