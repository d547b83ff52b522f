//! The whole pipeline on AVIF-shaped bytes (container parse, sequence-header probe, libaom
//! decode, YUV to RGB, resize, encode), admitted by its budgeted peak as the service does (see
//! `budgeted.rs`): an image or a typed error, never a panic, never past its budget.
#![no_main]
use imgmirror::transform::Sniffed;
use libfuzzer_sys::fuzz_target;

#[path = "budgeted.rs"]
mod budgeted;

fuzz_target!(|data: &[u8]| budgeted::run(data, Sniffed::Avif));
