//! Slipway's domain model: the identifiers, names, environments, manifests and state
//! machines that every service agrees on.
//!
//! This crate is pure logic. It performs no I/O and knows nothing about gRPC, HTTP or
//! databases, so every rule a user can run into (what an app may be called, how an env
//! file is read, what a convox.yml may contain, which promotion transitions are legal)
//! lives in one place and is tested without any infrastructure.

pub mod access;
pub mod app;
pub mod env;
pub mod ids;
pub mod manifest;
pub mod object_key;
pub mod promotion;

pub use app::{AppName, AppNameError};
pub use env::{Env, EnvDiff, EnvError};
pub use ids::{BuildId, IdError, PromotionId, ReleaseId};
pub use manifest::{Manifest, ManifestError};
pub use object_key::{ObjectKeyError, validate_object_key};
pub use promotion::{PromotionState, TransitionError};

pub mod secret;
pub use secret::Secret;
