//! One handler per endpoint, each on its own route with its own log target and metrics, so
//! one can change without touching the others.

pub mod authorized;
pub mod callback;
pub mod keys;
pub mod login;
pub mod logout;
