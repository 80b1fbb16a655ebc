//! One reason an object is invalid, shared by the validation rules (`semantic`, `knative`).

/// One reason an object is invalid: the field path, and the message after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub field: String,
    pub reason: &'static str,
    pub message: String,
}

impl Cause {
    /// `field: message`, as the summary line lists causes.
    pub fn line(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}
