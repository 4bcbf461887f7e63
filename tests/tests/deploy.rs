//! Deployments run two replicas of every binary. [`migrations`]: replicas
//! starting at once on one database each apply every migration once.

#[path = "deploy/migrations.rs"]
mod migrations;
