//! The integration suite, one test binary: every module below is one concern's end-to-end tests,
//! over real HTTP on loopback, real image bytes, real files and real servers (moto, nginx,
//! Chromium), all started by the tests themselves. One binary links libjpeg-turbo, libaom,
//! libwebp, rav1e and aws-lc once instead of once per file.
//!
//! Two suites stay binaries of their own, because they read the whole process: `event_loops`
//! (every thread of the process) and `load` (the service's resident memory and descriptors under
//! 256 connections, which no other test's traffic may share). Unit tests live beside the code
//! they test, in `src/`.

mod common;

mod archive;
mod browser;
mod cdn;
mod config_errors;
mod conformance;
mod crash;
mod deploy;
mod formats;
mod hugo;
mod internet;
mod mirror_commands;
mod observability;
mod rewrite;
mod route_props;
mod s3;
mod scale;
mod serve;
mod ssrf;
mod store_suite;
mod transform;
